"""An end-to-end torch PGR model exported to OpenVINO stores the same features as torch (cosine >= 0.999
on real crops) and is exported once per checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pgr.settings import DEFAULT_PGR_CHECKPOINT
from reid.pgr_extractor import PGRExtractor


@pytest.fixture(scope="module")
def crops(pets_crops: list[np.ndarray]) -> list[np.ndarray]:
    return pets_crops


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float32), b.astype(np.float32)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_openvino_runtime_matches_torch(tmp_path: Path, crops):
    kwargs = {"checkpoint": DEFAULT_PGR_CHECKPOINT, "device": "cpu", "pixel_dim": 64}
    torch_feats = PGRExtractor(None, **kwargs).extract(crops)
    ov = PGRExtractor(None, runtime="openvino", export_dir=tmp_path, **kwargs)
    ov_feats = ov.extract(crops)
    assert len(list(tmp_path.glob("*.xml"))) == 1 and len(list(tmp_path.glob("*.bin"))) == 1
    for t, o in zip(torch_feats, ov_feats, strict=True):
        assert cosines(t.instance, o.instance) >= 0.999
        assert cosines(t.parts, o.parts).min() >= 0.999
        assert (t.part_visibility == o.part_visibility).all()
        assert abs(len(t.pixels) - len(o.pixels)) <= 2  # a cell at M = 1/2 may fall either way
    again = PGRExtractor(None, runtime="openvino", export_dir=tmp_path, **kwargs)  # reuses the export
    assert len(list(tmp_path.glob("*.xml"))) == 1
    assert cosines(again.extract(crops[:1])[0].instance, ov_feats[0].instance) >= 0.9999


def test_openvino_runtime_needs_a_checkpoint():
    with pytest.raises(ValueError, match="needs a checkpoint"):
        PGRExtractor("mobilenetv2", runtime="openvino", device="cpu")
