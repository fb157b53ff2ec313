"""The PGR model in the pipeline: records carry parts and pixels, the matcher stores them, and search
re-ranks Milvus's instance candidates progressively, exactly as progressive retrieval over the whole
gallery would."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from matcher.feature_store import FeatureStore
from matcher.open_index import open_index
from matcher.search import search_image
from pgr.app.pipeline import build_extractor, run_embedded
from pgr.metrics import PipelineMetrics
from pgr.settings import load_settings
from reid.retrieval import GalleryFeatures, RetrievalParams, progressive_retrieval


@pytest.fixture(scope="module")
def pgr_run(tmp_path_factory, assets_dir, pets_video):
    import yaml

    tmp = tmp_path_factory.mktemp("pgr")
    cfg = {
        "cameras": [{"id": "pets", "source": str(pets_video), "fps": 2, "max_frames": 150}],
        "ingest": {"detector_weights": str(assets_dir / "weights" / "yolo11n_int8_openvino_model")},
        "reid": {
            "model": "pgr",
            "weights": str(assets_dir / "weights" / "mobilenetv2_imagenet_features.pt"),
            "device": "cpu",
            "pixel_dim": 64,
        },
        "matcher": {"milvus_uri": str(tmp / "i.db"), "thumbnails_dir": str(tmp / "thumbs"), "n2": 5},
        "metrics": {"port": 0},
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    settings = load_settings(tmp / "c.yaml")
    extractor = build_extractor(settings.reid)
    run = run_embedded(settings, PipelineMetrics(), threading.Event(), extractor)
    assert run.errors == []
    index = open_index(settings.matcher)
    yield settings, index, extractor, FeatureStore(settings.matcher.feature_store_dir)
    index.close()


def test_parts_and_pixels_are_stored_per_detection(pgr_run):
    settings, index, _, store = pgr_run
    rows = index.get(index.all_ids())
    assert len(rows) >= 10 and all(r.model.startswith("pgr-mobilenetv2") for r in rows)
    with_pixels = 0
    for r in rows:
        f = store.load(r.camera_id, r.detection_id)
        assert f.parts.shape == (5, 1280) and f.part_visibility.shape == (5,)
        assert f.pixels.shape[1] == 64 and f.pixels.dtype.name == "float16"
        # A crop with no foreground cell stores an empty pixel set (the shipped model has many: RESULTS.md).
        assert f.pixel_coords.shape == (len(f.pixels), 2)
        assert len(f.pixels) == 0 or (f.pixel_coords.min() >= 0 and f.pixel_coords.max() < 16)
        with_pixels += len(f.pixels) > 0
    assert with_pixels > 0


def test_search_equals_progressive_retrieval_over_the_whole_gallery(pgr_run):
    settings, index, extractor, store = pgr_run
    rows = sorted(index.get(index.all_ids()), key=lambda r: r.detection_id)
    query_row = rows[len(rows) // 2]
    params = RetrievalParams(n1=8, n2=4)
    hits = search_image(
        index, extractor, Path(query_row.thumbnail), top_k=len(rows), features=store, params=params
    )
    assert hits[0].detection_id == query_row.detection_id
    assert hits[0].s_ins == pytest.approx(1.0, abs=1e-4) and hits[0].s_pixel == pytest.approx(1.0, abs=1e-3)
    assert all(h.s_pixel == h.s_pixel for h in hits[:4]) and all(h.s_pixel != h.s_pixel for h in hits[4:])

    from pgr.images import read_image

    query = GalleryFeatures.from_crop_features(extractor.extract([read_image(query_row.thumbnail)]))
    gallery = GalleryFeatures.from_crop_features(
        [store.load(r.camera_id, r.detection_id) for r in rows], ids=[r.detection_id for r in rows]
    )
    reference = progressive_retrieval(query, gallery, params)
    expected = reference.ranked_ids(gallery)[0]
    assert [h.detection_id for h in hits[:8]] == expected[:8]
    assert torch.allclose(torch.tensor([h.score for h in hits[:8]]), reference.score[0, :8], atol=1e-4)
