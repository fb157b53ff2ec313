"""Run an end-to-end torch PGR model with OpenVINO on the CPU: export once, then infer with the same
outputs as torch (X, psi's logits, the stored instance and part features).

    python -m reid.openvino_export reid/weights/pgr_mobilenetv2_market1501.pt var/ov/pgr_mobilenetv2.xml

`OpenVinoPGRModel` is called like a `PGRModel` on an image tensor and returns a `PGROutput` (labels,
visibility and foreground are recomputed from psi's probabilities by the same functions as in torch), so
`PGRExtractor(..., runtime="openvino")` stores the same features; `tests/test_openvino_export.py` checks that
they match torch's (cosine >= 0.999 on real crops).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pgr.model_files import require_model_file
from reid.pgr_model import PGRModel, PGROutput


class _Exportable(nn.Module):
    """The model's forward with plain tensor outputs: (X, logits, instance_out, parts_out)."""

    def __init__(self, model: PGRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        out = self.model(images)
        return out.features, out.logits, out.instance_out, out.parts_out


def export_openvino(model: PGRModel, xml: Path, input_size: tuple[int, int] = (256, 128)) -> Path:
    """Write the model (eval mode, float32, dynamic batch) as an OpenVINO IR at `xml` (+ .bin)."""
    import openvino as ov

    model = model.eval().float()
    example = torch.zeros(2, 3, *input_size)
    with torch.no_grad():
        converted = ov.convert_model(_Exportable(model), example_input=example, input=[(-1, 3, *input_size)])
    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
    ov.save_model(converted, str(tmp), compress_to_fp16=False)
    os.replace(
        tmp.with_suffix(".bin"), xml.with_suffix(".bin")
    )  # weights first: a reader finds the .xml last
    os.replace(tmp, xml)
    return xml


class OpenVinoPGRModel:
    """An exported PGR model compiled for the CPU; `__call__(images)` gives a `PGROutput` like torch."""

    def __init__(self, xml: Path, num_parts: int, threads: int = 0) -> None:
        import openvino as ov

        xml = require_model_file(xml, "exported PGR model (OpenVINO IR)")
        core = ov.Core()
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}  # not bf16, which CPUs may pick
        config.update({"PERFORMANCE_HINT": "LATENCY"} if threads == 0 else {"INFERENCE_NUM_THREADS": threads})
        self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.num_parts = num_parts

    def __call__(self, images: torch.Tensor) -> PGROutput:
        res = self.request.infer({0: np.ascontiguousarray(images.float().cpu().numpy())})
        x, logits, instance, parts = (torch.from_numpy(np.array(res[i])) for i in range(4))
        probs = logits.softmax(dim=1)
        # the exported graph gives the stored (necked) features only: they stand in for the raw ones too
        return PGROutput.assemble(x, logits, probs, probs[:, 1:].sum(dim=1), instance, parts, instance, parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reid.openvino_export", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("xml", type=Path)
    args = ap.parse_args(argv)
    print(export_openvino(PGRModel.load(args.checkpoint), args.xml))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
