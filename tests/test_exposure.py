"""What the system exposes: nothing listens beyond loopback by default, and the settings that lock Kafka and
Milvus down (SASL/TLS, a Milvus user) reach the clients or are refused with the key that is wrong."""

from __future__ import annotations

import ipaddress

import psutil
import pytest

from matcher.index import DetectionIndex
from pgr.app.pipeline import kafka_client_options
from pgr.metrics import PipelineMetrics
from pgr.settings import MetricsSettings, SettingsError, load_settings


def listening() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def test_by_default_nothing_listens_beyond_loopback(tmp_path):
    before = listening()
    defaults = MetricsSettings()
    port = PipelineMetrics().serve(defaults.host, 0)
    index = DetectionIndex(str(tmp_path / "idx.db"), dim=4)  # milvus-lite serves the file over gRPC
    try:
        opened = listening() - before
        assert (defaults.host, port) in opened and len(opened) >= 2, opened
        assert all(loopback(ip) for ip, _ in opened), opened
    finally:
        index.close()


def test_kafka_sasl_ssl_settings_reach_the_clients(write_config, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    security = {
        "protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "username": "pgr",
        "password": "secret",
        "ca_file": str(ca),
    }
    settings = load_settings(
        write_config(transport={"kind": "kafka", "bootstrap": "k:9093", "security": security})
    )
    assert kafka_client_options(settings.transport) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "pgr",
        "sasl_plain_password": "secret",
        "ssl_cafile": str(ca),
    }
    assert "secret" not in repr(settings.transport)  # a password never reaches a log line


@pytest.mark.parametrize(
    "override, why",
    [
        ({"transport": {"security": {"protocol": "SASL_SSL", "username": "u"}}}, "transport.security"),
        ({"transport": {"security": {"protocol": "TLS"}}}, "transport.security.protocol"),
        ({"matcher": {"milvus_token": "root:Milvus"}}, "milvus_token needs a Milvus server"),
    ],
)
def test_incomplete_security_settings_are_refused(write_config, override, why):
    with pytest.raises(SettingsError, match=why):
        load_settings(write_config(**override))
