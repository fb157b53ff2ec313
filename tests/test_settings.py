"""Settings are validated at start: each mistake gets an error that names the key or the file."""

from __future__ import annotations

import pytest

from pgr.app.cli import main
from pgr.model_files import ModelFileMissing
from pgr.paths import REPO
from pgr.settings import SettingsError, deep_merge, load_settings, read_config


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


def test_a_config_inherits_from_its_base(write_config, tmp_path):
    base = write_config(matcher={"n1": 500, "a2": 0.7})
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text(f"base: ../{base.name}\nmatcher:\n  n1: 200\n")
    m = load_settings(child).matcher
    assert (m.n1, m.a2, m.n2) == (200, 0.7, 30)  # from the child, from the base, the default


@pytest.mark.parametrize(
    "text, why",
    [
        ("base: nowhere.yaml\n", r"child.yaml: base: config file not found: .*nowhere.yaml"),
        ("base: child.yaml\n", r"base: .*child.yaml is already in the chain"),
        ("base: [a.yaml]\n", r"base: must be a file name"),
    ],
)
def test_bad_base(tmp_path, text, why):
    child = tmp_path / "child.yaml"
    child.write_text(text)
    with pytest.raises(SettingsError, match=why):
        read_config(child)


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    assert deep_merge(base, {"a": {"y": [3]}, "c": 2}) == {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}


def test_relative_paths_are_taken_from_the_file_that_writes_them(write_config, tmp_path):
    base = write_config(matcher={"thumbnails_dir": "thumbs", "milvus_uri": "index.db"})
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text(f"base: ../{base.name}\nmatcher:\n  features_dir: features\n")
    m = load_settings(child).matcher
    assert m.thumbnails_dir == tmp_path / "thumbs" and m.milvus_uri == str(tmp_path / "index.db")
    assert m.features_dir == tmp_path / "sub" / "features"
