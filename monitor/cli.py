"""`monitor`: one entry point for the worker, the simulator, the demo and the local broker."""

from __future__ import annotations

import getpass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from monitor.engine.policy import PolicyError
from monitor.ops.config import ConfigError, Settings
from monitor.ops.heap import keep_freed_memory


def _settings(**flags: object) -> Settings:
    return Settings.from_env(**flags)


def _publish(settings: Settings, topic: str, records: list[tuple[str, dict[str, Any]]]) -> None:
    """Send (key, document) records to a logical topic, each acknowledged by the broker."""
    import asyncio

    import orjson
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                    **settings.kafka_security.client_options())
        await producer.start()
        try:
            for key, doc in records:
                await producer.send_and_wait(settings.topic(topic), orjson.dumps(doc), key=key.encode())
        finally:
            await producer.stop()

    asyncio.run(send())


class _Main(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        """A refused setting (ConfigError, e.g. KAFKA_SECURITY_PROTOCOL) ends any command with its message."""
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Main)
@click.version_option(package_name="drift-monitor")
def main() -> None:
    """Real-time drift monitor: book exposures against policy targets and bands, on Kafka."""
    keep_freed_memory()  # every command that values books does it with numpy (ops/heap.py)


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
    import asyncio

    from monitor.ops.kafka_access import check_access
    from monitor.ops.logging import configure
    from monitor.stream.worker import run

    settings = _settings(**flags)
    configure(settings.log_format, settings.log_level)
    asyncio.run(check_access(settings))  # a refused password or certificate: exit now, naming the setting
    run(settings)


@main.command()
def broker() -> None:
    """Start a local single-node Kafka (KRaft) from Maven-fetched jars; print its address; stop on Ctrl-C."""
    from monitor.ops.broker import main as broker_main

    broker_main()


@main.group()
def policy() -> None:
    """Policy files: check them, publish them to the policies topic."""


@policy.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def policy_check(files: tuple[Path, ...]) -> None:
    """Validate policy YAML files as the worker would; exit 1 if any is refused."""
    from monitor.ops.policy_files import load_policy_file

    refused = 0
    for path in files:
        try:
            _, parsed = load_policy_file(path)
        except PolicyError as e:
            refused += 1
            click.echo(f"refused {e}", err=True)
            continue
        click.echo(f"ok {path}: {parsed.portfolio_id} version {parsed.version}, {len(parsed.limits)} limits")
    if refused:
        raise SystemExit(1)


@policy.command("publish")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--bootstrap", "bootstrap_servers", help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS]")
@click.option("--topic-prefix", help="[env MONITOR_TOPIC_PREFIX]")
def policy_publish(files: tuple[Path, ...], **flags: object) -> None:
    """Validate policy files, then send each to the policies topic keyed by its portfolio_id.

    Nothing is sent unless every file is valid.
    """
    from monitor.ops.policy_files import load_policy_file

    try:
        docs = [load_policy_file(path)[0] for path in files]
    except PolicyError as e:
        raise click.ClickException(f"refused {e}; nothing was published") from None
    settings = _settings(**flags)
    _publish(settings, "policies", [(doc["portfolio_id"], doc) for doc in docs])
    for doc in docs:
        click.echo(f"published {doc['portfolio_id']} version {doc['version']} to {settings.topic('policies')}")


@main.group()
def signal() -> None:
    """Decide on a PENDING_APPROVAL rebalance signal (sends to the approvals topic)."""


def _decision_command(decision: str) -> click.Command:
    @click.argument("signal_id")
    @click.option("--book", "portfolio_id", required=True, help="portfolio_id of the signal (the message key)")
    @click.option("--approver", default=getpass.getuser, show_default="the login name", help="who decides")
    @click.option("--reason", help="justification, kept on the signal's audit trail")
    @click.option("--ts", help="decision time, RFC 3339 [default: now]")
    @click.option("--bootstrap", "bootstrap_servers", help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS]")
    @click.option("--topic-prefix", help="[env MONITOR_TOPIC_PREFIX]")
    def command(signal_id: str, portfolio_id: str, approver: str, reason: str | None, ts: str | None,
                **flags: object) -> None:
        from monitor.contract import ContractError, validate
        from monitor.engine.model import format_ts

        now = format_ts(int(datetime.now(timezone.utc).timestamp() * 1_000_000))
        doc = {"signal_id": signal_id, "portfolio_id": portfolio_id, "decision": decision,
               "approver": approver, "reason": reason, "ts": ts or now}
        try:
            validate("approvals", doc)
        except ContractError as e:
            raise click.ClickException(str(e)) from None
        settings = _settings(**flags)
        _publish(settings, "approvals", [(portfolio_id, doc)])
        click.echo(f"sent {decision} of signal {signal_id} ({portfolio_id}) to {settings.topic('approvals')}; "
                   f"the outcome appears on {settings.topic('rebalance-signals')} (or monitor-dlq if refused)")

    command.__doc__ = f"{decision.title()} a PENDING_APPROVAL signal."
    return command


signal.command("approve")(_decision_command("APPROVE"))
signal.command("reject")(_decision_command("REJECT"))


from monitor.bench import bench_command  # noqa: E402
from monitor.bench_fills import bench_fills_command  # noqa: E402
from monitor.demo import demo_command  # noqa: E402  (subcommands defined beside what they run)
from monitor.paper import paper_trade_command  # noqa: E402
from monitor.replay import replay_command  # noqa: E402
from monitor.simulate import simulate_command  # noqa: E402
from monitor.top import top_command  # noqa: E402
from monitor.tools.lab_command import lab_command  # noqa: E402
from monitor.tools.whatif import whatif_command  # noqa: E402

main.add_command(simulate_command)
main.add_command(replay_command)
main.add_command(bench_command)
main.add_command(bench_fills_command)
main.add_command(demo_command)
main.add_command(paper_trade_command)
main.add_command(lab_command)
main.add_command(whatif_command)
main.add_command(top_command)
