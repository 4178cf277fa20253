"""Create the contract's topics before anyone subscribes to them.

A Faust agent that subscribes to a topic that does not exist yet misses what is
produced before the next metadata refresh, so the worker and the simulator create
every topic first (idempotently).
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from monitor.ops.config import ALL_TOPICS, COMPACTED_TOPICS, OUTPUT_TOPICS, Settings
from monitor.stream.tables import MAX_RECORD_BYTES


def admin_client(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, **settings.kafka_security.client_options())


async def ensure_topics(settings: Settings, logical: tuple[str, ...] = ALL_TOPICS) -> None:
    """Create the missing topics (compacted where the contract says so); existing ones are fine."""
    await create_missing(settings, [NewTopic(name=settings.topic(t), num_partitions=settings.partitions,
                                             replication_factor=settings.replication_factor, topic_configs=_config(t))
                                    for t in logical])


async def create_missing(settings: Settings, topics: list[NewTopic]) -> None:
    """Create those of `topics` the cluster lacks; one a concurrent creator made first is fine."""
    admin = admin_client(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t.name not in existing]
        if not missing:
            return
        response = await admin.create_topics(missing)
        for name, code, *rest in response.topic_errors:
            if code and code != TopicAlreadyExistsError.errno:
                raise for_code(code)(f"creating topic {name}: {rest[0] if rest else ''}")
    finally:
        await admin.close()


def _config(logical: str) -> dict[str, str]:
    """Compacted where the contract says so; outputs take the records the worker can write."""
    config = {"cleanup.policy": "compact"} if logical in COMPACTED_TOPICS else {}
    if logical in OUTPUT_TOPICS:
        config["max.message.bytes"] = str(MAX_RECORD_BYTES)
    return config
