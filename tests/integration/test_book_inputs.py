"""The book-inputs changelog read back at recovery, at a day's volume, on the real broker: every
key's last record, tombstones deleting, from every partition asked for and no other."""

from __future__ import annotations

import asyncio
import random
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from monitor.ops.config import Settings
from monitor.stream.tables import inputs_topic, inputs_topic_name, read_inputs
from monitor.stream.topics import create_missing

pytestmark = pytest.mark.integration

PARTITIONS = 8
# ~300 B each, 6 MB a partition: several fetches a partition, and more than one fetch of every
# partition at once can answer (a partition left empty by a full answer is not read to its end)
RECORDS = 160_000


async def _write_day(settings: Settings) -> dict[int, dict[str, bytes]]:
    """Fills of 40 books written as a worker writes them (the key's JSON text, the book's partition),
    some overwritten and some deleted; what each partition must read back as."""
    rng = random.Random(7)
    expected: dict[int, dict[str, bytes]] = {p: {} for p in range(PARTITIONS)}
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=5, acks="all")
    await producer.start()
    try:
        for i in range(RECORDS):
            book = f"BK-{i % 40:02d}"
            partition = (i % 40) % PARTITIONS
            key = orjson.dumps([book, "fill", f"F-{rng.randrange(RECORDS // 2)}"]).decode()
            value: bytes | None = None if rng.random() < 0.1 else orjson.dumps(
                {"origin": {"offset": i}, "value": "x" * 250})
            await producer.send(inputs_topic_name(settings), value, key=orjson.dumps(key), partition=partition)
            if value is None:
                expected[partition].pop(key, None)
            else:
                expected[partition][key] = value
        await producer.flush()
    finally:
        await producer.stop()
    return expected


def test_read_inputs_returns_the_last_record_of_every_key_of_the_partitions_asked(kafka_bootstrap: str) -> None:
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"bi{uuid.uuid4().hex[:6]}-",
                        partitions=PARTITIONS)
    asyncio.run(create_missing(settings, [inputs_topic(settings)]))
    expected = asyncio.run(_write_day(settings))

    everything = asyncio.run(read_inputs(settings, set(range(PARTITIONS))))
    assert len(everything) == sum(len(e) for e in expected.values()) > RECORDS // 4
    assert everything == {k: v for e in expected.values() for k, v in e.items()}

    some = asyncio.run(read_inputs(settings, {1, 3}))
    assert some == {**expected[1], **expected[3]}
    assert asyncio.run(read_inputs(settings, set())) == {}
