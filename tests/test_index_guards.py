"""The index refuses what would lose or poison data: a collection of another dimension than the configured
model's, a file locked by another process (at once, in one line), a manifest that lost its rows."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.index import DetectionIndex, IndexRow
from pgr.errors import IndexMismatch
from pgr.messages import Detection


def rows(n: int, dim: int, camera: str = "cam") -> list[IndexRow]:
    v = np.full(dim, 1 / np.sqrt(dim), np.float32)
    return [
        IndexRow(
            Detection(f"{camera}:{i}:t1", camera, 1000.0 + i, i, 1, (0, 0, 10, 20), 0.9), "t.jpg", "m", v
        )
        for i in range(n)
    ]


def test_the_dimension_comes_from_the_model_not_the_first_record(tmp_path):
    uri = str(tmp_path / "idx.db")
    index = DetectionIndex(uri, dim=8)
    assert index.dim == 8 and index.count() == 0  # created before any record arrived
    refused = index.upsert(rows(2, 3) + rows(1, 8, "other"))
    assert sorted(refused) == ["cam:0:t1", "cam:1:t1"] and "(8,)" in refused["cam:0:t1"]
    assert index.all_ids() == ["other:0:t1"]
    index.close()


def test_an_index_of_another_dimension_is_refused_at_start(tmp_path):
    uri = str(tmp_path / "idx.db")
    DetectionIndex(uri, dim=3).close()
    with pytest.raises(IndexMismatch, match="holds 3-d vectors, the configured model makes 1280-d"):
        DetectionIndex(uri, dim=1280)
    reader = DetectionIndex(uri)  # a reader takes what is there
    assert reader.dim == 3
    reader.close()


def _filled_index(tmp_path, n: int = 30):
    """A milvus-lite index of n rows written in 3 batches, with a thumbnail per row, closed."""
    from matcher.thumbnails import ThumbnailStore

    uri, thumbs = str(tmp_path / "idx.db"), ThumbnailStore(tmp_path / "thumbs")
    index = DetectionIndex(uri, dim=8)
    all_rows = rows(n, 8)
    for start in range(0, n, n // 3):
        batch = all_rows[start : start + n // 3]
        for r in batch:
            thumbs.save(r.detection.camera_id, r.detection.detection_id, b"\xff\xd8\xff")
        assert index.upsert(batch) == {}
    index.close()
    return uri, tmp_path / "idx.db" / "collections" / "detections"


def _data_files(collection) -> list[str]:
    return sorted(p.name for p in collection.rglob("*.parquet"))


@pytest.mark.parametrize("damage", ["garbage", "empty", "deleted", "a listed file deleted"])
def test_a_corrupt_manifest_is_refused_before_milvus_lite_drops_the_data(tmp_path, damage):
    import json

    from pgr.errors import IndexUnavailable

    uri, collection = _filled_index(tmp_path)
    files = _data_files(collection)
    assert files
    manifest = collection / "manifest.json"
    if damage == "garbage":
        manifest.write_text("{not json")
    elif damage == "empty":
        manifest.write_text("")
    elif damage == "deleted":
        manifest.unlink()
    else:
        listed = json.loads(manifest.read_text())["partitions"]["_default"]["data_files"][-1]
        (collection / "partitions" / "_default" / listed).unlink()
        files = _data_files(collection)
    with pytest.raises(IndexUnavailable, match="manifest"):
        DetectionIndex(uri)
    assert _data_files(collection) == files, "nothing was deleted"


def test_an_index_with_fewer_rows_than_thumbnails_is_refused(tmp_path, write_config, capsys):
    """What the manifest check cannot see (a manifest rewritten without some files, an index file swapped
    for another) the row count against the thumbnails does."""
    from matcher.index_check import check_rows_against_files
    from pgr.app.cli import main
    from pgr.errors import IndexUnavailable

    uri, _ = _filled_index(tmp_path)
    index = DetectionIndex(uri)
    check_rows_against_files(index, tmp_path / "thumbs", slack=10)  # consistent: passes
    index.close()
    other = DetectionIndex(str(tmp_path / "other.db"), dim=8)  # rows lost, thumbnails still there
    with pytest.raises(IndexUnavailable, match="30 thumbnails but 0 rows"):
        check_rows_against_files(other, tmp_path / "thumbs", slack=10)
    other.close()
    image = tmp_path / "q.jpg"
    image.write_bytes(b"\xff\xd8\xff")
    config = write_config(
        matcher={
            "index": "milvus",
            "milvus_uri": str(tmp_path / "other.db"),
            "thumbnails_dir": str(tmp_path / "thumbs"),
            "batch_size": 8,
        }
    )
    assert main(["search", "--image", str(image), "--config", str(config)]) == 1
    assert "30 thumbnails but 0 rows" in capsys.readouterr().err


def test_an_index_of_another_model_is_reported_at_search_time(tmp_path, assets_dir):
    from matcher.search import ModelMismatch, search_image
    from reid.extractor import ImageNetMobileNetV2Extractor

    extractor = ImageNetMobileNetV2Extractor(
        assets_dir / "weights" / "mobilenetv2_imagenet_features.pt", "cpu"
    )
    index = DetectionIndex(str(tmp_path / "idx.db"), dim=1280)
    index.upsert(rows(3, 1280))  # written by model "m"
    crop = np.full((128, 64, 3), 127, np.uint8)
    with pytest.raises(ModelMismatch, match=r"m \(3 rows\).*mobilenetv2-imagenet-gap"):
        search_image(index, extractor, crop)
    index.close()
