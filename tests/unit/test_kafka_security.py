"""KAFKA_* security settings: what clients are given, and what is refused at start (naming the setting)."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from click.testing import CliRunner
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from monitor.cli import main
from monitor.ops.config import ConfigError, KafkaSecurity, Settings
from tests.tls import Pki, make_pki

PASSWORD = "s3cret p@ss "  # spaces are part of a password


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def secured_env(pki: Pki, **changes: str) -> dict[str, str]:
    env = {"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "scram-sha-512",
           "KAFKA_SASL_USERNAME": "monitor", "KAFKA_SASL_PASSWORD": PASSWORD, "KAFKA_SSL_CAFILE": str(pki.ca),
           "KAFKA_SSL_CERTFILE": str(pki.client_cert), "KAFKA_SSL_KEYFILE": str(pki.client_key)}
    return {**env, **changes}


def test_without_settings_clients_speak_plaintext() -> None:
    security = KafkaSecurity.from_env({})
    assert security == Settings.from_env().kafka_security == KafkaSecurity()
    assert security.client_options() == {"security_protocol": "PLAINTEXT"}
    assert security.faust_options() == {}


def test_empty_values_count_as_unset() -> None:  # compose files pass `KAFKA_SASL_USERNAME: ""`
    env = {name: "" for name in KafkaSecurity.ENV.values()}
    assert KafkaSecurity.from_env(env) == KafkaSecurity()


def test_sasl_ssl_with_scram_and_a_client_certificate(pki: Pki) -> None:
    security = KafkaSecurity.from_env(secured_env(pki))
    assert (security.protocol, security.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")  # case-insensitive
    options = security.client_options()
    context = options.pop("ssl_context")
    assert options == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                       "sasl_plain_username": "monitor", "sasl_plain_password": PASSWORD}
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1  # only the given CA, not the system's
    # Faust turns its credentials into the same aiokafka options for its own consumers and producers.
    credentials = security.faust_options()["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    faust_options = credentials_to_aiokafka_auth(credentials)
    assert faust_options.pop("ssl_context").verify_mode == ssl.CERT_REQUIRED
    assert faust_options == options


def test_ssl_alone_and_sasl_plaintext(pki: Pki) -> None:
    tls = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(pki.ca)})
    assert set(tls.client_options()) == {"security_protocol", "ssl_context"}
    assert credentials_to_aiokafka_auth(tls.faust_options()["broker_credentials"])["security_protocol"] == "SSL"
    plain = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u",
                                    "KAFKA_SASL_PASSWORD": "p"})
    assert plain.client_options() == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                      "sasl_plain_username": "u", "sasl_plain_password": "p"}
    assert credentials_to_aiokafka_auth(plain.faust_options()["broker_credentials"]) == {
        **plain.client_options(), "ssl_context": None}


def test_the_environment_of_a_child_process_gives_the_same_settings(pki: Pki) -> None:
    security = KafkaSecurity.from_env(secured_env(pki))
    assert KafkaSecurity.from_env(security.as_env()) == security
    assert security.as_env()["KAFKA_SASL_PASSWORD"] == PASSWORD  # kept whole, spaces too


def test_the_password_is_in_no_repr(pki: Pki) -> None:
    security = KafkaSecurity.from_env(secured_env(pki))
    settings = Settings(kafka_security=security)
    for text in (repr(security), str(security), repr(settings), security.describe(),
                 repr(security.faust_options()["broker_credentials"])):
        assert PASSWORD.strip() not in text and "monitor" in text


REFUSED = [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS': not one of PLAINTEXT, SSL"),
    ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM='GSSAPI': not one of PLAIN, SCRAM-SHA-256"),
    ({"KAFKA_SASL_USERNAME": ""}, "KAFKA_SASL_USERNAME is not set: KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
    ({"KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD is not set"),
    ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE=/nonexistent/ca.pem: no such file"),
    ({"KAFKA_SSL_CERTFILE": ""}, "KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
     "KAFKA_SSL_CAFILE is set but KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT: it would not be used"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL"},
     "KAFKA_SASL_MECHANISM is set but KAFKA_SECURITY_PROTOCOL is SSL: it would not be used"),
]


@pytest.mark.parametrize("changes, message", REFUSED)
def test_a_bad_setting_is_refused_naming_it(pki: Pki, changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        KafkaSecurity.from_env(secured_env(pki, **changes))
    assert message in str(refused.value)
    assert PASSWORD.strip() not in str(refused.value)


def test_files_that_are_not_what_they_say_are_refused(pki: Pki, tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=f"KAFKA_SSL_CAFILE={not_pem}: not a readable PEM certificate"):
        KafkaSecurity.from_env(secured_env(pki, KAFKA_SSL_CAFILE=str(not_pem)))
    other_key = make_pki(tmp_path / "other").client_key  # a key that is not the certificate's
    with pytest.raises(ConfigError, match="KAFKA_SSL_CERTFILE=.*KAFKA_SSL_KEYFILE=.*matching"):
        KafkaSecurity.from_env(secured_env(pki, KAFKA_SSL_KEYFILE=str(other_key)))


def test_the_cli_refuses_at_start_with_the_message(pki: Pki) -> None:
    env = secured_env(pki, KAFKA_SASL_MECHANISM="SCRAM-SHA-1")
    result = CliRunner().invoke(main, ["worker"], env=env)
    assert result.exit_code == 1
    assert "Error: KAFKA_SASL_MECHANISM='SCRAM-SHA-1': not one of" in result.output
    assert PASSWORD.strip() not in result.output
