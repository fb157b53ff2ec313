"""A feed of small real person crops as crop records, published straight to the crops topic: the load of the
fault drill and of the monitoring tests, without the detector's cost per frame. The crops are cut where the
person detector finds people in a real video, and kept small (the records stay around 2 KB)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from ingest.detector import PersonTracker
from pgr.messages import CropRecord, Detection, encode_crop, run_tag

SMALL_CROP = (48, 96)  # width, height: what a distant person looks like, and a small record


def person_crops(
    video: Path, detector_weights: Path, frames: int = 4, size: tuple[int, int] = SMALL_CROP
) -> list[bytes]:
    """JPEGs of the persons the detector finds in `frames` frames spread over the video, resized to
    `size` (width, height)."""
    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or frames
    detector = PersonTracker(detector_weights)
    out: list[bytes] = []
    for k in range(frames):
        cap.set(cv2.CAP_PROP_POS_FRAMES, k * total // frames)
        ok, frame = cap.read()
        if not ok:
            break
        for person in detector.detect(frame):
            x1, y1, x2, y2 = (int(v) for v in person.box)
            if x2 - x1 < 8 or y2 - y1 < 16:
                continue
            crop = cv2.resize(frame[y1:y2, x1:x2], size, interpolation=cv2.INTER_AREA)
            out.append(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
    cap.release()
    if not out:
        raise ValueError(f"no person found in {frames} frames of {video}")
    return out


@dataclass
class CropFeed:
    """Crop record number `seq` of a stream spread over `cameras` (round robin), `crops_per_track`
    consecutive crops of a camera forming one track of one person, sampled at `fps` of stream time from
    `start_time`. With `frozen_clock` every crop carries `start_time` (a camera whose clock stopped)."""

    jpegs: list[bytes]
    cameras: tuple[str, ...] = ("feed0", "feed1", "feed2", "feed3")
    crops_per_track: int = 8
    fps: float = 2.0
    start_time: float = field(default_factory=lambda: float(int(time.time())))
    frozen_clock: bool = False
    run: str = field(default_factory=run_tag)

    def detection_id(self, seq: int) -> str:
        cam, k = self._where(seq)
        return f"{cam}:{self.run}:{k}:t{k // self.crops_per_track}"

    def record(self, seq: int) -> tuple[str, bytes, bytes]:
        """(detection id, Kafka key, encoded crop record) of crop `seq`."""
        cam, k = self._where(seq)
        track = k // self.crops_per_track
        jpeg = self.jpegs[(track * len(self.cameras) + self.cameras.index(cam)) % len(self.jpegs)]
        w, h = SMALL_CROP
        det = Detection(
            detection_id=self.detection_id(seq),
            camera_id=cam,
            timestamp=self.start_time if self.frozen_clock else self.start_time + k / self.fps,
            frame_index=k,
            track_id=track,
            box=(10.0, 10.0, 10.0 + w, 10.0 + h),
            score=0.9,
            read_at=time.time(),
        )
        return det.detection_id, cam.encode(), encode_crop(CropRecord(det, jpeg))

    def _where(self, seq: int) -> tuple[str, int]:
        return self.cameras[seq % len(self.cameras)], seq // len(self.cameras)
