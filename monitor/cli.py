"""`monitor`: one entry point for the worker, the simulator, the demo and the local broker."""

from __future__ import annotations

import click

from monitor.ops.config import Settings


def _settings(**flags: object) -> Settings:
    return Settings.from_env(**flags)


@click.group()
@click.version_option(package_name="drift-monitor")
def main() -> None:
    """Real-time drift monitor: book exposures against policy targets and bands, on Kafka."""


@main.command()
@click.option("--bootstrap", "bootstrap_servers", help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS]")
@click.option("--topic-prefix", help="Prefix of every topic name [env MONITOR_TOPIC_PREFIX]")
@click.option("--partitions", type=int, help="Partitions of topics the worker creates [env MONITOR_PARTITIONS]")
@click.option("--metrics-host", help="Address /metrics listens on [env MONITOR_METRICS_HOST]")
@click.option("--metrics-port", type=int, help="Port of /metrics [env MONITOR_METRICS_PORT]")
@click.option("--log-format", type=click.Choice(["console", "json"]), help="[env MONITOR_LOG_FORMAT]")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[env MONITOR_LOG_LEVEL]")
@click.option("--data-dir", help="Faust's local state directory [env MONITOR_DATA_DIR]")
def worker(**flags: object) -> None:
    """Consume prices, fills, snapshots and policies; emit drift alerts; serve /metrics."""
    from monitor.ops.logging import configure
    from monitor.stream.app import run

    settings = _settings(**flags)
    configure(settings.log_format, settings.log_level)
    run(settings)


@main.command()
def broker() -> None:
    """Start a local single-node Kafka (KRaft) from Maven-fetched jars; print its address; stop on Ctrl-C."""
    from monitor.ops.broker import main as broker_main

    broker_main()


from monitor.demo import demo_command  # noqa: E402  (subcommands defined beside what they run)
from monitor.replay import replay_command  # noqa: E402
from monitor.simulate import simulate_command  # noqa: E402

main.add_command(simulate_command)
main.add_command(replay_command)
main.add_command(demo_command)
