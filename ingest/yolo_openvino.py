"""A YOLO detection IR (an ultralytics OpenVINO export) run straight on OpenVINO: any input size, any batch.

An export without `dynamic=True` (the shared `yolo11n_int8_openvino_model`, 640 x 640, batch 1) bakes its
input size into a few reshapes of the attention block (C2PSA) and into the anchors of the box decoder, so
OpenVINO cannot reshape it, and ultralytics runs it one 640 x 640 frame at a time. `open_yolo_ir` cuts the
graph at the detection head's three per-level maps (box distributions and class logits, strides 8, 16, 32),
makes those reshapes follow the input's shape, and gives the batch a free size; the box decoding (DFL,
anchors) runs here in numpy for the input size at hand, on the few cells whose person score passes `conf`.
The weights are untouched: at 640 x 640 the boxes are ultralytics' own (tests/test_detector.py).

>>> yolo = OpenVinoYolo(Path("yolo11n_int8_openvino_model"), imgsz=416)  # doctest: +SKIP
>>> boxes = yolo.detect([frame_a, frame_b])  # doctest: +SKIP
>>> boxes[0].xyxy.shape, boxes[0].conf.shape  # doctest: +SKIP
((5, 4), (5,))
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REG_MAX = 16  # DFL bins per box side (every YOLOv8/11 detect head)
PAD_VALUE = 114  # ultralytics' letterbox grey
STRIDE = 32


@dataclass(frozen=True)
class Boxes:
    """Person boxes of one image: xyxy (n, 4) in image pixels and conf (n,), best first. Duck-types the
    `conf` / `cls` / `xywh` view that ultralytics' trackers read (`ingest.tracking`)."""

    xyxy: np.ndarray
    conf: np.ndarray

    def __post_init__(self) -> None:
        if self.xyxy.shape != (len(self.conf), 4):
            raise ValueError(f"boxes {self.xyxy.shape} do not match {len(self.conf)} scores")

    @staticmethod
    def empty() -> Boxes:
        return Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index) -> Boxes:
        return Boxes(self.xyxy[index].reshape(-1, 4), self.conf[index].reshape(-1))

    @property
    def cls(self) -> np.ndarray:
        return np.zeros(len(self), np.float32)

    @property
    def xywh(self) -> np.ndarray:
        xy, wh = (self.xyxy[:, :2] + self.xyxy[:, 2:]) / 2, self.xyxy[:, 2:] - self.xyxy[:, :2]
        return np.concatenate([xy, wh], axis=1)


def input_shape(height: int, width: int, imgsz: int, square: bool) -> tuple[int, int]:
    """The network input (h, w) for a frame: imgsz x imgsz when `square`, else the frame scaled so that its
    long side is imgsz, each side padded up to a multiple of 32 (640 x 480 for a 4:3 frame at 640)."""
    if square:
        return imgsz, imgsz
    r = imgsz / max(height, width)
    return (
        max(STRIDE, math.ceil(round(height * r) / STRIDE) * STRIDE),
        max(STRIDE, math.ceil(round(width * r) / STRIDE) * STRIDE),
    )


def letterbox(image: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Scale `image` into `shape` (h, w) keeping its aspect, centred on grey: (canvas, gain, (left, top)),
    as ultralytics' LetterBox does."""
    h0, w0 = image.shape[:2]
    r = min(shape[0] / h0, shape[1] / w0)
    new_w, new_h = round(w0 * r), round(h0 * r)
    dw, dh = (shape[1] - new_w) / 2, (shape[0] - new_h) / 2
    if (new_w, new_h) != (w0, h0):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    canvas = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return canvas, r, (left, top)


def open_yolo_ir(xml: Path):
    """The IR as an OpenVINO model whose outputs are the head's per-level maps (n, 4*16 + classes, h, w),
    strides ascending, with a free batch and input size. Returns (model, strides at the export's size)."""
    import openvino as ov
    import openvino.opset13 as ops

    model = ov.Core().read_model(str(xml))
    param = model.get_parameters()[0]
    _, _, h0, w0 = (int(d) for d in param.get_partial_shape().to_shape())
    levels = _head_levels(model)
    strides = [h0 // int(lv.get_partial_shape()[2].get_length()) for lv in levels]
    cut = ov.Model([lv for lv in levels], [param], "yolo_head_levels")
    shape = ops.shape_of(param, "i64")
    for op in cut.get_ordered_ops():
        if op.get_type_name() != "Reshape":
            continue
        target_node = op.input(1).get_source_output().get_node()
        if target_node.get_type_name() != "Constant":
            continue
        target = [int(v) for v in np.atleast_1d(target_node.get_data())]
        new = _follow_input(target, h0, w0, shape, ops)
        if new is not None:
            op.input(1).replace_source_output(new.output(0))
            op.set_special_zero(True)
    cut.reshape({param.get_output_tensor(0).get_any_name(): [-1, 3, -1, -1]})
    cut.validate_nodes_and_infer_types()
    return cut, strides


def _head_levels(model) -> list:
    """The outputs (n, c, h, w) that the head flattens and concatenates into (n, c, cells)."""
    out = model.get_results()[0].get_output_partial_shape(0)
    if out.rank.get_length() != 3:
        raise ValueError("not an ultralytics YOLO detection IR: its output is not (n, 4 + classes, cells)")
    total = int(out[2].get_length())
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Concat" or op.get_output_partial_shape(0).rank.get_length() != 3:
            continue
        if int(op.get_output_partial_shape(0)[2].get_length()) != total or op.get_input_size() < 2:
            continue
        sources = [op.input(i).get_source_output().get_node() for i in range(op.get_input_size())]
        if all(s.get_type_name() == "Reshape" for s in sources):
            levels = [s.input(0).get_source_output() for s in sources]
            return sorted(levels, key=lambda o: -int(o.get_partial_shape()[2].get_length()))
    raise ValueError("not an ultralytics YOLO detection IR: no per-level head outputs found")


def _follow_input(target: list[int], h0: int, w0: int, shape, ops):
    """A shape node replacing a constant reshape target that holds the export's batch or spatial size, or
    None when the target holds neither. (n, c, h, w) targets take h and w from the input's size over the
    same stride; (n, ..., h*w) targets end in -1; a leading 1 (the batch) becomes 0: copy the input's."""
    if not target or target[0] != 1:
        return None
    for s in (8, 16, 32):
        h, w = h0 // s, w0 // s
        if len(target) == 4 and target[2:] == [h, w]:
            n = ops.gather(shape, ops.constant([0], np.int64), ops.constant(0, np.int64))
            hw = ops.divide(
                ops.gather(shape, ops.constant([2, 3], np.int64), ops.constant(0, np.int64)),
                ops.constant(s, np.int64),
            )
            return ops.concat([n, ops.constant([target[1]], np.int64), hw], 0)
        if target[-1] == h * w and -1 not in target:
            return ops.constant([0, *target[1:-1], -1], np.int64)
    return ops.constant([0, *target[1:]], np.int64)


class OpenVinoYolo:
    """Person detection with a YOLO detection IR at `imgsz` (long side), frames of any size, in batches.

    `square` letterboxes every frame into imgsz x imgsz, as ultralytics does with a fixed-size export;
    otherwise the frame keeps its aspect (less padding, less work, the same scale). One compiled model per
    input shape; a batch of frames of different shapes runs as one inference per shape. OpenVINO picks the
    CPU's inference precision (bf16 where the CPU has it, as under ultralytics) unless `precision` says.
    """

    def __init__(
        self,
        weights: Path,
        imgsz: int = 640,
        conf: float = 0.4,
        iou: float = 0.7,
        square: bool = False,
        threads: int = 0,
        max_det: int = 300,
        precision: str | None = None,
    ) -> None:
        import openvino as ov

        xml = _ir_file(weights)
        if imgsz % STRIDE:
            raise ValueError(f"detector input size {imgsz} is not a multiple of {STRIDE}")
        self.model, self.strides = open_yolo_ir(xml)
        channels = int(self.model.outputs[0].get_partial_shape()[1].get_length())
        self.classes = channels - 4 * REG_MAX
        self.imgsz, self.conf, self.iou, self.square, self.max_det = imgsz, conf, iou, square, max_det
        # a person score above conf is a logit above logit(conf)
        bounded = min(max(conf, 1e-9), 1 - 1e-9)
        self.logit_conf = math.log(bounded / (1 - bounded))
        self.core = ov.Core()
        # LATENCY: one request uses every core (the whole batch of cameras in one inference)
        self.config = {"PERFORMANCE_HINT": "LATENCY"} if threads == 0 else {"INFERENCE_NUM_THREADS": threads}
        if precision is not None:  # e.g. "f32" where the CPU would run bf16 (exact comparisons)
            self.config["INFERENCE_PRECISION_HINT"] = precision
        self._compiled: dict[tuple[int, int], object] = {}
        self._lock = threading.Lock()
        self.name = xml.parent.name if xml.parent.name.endswith("_openvino_model") else xml.stem

    def _request(self, shape: tuple[int, int]):
        with self._lock:
            if shape not in self._compiled:
                model = self.model.clone()
                model.reshape({model.inputs[0].get_any_name(): [-1, 3, *shape]})
                compiled = self.core.compile_model(model, "CPU", self.config)
                self._compiled[shape] = compiled.create_infer_request()
            return self._compiled[shape]

    def detect(self, images: list[np.ndarray]) -> list[Boxes]:
        """Person boxes for each BGR frame (one inference per input shape among them)."""
        out: list[Boxes | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            shape = input_shape(image.shape[0], image.shape[1], self.imgsz, self.square)
            groups.setdefault(shape, []).append(i)
        for shape, members in groups.items():
            batch = np.empty((len(members), 3, *shape), np.float32)
            placements = []
            for j, i in enumerate(members):
                canvas, gain, pad = letterbox(images[i], shape)
                batch[j] = canvas[:, :, ::-1].transpose(2, 0, 1)
                placements.append((gain, pad))
            batch *= 1 / 255
            request = self._request(shape)
            request.infer({0: batch})
            levels = [np.asarray(request.get_output_tensor(k).data) for k in range(len(self.strides))]
            for j, i in enumerate(members):
                gain, (left, top) = placements[j]
                boxes = self._decode([lv[j] for lv in levels])
                if len(boxes):
                    xyxy = boxes.xyxy.copy()
                    xyxy[:, [0, 2]] -= left
                    xyxy[:, [1, 3]] -= top
                    xyxy /= gain
                    h, w = images[i].shape[:2]
                    xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
                    xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
                    boxes = Boxes(xyxy, boxes.conf)
                out[i] = boxes
        return [b if b is not None else Boxes.empty() for b in out]

    def _decode(self, levels: list[np.ndarray]) -> Boxes:
        """Person boxes (input pixels) of one image's level maps (c, h, w): cells whose best class is the
        person and whose score passes conf, DFL-decoded, then non-maximum suppression."""
        all_boxes, all_conf = [], []
        for lv, stride in zip(levels, self.strides, strict=True):
            c, h, w = lv.shape
            flat = lv.reshape(c, h * w)
            person = flat[4 * REG_MAX]
            cells = np.flatnonzero(person > self.logit_conf)
            if len(cells) == 0:
                continue
            logits = flat[4 * REG_MAX :, cells]
            cells = cells[logits.argmax(axis=0) == 0]  # the person must be the cell's best class
            if len(cells) == 0:
                continue
            dist = flat[: 4 * REG_MAX, cells].reshape(4, REG_MAX, -1)
            dist = np.exp(dist - dist.max(axis=1, keepdims=True))
            dist = (dist * np.arange(REG_MAX, dtype=np.float32)[None, :, None]).sum(1) / dist.sum(1)
            ax, ay = cells % w + 0.5, cells // w + 0.5
            xyxy = np.stack([ax - dist[0], ay - dist[1], ax + dist[2], ay + dist[3]], axis=1) * stride
            all_boxes.append(xyxy)
            all_conf.append(1 / (1 + np.exp(-person[cells])))
        if not all_boxes:
            return Boxes.empty()
        xyxy = np.concatenate(all_boxes).astype(np.float32)
        conf = np.concatenate(all_conf).astype(np.float32)
        keep = nms(xyxy, conf, self.iou)[: self.max_det]
        return Boxes(xyxy[keep], conf[keep])


def nms(xyxy: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (IoU above `iou` suppressed), best score first."""
    import torch
    import torchvision

    return torchvision.ops.nms(torch.from_numpy(xyxy), torch.from_numpy(scores), iou).numpy()


def _ir_file(weights: Path) -> Path:
    """The .xml of an OpenVINO export folder (or the .xml itself)."""
    weights = Path(weights)
    if weights.is_dir():
        xmls = sorted(weights.glob("*.xml"))
        if len(xmls) != 1:
            raise ValueError(f"{weights}: expected one .xml IR in the folder, found {len(xmls)}")
        return xmls[0]
    return weights


def is_openvino_ir(weights: Path) -> bool:
    """An OpenVINO export folder or .xml (else: a format ultralytics loads, e.g. a .pt)."""
    weights = Path(weights)
    return weights.suffix == ".xml" or (weights.is_dir() and any(weights.glob("*.xml")))
