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
