"""Export a trained PGR checkpoint for shipping: weights stored as float16 (half the size; they load back
into the float32 model), with a note of where they came from.

    python -m training.export runs/pgr_mobilenetv2_cpu/best.pt reid/weights/pgr_mobilenetv2_market1501.pt \
        --note "trained with configs/train_cpu.yaml, see RESULTS.md"
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from pgr.files import write_atomically
from reid.pgr_model import CHECKPOINT_FORMAT, PGRModel


def export(source: Path, target: Path, note: str = "") -> Path:
    """Write `source`'s model to `target` with float16 floating-point tensors (integer buffers kept)."""
    model = PGRModel.load(source)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = {"format": CHECKPOINT_FORMAT, "config": asdict(model.config), "state_dict": state, "note": note}
    return write_atomically(target, lambda tmp: torch.save(ckpt, tmp))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.export", description=__doc__)
    ap.add_argument("source", type=Path)
    ap.add_argument("target", type=Path)
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    path = export(args.source, args.target, args.note)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
