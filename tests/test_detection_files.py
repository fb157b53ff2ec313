"""Per-detection file names: every id stays inside its folder, and ids that differ get different files."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.feature_store import FeatureStore
from matcher.thumbnails import ThumbnailStore
from pgr.messages import CropFeatures


def features(seed: int) -> CropFeatures:
    rng = np.random.default_rng(seed)
    return CropFeatures(
        instance=rng.random(8, dtype=np.float32),
        parts=rng.random((5, 8), dtype=np.float32),
        part_visibility=np.ones(5, bool),
        pixels=rng.random((3, 8), dtype=np.float32),
        pixel_coords=np.zeros((3, 2), np.int16),
    )


@pytest.mark.parametrize("camera", ["..", ".", "../..", "/etc", "a/../../b"])
def test_no_id_writes_outside_the_store(tmp_path, camera):
    root = tmp_path / "store" / "thumbs"
    path = ThumbnailStore(root).save(camera, "..", b"\xff\xd8\xffjpeg")
    assert path.resolve().is_relative_to(root.resolve()) and path.parent.parent.resolve() == root.resolve()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["thumbs"]
    stored = FeatureStore(tmp_path / "store" / "features").save(camera, "../x", features(0))
    assert stored.resolve().is_relative_to((tmp_path / "store" / "features").resolve())


def test_ids_that_differ_only_in_replaced_characters_get_their_own_files(tmp_path):
    thumbs, store = ThumbnailStore(tmp_path / "t"), FeatureStore(tmp_path / "f")
    ids = ["t/1", "t_1", "t 1", "t:1", "T_1"]
    paths = {thumbs.save(cam, det, cam.encode()) for cam in ids for det in ids}
    assert len(paths) == len(ids) ** 2
    for i, det in enumerate(ids):
        store.save("t_1", det, features(i))
    for i, det in enumerate(ids):
        assert np.array_equal(store.load("t_1", det).instance, features(i).instance)
    assert thumbs.path_for("t/1", "t_1").read_bytes() == b"t/1"


def test_names_stay_short_and_stable(tmp_path):
    thumbs = ThumbnailStore(tmp_path)
    long_id = "cam:" + "9" * 196
    path = thumbs.save("cam", long_id, b"x")
    assert len(path.name.encode()) <= 120
    assert thumbs.path_for("cam", long_id) == path  # the same id always maps to the same file
    assert thumbs.path_for("cam", "cam:12:t3").name.startswith("cam_12_t3")  # still readable
