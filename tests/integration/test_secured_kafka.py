"""The worker and its clients on a cluster that requires authentication: a LocalKafka with a SASL_SSL
listener (SCRAM-SHA-512, client certificates required), a CA and certificates made by the test.

The broker keeps a PLAINTEXT listener for itself on another port; every client here is given only
the SASL_SSL one, and the broker answers it with the SASL_SSL address alone, so all their traffic
is authenticated and encrypted.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from monitor.ops.broker import LocalKafka, SecuredListener
from monitor.ops.config import KafkaSecurity, Settings
from monitor.ops.kafka_access import KafkaAccessRefused, check_access
from monitor.ops.processes import free_ports, spawn, terminate
from tests.conftest import consume, produce, running_worker, worker_env
from tests.integration.test_worker import BOOK, POLICY, price, sample, setup_messages, ts
from tests.tls import Pki, make_pki

pytestmark = pytest.mark.integration

USER = "monitor"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def password() -> str:
    return f"pw-{secrets.token_urlsafe(18)}"


@pytest.fixture(scope="module")
def secured_kafka(pki: Pki, password: str) -> Iterator[LocalKafka]:
    with LocalKafka(secured=SecuredListener(pki.broker_keystore, pki.ca, {USER: password})) as kafka:
        yield kafka


@pytest.fixture
def secured(secured_kafka: LocalKafka, pki: Pki, password: str, tmp_path: Path) -> Settings:
    security = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", USER, password, str(pki.ca), str(pki.client_cert),
                             str(pki.client_key))
    return Settings(bootstrap_servers=secured_kafka.secured_bootstrap_servers, topic_prefix=f"s{uuid.uuid4().hex[:8]}-",
                    partitions=2, metrics_port=free_ports()[0], data_dir=str(tmp_path / "worker-data"),
                    kafka_security=security)


def test_worker_runs_end_to_end_over_sasl_ssl_and_no_secret_leaks(secured: Settings, password: str,
                                                                   tmp_path: Path) -> None:
    with running_worker(secured, tmp_path / "worker.log") as worker:  # creates the topics over SASL_SSL
        # The policy through the CLI, the rest through the test's producer: both over SASL_SSL.
        policy_file = tmp_path / "policy.yaml"
        policy_file.write_text(yaml.safe_dump(POLICY))
        published = subprocess.run([sys.executable, "-m", "monitor", "policy", "publish", str(policy_file)],
                                   env=worker_env(secured), capture_output=True, text=True, timeout=60)
        assert published.returncode == 0, published.stderr
        produce(secured, [m for m in setup_messages() if m[0] != "policies"])
        _until(lambda m: sample(m, "monitor_book_nav", portfolio_id=BOOK) == 1000.0, worker)

        produce(secured, [("prices", "A", price("A", 12.5))])
        [opened] = consume(secured, "drift-alerts", lambda r: len(r) >= 1)
        assert (opened["state"], opened["limit_id"], opened["portfolio_id"]) == ("OPEN", "w-A", BOOK)
        assert opened["actual"] == pytest.approx(750 / 1150, rel=1e-12)

        # A buy at the market price: the holdings change, the NAV does not (cash pays for it).
        produce(secured, [("fills", BOOK, {"fill_id": "F-1", "portfolio_id": BOOK, "instrument_id": "B",
                                           "side": "BUY", "quantity": 10, "price": 10.0, "ts": ts()})])
        _until(lambda m: sample(m, "monitor_events_consumed_total", topic="fills") == 1
               and sample(m, "monitor_book_nav", portfolio_id=BOOK) == pytest.approx(1150.0), worker)

        exposition = urllib.request.urlopen(worker.metrics_url, timeout=5).read().decode()
        api = "".join(urllib.request.urlopen(f"{secured.public_api_url}{path}", timeout=5).read().decode()
                      for path in ("/health", "/ready", "/api/v1/books", f"/api/v1/books/{BOOK}", "/api/v1/alerts"))
        log = worker.log()
    assert "monitor_book_nav" in exposition and "SASL_SSL" in log  # the worker says how it connects
    assert BOOK in api
    for output, name in ((log, "worker log"), (exposition, "/metrics"), (api, "query API"),
                         (published.stdout + published.stderr, "CLI")):
        assert password not in output, f"the SASL password appears in the {name}"


def test_a_wrong_password_stops_the_worker_at_once_naming_the_setting(secured: Settings, password: str,
                                                                       tmp_path: Path) -> None:
    wrong = f"pw-{secrets.token_urlsafe(18)}"
    settings = replace(secured, kafka_security=replace(secured.kafka_security, sasl_password=wrong))
    log_path = tmp_path / "worker.log"
    began = time.monotonic()
    proc = spawn([sys.executable, "-m", "monitor", "worker"], env=worker_env(settings), log_path=log_path)
    try:
        code = proc.wait(timeout=30)
    finally:
        terminate(proc)
    seconds, log = time.monotonic() - began, log_path.read_text(errors="replace")
    assert code != 0, log
    assert seconds < 30
    assert "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD" in log and "refused the credentials" in log, log
    assert wrong not in log and password not in log


@pytest.mark.parametrize("change, named", [
    ({"ssl_certfile": None, "ssl_keyfile": None}, "KAFKA_SSL_CERTFILE"),  # the listener requires one
    ({"protocol": "SASL_PLAINTEXT", "ssl_cafile": None, "ssl_certfile": None, "ssl_keyfile": None},
     "KAFKA_SECURITY_PROTOCOL"),
    ({"sasl_mechanism": "SCRAM-SHA-256"}, "KAFKA_SASL_MECHANISM=SCRAM-SHA-256"),
    ("other CA", "KAFKA_SSL_CAFILE"),
])
def test_each_refusal_names_the_setting_to_fix(secured: Settings, password: str, tmp_path: Path,
                                               change: dict | str, named: str) -> None:
    if change == "other CA":  # a CA that did not sign the broker's certificate
        change = {"ssl_cafile": str(make_pki(tmp_path / "other").ca)}
    assert isinstance(change, dict)
    settings = replace(secured, kafka_security=replace(secured.kafka_security, **change))
    with pytest.raises(KafkaAccessRefused, match=named) as refused:
        asyncio.run(check_access(settings))
    assert password not in str(refused.value)


def test_the_right_settings_pass_the_check(secured: Settings) -> None:
    asyncio.run(check_access(secured))  # raises if refused
    stopped = replace(secured, bootstrap_servers=f"127.0.0.1:{free_ports()[0]}")
    asyncio.run(check_access(stopped))  # nobody there: left to the clients, which say so as they always have


def _until(ok, worker, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ok(worker.metrics()):
                return
        except KeyError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"not reached in {timeout} s:\n{worker.log()[-3000:]}")
        time.sleep(0.2)
