"""Live ingest: cameras share one batched detector; a camera faster than the detector loses its late frames
(counted), a recorded file loses none; per-track representatives publish fewer crops and keep every track."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from ingest.detector import build_detector
from ingest.representatives import Candidate, RepresentativePicker
from ingest.service import run_ingest
from pgr.messages import decode_crop
from pgr.metrics import PipelineMetrics, counter_total
from pgr.settings import load_settings
from pgr.transport import InProcessBus


class SlowDetector:
    """The real detector on a machine that takes `delay_s` more per inference; records the batch sizes."""

    def __init__(self, detector, delay_s: float) -> None:
        self.detector, self.delay_s, self.batches = detector, delay_s, []

    def detect(self, images):
        self.batches.append(len(images))
        time.sleep(self.delay_s)
        return self.detector.detect(images)


def ingest(settings, detector=None):
    bus, metrics = InProcessBus(capacity=100_000), PipelineMetrics()
    result = run_ingest(
        settings.cameras, settings.ingest, bus.producer(), "crops", metrics, threading.Event(), detector
    )
    return result, [decode_crop(m.value).detection for m in bus.records("crops")], metrics


def test_a_live_camera_faster_than_the_detector_drops_late_frames_and_counts_them(write_config, pets_video):
    cams = [
        {"id": f"cam{i}", "source": str(pets_video), "fps": 10, "max_frames": 40, "realtime": True}
        for i in range(3)
    ]
    settings = load_settings(write_config(cameras=cams, ingest={"detect_batch": 2}))
    slow = SlowDetector(build_detector(settings.ingest), 0.4)
    result, dets, metrics = ingest(settings, slow)
    assert all(n > 0 for n in result.values()), result
    for cam in ("cam0", "cam1", "cam2"):
        read = metrics.frames_read.labels(cam)._value.get()
        detected = metrics.frames_detected.labels(cam)._value.get()
        behind = metrics.frames_dropped.labels(cam, "behind")._value.get()
        assert read == 40 and behind > 0 and detected + behind == read
    assert max(slow.batches) == 2, "frames of two cameras go through the detector together"
    assert {d.camera_id for d in dets} == {"cam0", "cam1", "cam2"}
    # what is detected is the newest frame: the last frames of the stream are there
    assert max(d.frame_index for d in dets) >= 36


def test_a_recorded_file_loses_no_frame_behind_a_slow_detector(write_config, pets_video):
    cams = [{"id": "file", "source": str(pets_video), "fps": 10, "max_frames": 12}]
    settings = load_settings(write_config(cameras=cams))
    slow = SlowDetector(build_detector(settings.ingest), 0.2)
    _, _, metrics = ingest(settings, slow)
    assert counter_total(metrics.frames_read) == counter_total(metrics.frames_detected) == 12
    assert counter_total(metrics.frames_dropped) == 0


def test_representatives_publish_fewer_crops_and_keep_every_track(write_config, pets_video):
    cams = [{"id": "pets", "source": str(pets_video), "fps": 5, "max_frames": 120, "start_time": 0.0}]
    every = load_settings(write_config(cameras=cams))
    some = load_settings(write_config(cameras=cams, ingest={"representative_s": 1.0}))
    _, all_crops, _ = ingest(every)
    _, reps, _ = ingest(some)
    assert 0 < len(reps) < len(all_crops) / 3
    tracks = {d.track_id for d in all_crops}
    assert {d.track_id for d in reps} == tracks
    assert {d.detection_id for d in reps} <= {d.detection_id for d in all_crops}  # the same crops, fewer
    per_track = defaultdict(list)
    for d in reps:
        per_track[d.track_id].append(d.timestamp)
    for stamps in per_track.values():
        seconds = max(stamps) - min(stamps)
        assert len(stamps) <= seconds / 1.0 + 2  # the first, then at most one a second, and the last


def test_the_picker_sends_the_best_crop_of_each_interval():
    picker: RepresentativePicker[str] = RepresentativePicker(every_s=1.0)
    sent = []
    frames = [
        (0.0, [Candidate(1, 0.3, "1a"), Candidate(-1, 0.1, "still")]),  # new track and a still: at once
        (0.5, [Candidate(1, 0.9, "1b"), Candidate(2, 0.2, "2a")]),
        (0.8, [Candidate(1, 0.4, "1c"), Candidate(2, 0.8, "2b")]),
        (1.1, [Candidate(1, 0.5, "1d"), Candidate(2, 0.1, "2c")]),  # track 1 is due: its best since
        (1.3, [Candidate(1, 0.6, "1e")]),  # track 2 missed a frame: no extra crop
        (1.6, [Candidate(2, 0.3, "2d")]),  # track 2 is due: 2b; track 1 missed a frame
        (2.2, []),  # track 1 is due, though not in this frame: its pending 1e
        (2.4, [Candidate(2, 0.7, "2e")]),
        (3.0, [Candidate(1, 0.2, "1f")]),  # track 1 back, not due (1e went at 2.2); track 2 due: 2e
    ]
    for t, cands in frames:
        sent.append([c.item for c in picker.offer(t, cands)])
    assert sent == [["1a", "still"], ["2a"], [], ["1b"], [], ["2b"], ["1e"], [], ["2e"]]
    assert [c.item for c in picker.flush()] == ["1f"]  # the stream ended
