"""The embedded pipeline end to end on real video: detector, CNN, in-process bus, and each index: the
embedded one and Milvus (a milvus-lite file, the same client as a server)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from matcher.open_index import AnyIndex, open_index
from matcher.search import longest_track_query, search_image
from pgr.app.local_stack import scrape
from pgr.app.pipeline import build_extractor, run_embedded
from pgr.metrics import PipelineMetrics
from pgr.settings import load_settings


@pytest.fixture(scope="module", params=["embedded", "milvus"])
def embedded_run(request, tmp_path_factory, assets_dir: Path, pets_video: Path):
    """One embedded run over the first 30 s of PETS 2009 at 2 fps per index, shared by the tests below."""
    from tests.conftest import REPO  # noqa: F401  (conftest sets the ultralytics env)

    tmp = tmp_path_factory.mktemp("embedded")
    import yaml

    cfg = {
        "cameras": [
            {"id": "pets", "source": str(pets_video), "fps": 2, "max_frames": 300, "start_time": 1000.0}
        ],
        "ingest": {"detector_weights": str(assets_dir / "weights" / "yolo11n_int8_openvino_model")},
        "reid": {
            "weights": str(assets_dir / "weights" / "mobilenetv2_imagenet_features.pt"),
            "device": "cpu",
        },
        "matcher": {
            "index": request.param,
            "milvus_uri": str(tmp / "index.db"),
            "thumbnails_dir": str(tmp / "thumbs"),
        },
        "metrics": {"port": 0},
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    settings = load_settings(tmp / "c.yaml")
    metrics = PipelineMetrics()
    port = metrics.serve("127.0.0.1", 0)
    extractor = build_extractor(settings.reid)
    run = run_embedded(settings, metrics, stop=threading.Event(), extractor=extractor)
    assert run.errors == []
    index = open_index(settings.matcher)
    yield settings, run, index, extractor, port
    index.close()


def test_persons_are_detected_tracked_and_indexed(embedded_run):
    settings, run, index, _, _ = embedded_run
    published = run.crops_per_camera["pets"]
    assert published >= 20, "PETS 2009 shows several people in its first 30 s"
    assert index.count() == published
    rows = index.get(index.all_ids())
    assert {r.camera_id for r in rows} == {"pets"}
    assert all(Path(r.thumbnail).is_file() for r in rows)
    assert all(
        0 <= r.frame_index < 300 and r.timestamp == pytest.approx(1000.0 + r.frame_index / 10) for r in rows
    )
    assert run.bus.records(settings.topics.dead_letter) == []


def own_track_query(index: AnyIndex):
    """The longest track's id, its length and the crop in its middle (single-camera runs)."""
    picked = longest_track_query(index.get(index.all_ids()))
    assert picked is not None, "nothing was tracked"
    (_, track), n, query = picked
    return track, n, query


def assert_own_track_first(hits, query, track: int) -> None:
    """The crop itself first (score 1), then its own track: the nearest other hit and 2 of the next 3."""
    assert hits[0].detection_id == query.detection_id and hits[0].score == pytest.approx(1.0, abs=1e-3)
    others = [h.track_id for h in hits[1:]]
    assert others[0] == track and others[:4].count(track) >= 3, (track, others)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))


def test_a_crop_finds_its_own_track_first(embedded_run):
    _, _, index, extractor, _ = embedded_run
    track, n, query = own_track_query(index)
    assert n >= 6
    assert_own_track_first(search_image(index, extractor, Path(query.thumbnail), top_k=5), query, track)


def test_search_filters_by_camera_and_time(embedded_run):
    _, _, index, extractor, _ = embedded_run
    rows = index.get(index.all_ids())
    query = Path(rows[0].thumbnail)
    assert search_image(index, extractor, query, camera="elsewhere") == []
    later = search_image(index, extractor, query, top_k=50, since=1015.0)
    assert later and all(h.timestamp >= 1015.0 for h in later)


def test_metrics_endpoint_matches_what_flowed(embedded_run):
    _, run, index, _, port = embedded_run
    m = scrape(port)
    cam = (("camera", "pets"),)
    assert m[("pgr_frames_read_total", cam)] == 60  # 300 frames at 10 fps sampled at 2 fps
    assert m[("pgr_crops_published_total", cam)] == run.crops_per_camera["pets"]
    assert m[("pgr_detections_total", cam)] >= m[("pgr_crops_published_total", cam)]
    assert m[("pgr_features_extracted_total", ())] == run.crops_per_camera["pets"]
    assert m[("pgr_records_indexed_total", ())] == index.count()
    assert m[("pgr_stage_latency_seconds_count", (("stage", "detect"),))] == 60
    assert m[("pgr_stage_latency_seconds_count", (("stage", "extract"),))] >= 1
    assert m[("pgr_frame_to_searchable_seconds_count", ())] == index.count()
