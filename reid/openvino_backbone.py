"""A frozen OpenVINO re-ID network as a PGR backbone: one inference gives the feature map X and the
network's own embedding.

Intel's person-reidentification-retail-0277 (Apache-2.0) pools its last 16 x 8 x 512 map (op "1126", the
ReLU before a learned depthwise 16 x 8 pooling) into a 256-d embedding. The map is added as a second output
of the read model, so X costs nothing extra. The IR takes BGR 0-255 crops of 256 x 128, NCHW.

>>> net = OpenVinoBackbone(Path("person-reidentification-retail-0277.xml"))  # doctest: +SKIP
>>> maps, emb = net.run([crop])  # doctest: +SKIP
>>> maps.shape, emb.shape  # doctest: +SKIP
((1, 512, 16, 8), (1, 256))
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pgr.model_files import require_model_file

MAP_OUTPUT_0277 = "1126"


PRECISIONS = ("auto", "f32", "bf16", "int8")
INT8_SUFFIX = "-int8"  # an IR's int8 copy: `<stem>-int8/<stem>-int8.xml` beside its folder


def native_bf16(core) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def int8_ir(xml: Path) -> Path:
    """Where the int8 IR of `xml` lies: `<stem>-int8/<stem>-int8.xml` beside `xml`'s folder, as
    training/quantize_openvino.py writes it (`xml` itself when it is one)."""
    if xml.stem.endswith(INT8_SUFFIX):
        return xml
    return xml.parent.parent / f"{xml.stem}{INT8_SUFFIX}" / f"{xml.stem}{INT8_SUFFIX}.xml"


def inference_precision(core, wanted: str, int8_ir_present: bool = False) -> str:
    """The inference precision for `wanted`: "f32"; "bf16" (about twice the crops/s of f32 where the CPU
    computes bf16 natively: AVX512-BF16 or AMX); "int8" (the IR quantized by training/quantize_openvino.py:
    about twice f32's crops/s on a CPU with AVX2 only; RESULTS.md has the accuracy of each); "auto": bf16
    where the CPU has it natively, else int8 where its IR is present, else f32. A CPU without bf16 is
    refused for "bf16" with the reason."""
    if wanted not in PRECISIONS:
        raise ValueError(f"inference precision {wanted!r}: expected one of {', '.join(PRECISIONS)}")
    native = native_bf16(core)
    if wanted == "bf16" and not native:
        raise ValueError("inference precision bf16: this CPU has no native bf16 (AVX512-BF16, AMX); use f32")
    if wanted == "auto":
        return "bf16" if native else "int8" if int8_ir_present else "f32"
    if wanted == "int8" and not int8_ir_present:
        raise ValueError("inference precision int8: no int8 IR (python -m training.quantize_openvino)")
    return wanted


def read_with_map_output(core, xml: Path, map_output: str = MAP_OUTPUT_0277):
    """The IR as an openvino.Model with the map op's output added after its own and a dynamic batch;
    returns (model, map op, input height, input width). An unreadable IR or a missing op is a ValueError."""
    try:
        model = core.read_model(str(xml))
    except RuntimeError as exc:
        raise ValueError(f"{xml}: not a readable OpenVINO IR ({str(exc).splitlines()[0]})") from None
    ops = {op.get_friendly_name(): op for op in model.get_ops()}
    if map_output not in ops:
        raise ValueError(f"{xml}: no op named {map_output!r} to take the feature map from")
    model.add_outputs([ops[map_output].output(0)])
    shape = model.inputs[0].partial_shape  # the batch may already be dynamic (a saved int8 IR)
    height, width = shape[2].get_length(), shape[3].get_length()
    model.reshape({model.inputs[0].any_name: [-1, 3, height, width]})
    return model, ops[map_output], height, width


def ir_input(crops: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """BGR uint8 crops of any size -> (n, 3, height, width) float32 BGR 0-255, as the IR expects."""
    x = np.empty((len(crops), 3, height, width), dtype=np.float32)
    for i, crop in enumerate(crops):
        x[i] = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    return x


class OpenVinoBackbone:
    """Runs an OpenVINO re-ID IR on BGR crops; returns (X (n, c, h, w), embedding (n, e)) as float32.
    `precision`: see `inference_precision` (the services take `reid.precision`); "int8" reads the IR's
    int8 sibling (`int8_ir`) instead of `xml`."""

    def __init__(
        self,
        xml: Path,
        map_output: str = MAP_OUTPUT_0277,
        batch: int = 32,
        threads: int = 0,
        precision: str = "auto",
    ):
        import openvino as ov

        xml = require_model_file(xml, "OpenVINO re-ID model")
        if xml.is_dir():
            candidates = sorted(xml.glob("*.xml"))
            if len(candidates) != 1:
                raise FileNotFoundError(f"{xml}: expected one .xml IR in the folder, found {len(candidates)}")
            xml = candidates[0]
        core = ov.Core()
        if int8_ir(xml) == xml:
            precision = "int8"  # given the int8 IR itself
        self.precision = inference_precision(core, precision, int8_ir(xml).is_file())
        if self.precision == "int8":
            xml = int8_ir(xml)
        if not xml.with_suffix(".bin").is_file():
            raise FileNotFoundError(
                f"{xml}: its weights {xml.with_suffix('.bin').name} are missing beside it"
            )
        model, map_op, self.height, self.width = read_with_map_output(core, xml, map_output)
        # LATENCY: one synchronous request uses every core (THROUGHPUT splits the cores into streams that
        # only parallel requests fill: 81 instead of 143 crops/s measured on 2 cores)
        config = {"PERFORMANCE_HINT": "LATENCY"} if threads == 0 else {"INFERENCE_NUM_THREADS": threads}
        # int8: the quantized ops run in int8, the others (poolings, the embedding's head) in this
        config["INFERENCE_PRECISION_HINT"] = (
            self.precision if self.precision != "int8" else "bf16" if native_bf16(core) else "f32"
        )
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.batch = batch
        # an int8 IR (training/quantize_openvino.py) is the same network: its features mix with f32's
        # and bf16's (cosine >= 0.95 per crop, RESULTS.md) and the heads trained on it apply
        self.name = xml.stem.removesuffix(INT8_SUFFIX)
        self.embedding_dim = int(model.outputs[0].partial_shape[1].get_length())
        self.channels = int(map_op.output(0).get_partial_shape()[1].get_length())

    def preprocess(self, crops: list[np.ndarray]) -> np.ndarray:
        """BGR uint8 crops of any size -> (n, 3, H, W) float32 BGR 0-255, as the IR expects."""
        return ir_input(crops, self.height, self.width)

    def run_tensor(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(X, embedding) of a preprocessed batch (n, 3, H, W)."""
        maps, embs = [], []
        for start in range(0, len(x), self.batch):
            out = self.request.infer({0: x[start : start + self.batch]})
            embs.append(np.asarray(out[0]).reshape(len(x[start : start + self.batch]), -1))
            maps.append(np.asarray(out[1]))
        return np.concatenate(maps).astype(np.float32), np.concatenate(embs).astype(np.float32)

    def run(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(X (n, c, 16, 8), embedding (n, e)) for BGR uint8 crops."""
        if not crops:
            return (
                np.zeros((0, self.channels, self.height // 16, self.width // 16), np.float32),
                np.zeros((0, self.embedding_dim), np.float32),
            )
        return self.run_tensor(self.preprocess(crops))
