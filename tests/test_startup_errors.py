"""What an operator gets wrong at start gets one line naming it, at once: no traceback, no futile retries."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from matcher.index import DetectionIndex, _locked
from pgr.app.cli import main
from pgr.app.local_stack import free_port
from pgr.errors import BrokerUnavailable, IndexUnavailable
from pgr.settings import SettingsError, load_settings
from pgr.transport import KafkaTransport


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0 and err.startswith("error: "), err
    return err


def test_unreachable_kafka_is_one_line(write_config, capsys):
    bootstrap = f"127.0.0.1:{free_port()}"
    config = write_config(transport={"kind": "kafka", "bootstrap": bootstrap, "connect_timeout_s": 2})
    t0 = time.perf_counter()
    assert main(["run", "ingest", "--config", str(config)]) == 1
    assert bootstrap in one_line_error(capsys)
    assert time.perf_counter() - t0 < 15
    with pytest.raises(BrokerUnavailable, match=bootstrap):
        KafkaTransport(bootstrap, connect_timeout_s=2).consumer(["t"], "g")


def test_metrics_port_in_use_is_one_line(write_config, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(transport={"kind": "kafka", "bootstrap": "127.0.0.1:9"}, metrics={"port": port})
        assert main(["run", "ingest", "--config", str(config)]) == 1
    assert f"metrics port {port}" in one_line_error(capsys)


@pytest.mark.parametrize("device", ["gpu0", "cuda:x", "tpu"])
def test_unknown_device_is_a_settings_error(write_config, device):
    with pytest.raises(SettingsError, match="reid.device"):
        load_settings(write_config(reid={"device": device}))


def test_a_device_that_is_not_there_is_one_line(write_config, capsys, tmp_path):
    image = tmp_path / "q.jpg"
    image.write_bytes(b"\xff\xd8\xff")
    config = write_config(reid={"device": "cuda:7", "model": "pgr"})  # pgr-openvino (default) runs on CPU
    assert main(["search", "--image", str(image), "--config", str(config)]) == 2
    assert "cuda:7" in one_line_error(capsys)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_since_must_be_a_finite_time(write_config, capsys, value, tmp_path):
    image = tmp_path / "q.jpg"
    image.write_bytes(b"\xff\xd8\xff")
    assert main(["search", "--image", str(image), f"--since={value}", "--config", str(write_config())]) == 2
    assert "bad time" in one_line_error(capsys)


def test_a_locked_index_is_refused_at_once_in_one_line(tmp_path, write_config, capsys):
    uri = str(tmp_path / "index.db")
    DetectionIndex(uri, dim=4).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from matcher.index import DetectionIndex; DetectionIndex({uri!r}); input()"],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        # the LOCK file is there from the first open: wait until the holder has taken it (slow on a busy host)
        while not _locked(tmp_path / "index.db") and time.monotonic() < deadline:
            time.sleep(0.2)
        t0 = time.perf_counter()
        with pytest.raises(IndexUnavailable, match="locked by another process"):
            DetectionIndex(uri)
        assert time.perf_counter() - t0 < 2.0, "a locked file is not worth retrying"
        image = tmp_path / "q.jpg"
        image.write_bytes(b"\xff\xd8\xff")
        config = write_config(matcher={"index": "milvus", "milvus_uri": uri})
        assert main(["search", "--image", str(image), "--config", str(config)]) == 1
        assert "locked by another process" in one_line_error(capsys)
    finally:
        holder.kill()
        holder.wait()


def test_a_milvus_server_that_is_down_is_one_line(write_config, capsys, tmp_path):
    image = tmp_path / "q.jpg"
    image.write_bytes(b"\xff\xd8\xff")
    uri = f"http://127.0.0.1:{free_port()}"
    config = write_config(matcher={"index": "milvus", "milvus_uri": uri})
    assert main(["search", "--image", str(image), "--config", str(config)]) == 1
    assert uri in one_line_error(capsys)
