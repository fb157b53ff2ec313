"""Detection ids of a live source never collide across ingest runs (a restarted camera keeps its history);
a file ingested twice gives the same ids (re-ingesting is idempotent)."""

from __future__ import annotations

import threading

import cv2

from ingest.service import run_camera
from pgr.messages import decode_crop
from pgr.metrics import PipelineMetrics
from pgr.settings import CameraSettings, load_settings
from pgr.transport import InProcessBus
from tests.test_sources import _FlakyMjpegCamera


def ingest_ids(cam: CameraSettings, settings) -> list[str]:
    bus = InProcessBus()
    run_camera(cam, settings.ingest, bus.producer(), "crops", PipelineMetrics(), threading.Event())
    return [decode_crop(m.value).detection.detection_id for m in bus.records("crops")]


def test_a_restarted_live_camera_gets_new_ids(write_config, pets_video):
    settings = load_settings(write_config())
    cap = cv2.VideoCapture(str(pets_video))
    frames = [cv2.imencode(".jpg", cap.read()[1])[1].tobytes() for _ in range(6)]
    camera = _FlakyMjpegCamera(frames, first=10_000, refuse=0)
    cam = CameraSettings(id="live", source=camera.url, fps=1000, max_frames=6)
    try:
        first, second = ingest_ids(cam, settings), ingest_ids(cam, settings)
    finally:
        camera.server.shutdown()
    assert first and second, "persons were detected in both runs"
    assert not set(first) & set(second), "the second run would overwrite the first run's rows"


def test_a_file_ingested_twice_gives_the_same_ids(write_config, pets_video):
    settings = load_settings(write_config())
    cam = CameraSettings(id="file", source=str(pets_video), fps=2, max_frames=20, start_time=1000.0)
    first = ingest_ids(cam, settings)
    assert first and ingest_ids(cam, settings) == first
