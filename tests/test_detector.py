"""The person detector run straight on OpenVINO: the cut graph gives the export's own boxes, other input
sizes and batches of several cameras work, and an IR that is not a YOLO detector is refused."""

from __future__ import annotations

import cv2
import numpy as np
import openvino as ov
import pytest

from ingest.yolo_openvino import OpenVinoYolo, input_shape, letterbox, nms


@pytest.fixture(scope="module")
def yolo_dir(assets_dir):
    return assets_dir / "weights" / "yolo11n_int8_openvino_model"


@pytest.fixture(scope="module")
def frames(assets_dir) -> list[np.ndarray]:
    """Two PETS frames (480 x 360) and two of Intel's corridor (768 x 432), with persons in them."""
    out = []
    for name, at in (("pets2009_vtest.mp4", (0, 40)), ("intel_one_by_one_person.mp4", (300, 360))):
        cap = cv2.VideoCapture(str(assets_dir / "video" / name))
        for index in range(max(at) + 1):
            ok, frame = cap.read()
            assert ok
            if index in at:
                out.append(frame)
        cap.release()
    return out


def exported_boxes(yolo_dir, image: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes from the export's whole graph (its own decoder, 640 x 640, f32), NMS as ultralytics."""
    core = ov.Core()
    xml = next(yolo_dir.glob("*.xml"))
    full = core.compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    canvas, gain, (left, top) = letterbox(image, (640, 640))
    x = (canvas[:, :, ::-1].transpose(2, 0, 1)[None] / 255).astype(np.float32)
    out = full({0: x})[0][0]  # (4 + classes, cells): xywh, class scores
    scores = out[4:]
    keep = (scores.max(0) > conf) & (scores.argmax(0) == 0)
    xywh, score = out[:4, keep].T, scores[0, keep]
    xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    kept = nms(xyxy.astype(np.float32), score.astype(np.float32), 0.7)
    xyxy, score = xyxy[kept], score[kept]
    xyxy[:, [0, 2]] = (xyxy[:, [0, 2]] - left) / gain
    xyxy[:, [1, 3]] = (xyxy[:, [1, 3]] - top) / gain
    return xyxy, np.sort(score)[::-1]


def test_the_cut_graph_gives_the_exports_own_boxes(yolo_dir, frames):
    """At the export's size, in f32, the head maps decoded here equal the export's own decoder's output."""
    detector = OpenVinoYolo(yolo_dir, 640, conf=0.4, square=True, precision="f32")
    found = detector.detect(frames)
    assert sum(len(b) for b in found) >= 4, "persons are detected in these frames"
    for image, boxes in zip(frames, found, strict=True):
        ref, ref_scores = exported_boxes(yolo_dir, image, 0.4)
        h, w = image.shape[:2]
        ref[:, [0, 2]] = ref[:, [0, 2]].clip(0, w)
        ref[:, [1, 3]] = ref[:, [1, 3]].clip(0, h)
        assert len(boxes) == len(ref)
        np.testing.assert_allclose(np.sort(boxes.conf)[::-1], ref_scores, atol=1e-4)
        for box in boxes.xyxy:  # the same set of boxes (order may differ between equal scores)
            assert np.abs(ref - box).max(axis=1).min() < 0.05


def test_any_size_and_a_batch_of_cameras(yolo_dir, frames):
    """Other input sizes run (the export is fixed at 640 x 640); a batch of frames of two cameras of
    different sizes gives what each frame gives alone; every box lies in its frame."""
    detector = OpenVinoYolo(yolo_dir, 416, conf=0.4, square=False, precision="f32")
    batch = detector.detect(frames)
    alone = [detector.detect([f])[0] for f in frames]
    assert sum(len(b) for b in batch) >= 3
    for image, b, a in zip(frames, batch, alone, strict=True):
        np.testing.assert_allclose(b.xyxy, a.xyxy, atol=0.05)
        h, w = image.shape[:2]
        assert (b.xyxy >= 0).all() and (b.xyxy[:, [0, 2]] <= w).all() and (b.xyxy[:, [1, 3]] <= h).all()
        assert (b.conf >= 0.4).all()
    assert set(detector._compiled) == {(320, 416), (256, 416)}  # one per input shape: 4:3 and 16:9


def test_input_shapes():
    assert input_shape(360, 480, 640, square=False) == (480, 640)
    assert input_shape(432, 768, 640, square=False) == (384, 640)
    assert input_shape(432, 768, 320, square=False) == (192, 320)
    assert input_shape(360, 480, 416, square=True) == (416, 416)


def test_an_ir_that_is_not_a_yolo_detector_is_refused(tmp_path):
    from pgr.settings import DEFAULT_OPENVINO_REID

    with pytest.raises(ValueError, match="not an ultralytics YOLO detection IR"):
        OpenVinoYolo(DEFAULT_OPENVINO_REID, 640)
    with pytest.raises(ValueError, match="multiple of 32"):
        OpenVinoYolo(DEFAULT_OPENVINO_REID, 500)
