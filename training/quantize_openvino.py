"""Quantize the OpenVINO re-ID IR to int8 (NNCF post-training quantization), for CPUs without native bf16.

On a CPU with AVX2 only (no AVX512-BF16, no AMX) 0277 runs in f32 at about a quarter of the bf16 speed of
a CPU that has it; int8 roughly doubles f32 there (RESULTS.md, "Inference precision"). The quantized IR
keeps both outputs, the embedding and the feature map X (op "1126"), so the PGR heads read it unchanged.

Calibration: `--images` crops of the TRAINING split of `--dataset`, every k-th in file order (fixed, so a
rerun gives the same IR). Nothing of a test split is read.

    python -m training.quantize_openvino --dataset market1501 \\
        --out reid/weights/person-reidentification-retail-0277-int8

Needs NNCF (`pip install nncf`), only here: the services read the saved IR with OpenVINO alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from pgr.paths import REPO
from pgr.settings import DEFAULT_OPENVINO_REID
from reid.openvino_backbone import INT8_SUFFIX, MAP_OUTPUT_0277, ir_input, read_with_map_output
from training.datasets import load_dataset


def calibration_crops(data: Path, dataset: str, images: int) -> list[Path]:
    """`images` training crops of `dataset`, spread evenly over the split in file order."""
    train = sorted(s.path for s in load_dataset(data, dataset).train)
    if not train:
        raise ValueError(f"{dataset}: no training images under {data}")
    step = max(1, len(train) // images)
    return train[::step][:images]


def quantize(ir: Path, crops: list[Path], map_output: str = MAP_OUTPUT_0277):
    """The IR, its map output added, quantized to int8 on `crops` (an openvino.Model)."""
    try:
        import nncf
    except ImportError:
        raise SystemExit("quantizing needs NNCF: pip install nncf") from None
    import openvino as ov

    model, _, height, width = read_with_map_output(ov.Core(), ir, map_output)

    def tensor(path: Path) -> np.ndarray:  # the backbone's input for one crop
        image = cv2.imread(str(path))
        if image is None:
            raise FileNotFoundError(f"cannot read {path}")
        return ir_input([image], height, width)

    return nncf.quantize(
        model,
        nncf.Dataset(crops, tensor),
        subset_size=len(crops),
        preset=nncf.QuantizationPreset.PERFORMANCE,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--dataset", default="market1501", help="whose TRAINING split calibrates")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--ir", type=Path, default=DEFAULT_OPENVINO_REID)
    ap.add_argument("--out", type=Path, required=True, help="folder for the int8 IR")
    args = ap.parse_args(argv)
    import nncf
    import openvino as ov

    crops = calibration_crops(args.data, args.dataset, args.images)
    t0 = time.perf_counter()
    model = quantize(args.ir, crops)
    args.out.mkdir(parents=True, exist_ok=True)
    xml = args.out / f"{args.ir.stem}{INT8_SUFFIX}.xml"
    ov.save_model(model, str(xml))
    for extra in ("LICENSE",):  # the weights stay Intel's (Apache-2.0)
        if (args.ir.parent / extra).is_file():
            shutil.copy(args.ir.parent / extra, args.out / extra)
    provenance = {
        "source_ir": args.ir.name,
        "map_output": MAP_OUTPUT_0277,
        "calibration": f"{len(crops)} crops of the {args.dataset} training split, evenly spaced by name",
        "preset": "performance (symmetric int8 weights and activations)",
        "nncf": nncf.__version__,
        "openvino": ov.get_version(),
    }
    (args.out / "quantization.json").write_text(json.dumps(provenance, indent=1) + "\n")
    print(f"{xml}: quantized on {len(crops)} crops in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
