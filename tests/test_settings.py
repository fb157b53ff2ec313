"""Settings are validated at start: each mistake gets an error that names the key or the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgr.cli import main
from pgr.models import ModelFileMissing
from pgr.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_are_valid(assets_dir, monkeypatch):
    monkeypatch.setenv("PGR_ASSETS", str(assets_dir))
    assert load_settings(REPO / "configs" / "embedded.yaml").transport.kind == "inprocess"
    kafka = load_settings(REPO / "configs" / "kafka.yaml")
    assert kafka.transport.kind == "kafka" and len(kafka.cameras) == 2


def test_unknown_key(write_config):
    with pytest.raises(SettingsError, match=r"ingest.confidence: Extra inputs are not permitted"):
        load_settings(write_config(ingest={"confidence": 0.5}))


def test_missing_model_file_names_where_it_looked(write_config, tmp_path):
    missing = tmp_path / "nowhere" / "yolo.xml"
    with pytest.raises(ModelFileMissing, match="nowhere/yolo.xml") as err:
        load_settings(write_config(ingest={"detector_weights": str(missing)}))
    assert "model cache" in str(err.value)


@pytest.mark.parametrize(
    "override, why",
    [
        ({"matcher": {"milvus_uri": "ftp://x:1"}}, "Milvus URI"),
        ({"matcher": {"milvus_uri": "index.sqlite"}}, "must end in .db"),
        ({"transport": {"kind": "kafka", "bootstrap": "localhost:99999"}}, "bad Kafka bootstrap"),
        ({"transport": {"kind": "kafka"}}, "bootstrap is required"),
        ({"metrics": {"port": 70000}}, "metrics.port"),
        ({"cameras": [{"id": "a b", "source": "x.mp4"}]}, "cameras.0.id"),
        ({"cameras": [{"id": "..", "source": "x.mp4"}]}, "cameras.0.id"),
        ({"cameras": [{"id": "a", "source": "gopher://x"}]}, "unsupported camera URL scheme"),
        ({"cameras": [{"id": "a", "source": "1"}, {"id": "a", "source": "2"}]}, "unique"),
        ({"reid": {"model": "imagenet-gap", "backbone": "resnet50"}}, "needs backbone mobilenetv2"),
    ],
)
def test_bad_values(write_config, override, why):
    with pytest.raises(SettingsError, match=why):
        load_settings(write_config(**override))


def test_cli_reports_config_errors_without_a_traceback(write_config, capsys):
    assert (
        main(["search", "--image", "x.jpg", "--config", str(write_config(reid={"device": 5, "extra": 1}))])
        == 2
    )
    assert "reid.extra" in capsys.readouterr().err
