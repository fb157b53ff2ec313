"""Crops per second of the re-ID extractors, parts and pixels included: `python -m reid.benchmark_extractors`.

Real crops (random 2:1 boxes from the PETS 2009 video) are resized and run in batches of --batch; each
extractor gets one untimed warm-up batch, then the median of --repeats passes over all crops is reported.
Rows: the default (PGR heads on the 0277 IR) and 0277's embedding alone (the peer), in each OpenVINO
inference precision of --precision, and every end-to-end torch PGR checkpoint given with --checkpoint.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pgr.machine import describe_machine
from pgr.paths import assets_dir
from pgr.settings import DEFAULT_OPENVINO_HEADS, DEFAULT_OPENVINO_REID
from reid.benchmark_pgr import random_crops
from reid.openvino_backbone import OpenVinoBackbone, int8_ir, native_bf16
from reid.openvino_pgr_extractor import OpenVinoPGRExtractor
from reid.pgr_extractor import PGRExtractor


def crops_per_second(
    run: Callable[[list[np.ndarray]], object], crops: list[np.ndarray], batch: int, repeats: int
):
    """Median crops/s of `run` over batches of `crops`, after one warm-up batch."""
    run(crops[:batch])
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for start in range(0, len(crops), batch):
            run(crops[start : start + batch])
        rates.append(len(crops) / (time.perf_counter() - t))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m reid.benchmark_extractors", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--crops", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--heads", type=Path, default=DEFAULT_OPENVINO_HEADS)
    ap.add_argument("--ir", type=Path, default=DEFAULT_OPENVINO_REID)
    ap.add_argument("--checkpoint", type=Path, action="append", default=[], help="end-to-end PGR checkpoints")
    ap.add_argument("--pixel-dim", type=int, default=64)
    ap.add_argument(
        "--precision",
        nargs="+",
        choices=["f32", "bf16", "int8"],
        help="OpenVINO inference precisions to measure (default: f32, int8 where its IR is present, and "
        "bf16 where the CPU has it)",
    )
    args = ap.parse_args(argv)
    crops = random_crops(assets_dir() / "video" / "pets2009_vtest.mp4", args.crops)
    machine = describe_machine()
    print(f"{machine}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{len(crops)} real crops, batch {args.batch}, median of {args.repeats} passes")
    rows: list[tuple[str, Callable]] = []
    if args.precision is None:
        import openvino as ov

        native = native_bf16(ov.Core())
        args.precision = (
            ["f32"] + (["int8"] if int8_ir(args.ir).is_file() else []) + (["bf16"] if native else [])
        )
    for precision in args.precision:
        if args.heads.exists():
            pgr = OpenVinoPGRExtractor(args.heads, args.ir, args.pixel_dim, args.batch, precision=precision)
            rows.append((f"PGR heads on 0277 (instance+parts+pixels), {precision}", pgr.extract))
        peer = OpenVinoBackbone(args.ir, batch=args.batch, precision=precision)
        rows.append((f"0277 embedding alone (peer), {precision}", peer.run))
    for ckpt in args.checkpoint:
        ex = PGRExtractor(
            None, checkpoint=ckpt, device="cpu", pixel_dim=args.pixel_dim, batch_size=args.batch
        )
        rows.append((f"{ex.name} (instance+parts+pixels)", ex.extract))
    for name, run in rows:
        print(f"{name:60s} {crops_per_second(run, crops, args.batch, args.repeats):7.1f} crops/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
