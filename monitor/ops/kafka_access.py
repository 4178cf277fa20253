"""Check at start that Kafka accepts the client's security settings, and say which one it refused.

A client that fails TLS or SASL does not say why: aiokafka logs the broker's answer and raises
"Unable to bootstrap", as it does for a broker that is down. One connection made before any
client starts tells the two apart, so that a wrong password stops the worker at once with the
setting to fix (never its value) instead of a connection error.
"""

from __future__ import annotations

import ssl

import structlog
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from monitor.ops.config import ConfigError, Settings

log = structlog.get_logger("monitor.kafka")


class KafkaAccessRefused(ConfigError):
    """The broker answered and refused these settings; the message names the ones to check."""


async def check_access(settings: Settings, timeout_s: float = 10.0) -> None:
    """Connect (TLS, SASL) to the bootstrap servers until one accepts; KafkaAccessRefused if one refuses.

    A server that cannot be reached is passed over: the clients report that as they always do.
    """
    security = settings.kafka_security
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        where = f"Kafka at {server.strip()} ({security.describe()})"
        try:
            conn = await create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000),
                                     **security.client_options())
        except SaslAuthenticationFailed as e:
            raise KafkaAccessRefused(f"{where} refused the credentials: check KAFKA_SASL_USERNAME and "
                                     f"KAFKA_SASL_PASSWORD (the broker said: {e})") from None
        except UnsupportedSaslMechanismError:
            raise KafkaAccessRefused(f"{where} does not offer KAFKA_SASL_MECHANISM={security.sasl_mechanism} "
                                     "on this listener") from None
        except ssl.SSLCertVerificationError as e:
            raise KafkaAccessRefused(f"{where}: the broker's certificate does not verify against "
                                     f"KAFKA_SSL_CAFILE={security.ssl_cafile} ({e.verify_message})") from None
        except KafkaConnectionError as e:
            if "closed" not in str(e):
                continue
            raise KafkaAccessRefused(
                f"{where} closed the connection while it was being set up: check that KAFKA_SECURITY_PROTOCOL "
                "is the listener's and, if it requires client certificates, KAFKA_SSL_CERTFILE and "
                "KAFKA_SSL_KEYFILE") from None
        except (OSError, TimeoutError):
            continue
        conn.close()
        log.info("kafka accepts the connection", server=server.strip(), security=security.describe())
        return
