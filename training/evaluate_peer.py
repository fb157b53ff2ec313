"""Evaluate a peer re-ID model (not PGR) by the same protocol: Intel's OpenVINO person-reidentification-retail
models (one embedding per crop, cosine ranking). A labelled reference row, not an ImageNet-initialised
result of this project: Intel does not publish what it was trained on.

    python -m training.evaluate_peer --dataset market1501 [--model DIR_OR_XML] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from pgr.machine import describe_machine
from pgr.model_files import require_model_file
from pgr.paths import REPO, asset_weights_dir
from training.datasets import Sample, load_dataset
from training.evaluate import evaluate_samples

PEER = "person-reidentification-retail-0277"


class OpenVinoReid:
    """An OpenVINO re-ID IR taking BGR 0-255 crops (B, 3, H, W) and giving one embedding per crop."""

    def __init__(self, xml: Path, batch: int = 32) -> None:
        import openvino as ov

        xml = require_model_file(xml, "OpenVINO re-ID model")
        core = ov.Core()
        model = core.read_model(str(xml))
        _, _, self.height, self.width = model.inputs[0].partial_shape.to_shape()
        model.reshape({model.inputs[0].any_name: [batch, 3, self.height, self.width]})
        self.compiled = core.compile_model(model, "CPU")
        self.batch = batch
        self.name = xml.stem

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """(n, d) L2-normalised embeddings of BGR uint8 crops of any size."""
        out = []
        for start in range(0, len(crops), self.batch):
            chunk = crops[start : start + self.batch]
            x = np.zeros((self.batch, 3, self.height, self.width), dtype=np.float32)
            for i, crop in enumerate(chunk):
                x[i] = cv2.resize(crop, (self.width, self.height)).transpose(2, 0, 1)
            out.append(self.compiled(x)[0][: len(chunk)])
        emb = np.concatenate(out).astype(np.float32)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)


def embed_samples(model: OpenVinoReid, samples: list[Sample], what: str) -> np.ndarray:
    chunks = []
    for start in tqdm(range(0, len(samples), model.batch), desc=f"features: {what}", unit="batch"):
        chunks.append(model.embed([cv2.imread(str(s.path)) for s in samples[start : start + model.batch]]))
    return np.concatenate(chunks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate_peer", description=__doc__)
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--dataset", default="market1501")
    ap.add_argument("--model", type=Path, default=asset_weights_dir() / PEER / f"{PEER}.xml")
    ap.add_argument("--queries", type=int, default=0, help="evaluate only the first N queries (0: all)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    ds = load_dataset(args.data, args.dataset)
    print(ds.summary())
    queries = ds.query[: args.queries] if args.queries else ds.query
    model = OpenVinoReid(args.model)
    t = time.perf_counter()
    gallery = embed_samples(model, ds.gallery, "gallery")
    query = embed_samples(model, queries, "query")
    per_image_ms = 1000 * (time.perf_counter() - t) / (len(ds.gallery) + len(queries))
    r = evaluate_samples(-(query @ gallery.T), queries, ds.gallery)
    print(f"{model.name} on {args.dataset}: {r}  ({per_image_ms:.1f} ms/image to embed)")
    report = {
        "dataset": args.dataset,
        "model": model.name,
        "queries": len(queries),
        "gallery": len(ds.gallery),
        **r.row(),
        "ms_per_image": per_image_ms,
        "machine": describe_machine(),
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
