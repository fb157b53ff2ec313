"""Resumable trainer for the PGR model (instance + part features, part classifier psi from pseudo labels).

    python -m training.train --config configs/train_cpu.yaml [--resume]

Per epoch: pseudo labels for psi are (re)computed at the start of epoch 0 and of every `pseudo_every`-th
epoch after it, from the model in eval mode (so psi is supervised from the first step: there is no
psi warm-up; the first labels come from the ImageNet features, whose norm already separates the person
from the background reasonably). Then PK batches with augmentation; losses:

    w_id * CE_ls(x_ins) + w_tri * triplet(x_ins)
    + w_part_id * mean_k CE_ls(p_k) + w_part_tri * mean_k triplet(p_k) + w_psi * CE(psi, pseudo labels)

CE goes through a BN-neck + linear classifier per feature (`TrainingHeads`, training only); the triplet
loss takes the raw pooled features (before the BN-neck), Euclidean, batch-hard, margin 0.3.

Every epoch ends with an atomic checkpoint `output_dir/last.pt`. Every random draw of an epoch (sampler,
augmentation, global torch / numpy / python RNGs) is derived from (seed, epoch), so a run stopped between
epochs and resumed with --resume ends bit-identical (on CPU) to an uninterrupted one. `best.pt` is an
inference checkpoint (`PGRModel.save`, loadable by `reid.pgr_extractor.PGRExtractor(checkpoint=...)`):
the best by mAP of progressive retrieval on query/gallery, or the last model when evaluation is off.

`init_from` starts a run from another run's `last.pt` (the model, and the heads unless `init_heads` is
false) with a fresh optimizer and schedule: a second stage on the same data, or another dataset.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pgr.files import write_atomically
from reid.backbones import OUTPUT_STRIDE
from reid.extractor import pick_device
from reid.pgr_model import PGRConfig, PGRModel, PGROutput
from training.datasets import ReidDataset, Sample, load_dataset
from training.losses import id_loss, triplet_loss
from training.pseudo_labels import compute_pseudo_labels
from training.sampler import pk_batches
from training.transforms import IGNORE, TrainTransform

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("PGR_ASSETS", REPO.parent / "shared" / "assets"))

DEFAULTS: dict[str, Any] = {
    "data_root": "data",
    "dataset": "market1501",
    "output_dir": "runs/pgr",
    "seed": 0,
    "device": "auto",
    "init_from": None,  # a training checkpoint (another run's last.pt) whose model starts this run
    "init_heads": True,  # and its BN-neck/classifier heads too (false when the identities differ)
    "model": {
        "backbone": "mobilenetv2",
        "weights": "mobilenetv2_imagenet_features.pt",  # under $PGR_ASSETS/weights unless absolute
        "num_parts": 5,
        "reduce_dim": None,
        "backbone_embedding": False,  # x_ins through the backbone's own embedding layer (OSNet's fc)
        "neck": False,  # BN-necks kept in the model and used at inference
        "freeze_backbone_stages": 0,  # the first N top-level children of the backbone
    },
    "input_size": [256, 128],
    "epochs": 20,
    "max_images_per_epoch": None,  # None: every training image about once per epoch
    "p": 8,
    "k": 4,
    "num_workers": 0,
    "pseudo_every": 4,
    "pseudo_batch": 64,
    "foreground_rule": "image",  # pseudo labels' foreground: image (per-image 2-means) or identity (ISP)
    "centre_prior": 0.0,  # 0: none; else how much the edge columns are damped before the 2-means
    "optim": {
        "lr": 3.5e-4,
        "weight_decay": 5e-4,
        "warmup_epochs": 2,  # linear from lr/10 over these epochs
        "schedule": "cosine",  # cosine (to lr * min_factor) or step (x gamma at each milestone epoch)
        "min_factor": 0.01,
        "milestones": [40, 70],
        "gamma": 0.1,
    },
    "loss": {
        "label_smoothing": 0.1,
        "margin": 0.3,
        "w_id": 1.0,
        "w_tri": 1.0,
        "w_part_id": 1.0,
        "w_part_tri": 1.0,
        "w_psi": 1.0,
    },
    "augment": {"flip_p": 0.5, "pad": 10, "erase_p": 0.5},
    "amp": "bf16",  # CUDA only: bf16, fp16 (with GradScaler) or none
    "eval": {"enabled": True, "every": 0, "batch": 64, "queries": 0, "pixel_dim": 64},
    "progress": True,
}


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """The defaults overridden by a dict or a YAML file."""
    if isinstance(config, str | Path):
        config = yaml.safe_load(Path(config).read_text()) or {}
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown training config keys: {sorted(unknown)}")
    return _merge(DEFAULTS, config)


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainingHeads(nn.Module):
    """Bias-free linear ID classifiers for x_ins and for each part feature (training only), behind BN-necks:
    the heads' own, or the model's when it keeps its necks for inference (`PGRConfig.neck`)."""

    def __init__(self, model: PGRModel, num_ids: int) -> None:
        super().__init__()
        dims = [model.instance_dim] + [model.dim] * model.config.num_parts
        self.necks: nn.ModuleList | None = None
        if model.necks is None:
            self.necks = nn.ModuleList(nn.BatchNorm1d(d) for d in dims)
            for neck in self.necks:
                neck.bias.requires_grad_(False)
        self.classifiers = nn.ModuleList(nn.Linear(d, num_ids, bias=False) for d in dims)
        for fc in self.classifiers:
            nn.init.normal_(fc.weight, std=0.001)

    def forward(self, out: PGROutput) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for x_ins (n, C) and for the parts (n, p, C) of a model output."""
        if self.necks is None:
            feats = [out.instance_out] + [out.parts_out[:, k] for k in range(out.parts_out.shape[1])]
        else:
            feats = [out.instance] + [out.parts[:, k] for k in range(out.parts.shape[1])]
            feats = [neck(f) for f, neck in zip(feats, self.necks, strict=True)]
        logits = [fc(f) for f, fc in zip(feats, self.classifiers, strict=True)]
        return logits[0], torch.stack(logits[1:], dim=1)


class EpochData(Dataset):
    """One epoch's sequence of training images; item i is augmented by a generator seeded (seed, epoch, i)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        order: Sequence[int],
        labels: np.ndarray,
        transform: TrainTransform,
        seed: int,
        epoch: int,
    ) -> None:
        self.samples, self.order, self.labels = samples, list(order), labels
        self.transform, self.seed, self.epoch = transform, seed, epoch

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        j = self.order[i]
        image = cv2.imread(str(self.samples[j].path))
        if image is None:
            raise FileNotFoundError(self.samples[j].path)
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch, 1_000_000 + i))
        x, lab = self.transform(image, self.labels[j], gen)
        return x, lab, self.samples[j].pid


def _weights_path(value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(os.path.expandvars(value))
    return path if path.is_absolute() else ASSETS / "weights" / path


def _frozen_modules(model: PGRModel, stages: int) -> list[nn.Module]:
    return list(model.backbone.children())[:stages]


def _lr_factor(cfg: Mapping[str, Any], epochs: int):
    warm = int(cfg["warmup_epochs"])

    def factor(epoch: int) -> float:
        if epoch < warm:
            return 0.1 + 0.9 * epoch / warm
        if cfg["schedule"] == "step":
            return float(cfg["gamma"]) ** sum(epoch >= m for m in cfg["milestones"])
        t = (epoch - warm) / max(1, epochs - warm)
        lo = float(cfg["min_factor"])
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def _save_atomic(obj: Any, path: Path) -> None:
    write_atomically(path, lambda tmp: torch.save(obj, tmp))


def evaluate(
    model: PGRModel, ds: ReidDataset, cfg: Mapping[str, Any], out_dir: Path, device: torch.device
) -> tuple[dict[str, float], Path]:
    """R1 / mAP of the instance ranking and of progressive retrieval; returns them and the saved model."""
    from reid.pgr_extractor import PGRExtractor
    from reid.retrieval import RetrievalParams, progressive_retrieval
    from training.evaluate_model import evaluate_result, extract

    path = out_dir / "eval_candidate.pt"
    model.save(path)
    ev = cfg["eval"]
    extractor = PGRExtractor(
        model.config.backbone,
        checkpoint=path,
        device=str(device),
        input_size=tuple(cfg["input_size"]),
        pixel_dim=ev["pixel_dim"],
        batch_size=int(ev["batch"]),
    )
    queries = ds.query[: ev["queries"]] if ev["queries"] else ds.query
    gallery = extract(extractor, ds.gallery, int(ev["batch"]), "gallery")
    query = extract(extractor, queries, int(ev["batch"]), "query")
    base = RetrievalParams()
    metrics: dict[str, float] = {}
    for name, params in (("I", replace(base, n1=1, n2=1)), ("PGR", base)):
        r = evaluate_result(progressive_retrieval(query, gallery, params), queries, ds.gallery)
        metrics[f"{name}_R1"], metrics[f"{name}_mAP"] = r.rank(1), r.mAP
    return metrics, path


def train(
    config: Mapping[str, Any] | str | Path, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Train (or resume) as configured; returns a summary with per-epoch losses and evaluations.

    `stop_after` ends the process-level run after that many epochs of this call (as if killed between
    epochs), leaving `last.pt` to resume from; the schedule still follows the configured `epochs`.
    """
    cfg = load_config(config)
    out_dir = Path(cfg["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    seed, epochs = int(cfg["seed"]), int(cfg["epochs"])
    device = pick_device(cfg["device"])
    _seed_everything(seed)
    ds = load_dataset(Path(cfg["data_root"]), cfg["dataset"])
    mcfg = cfg["model"]
    model = PGRModel(
        PGRConfig(
            mcfg["backbone"],
            int(mcfg["num_parts"]),
            mcfg["reduce_dim"],
            bool(mcfg["backbone_embedding"]),
            bool(mcfg["neck"]),
        ),
        _weights_path(mcfg["weights"]),
    ).to(device)
    num_parts = model.config.num_parts
    heads = TrainingHeads(model, ds.num_train_pids).to(device)
    frozen = _frozen_modules(model, int(mcfg["freeze_backbone_stages"]))
    for module in frozen:
        module.requires_grad_(False)
    params = [p for p in [*model.parameters(), *heads.parameters()] if p.requires_grad]
    ocfg = cfg["optim"]
    optimizer = torch.optim.Adam(params, lr=float(ocfg["lr"]), weight_decay=float(ocfg["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(ocfg, epochs))
    amp = cfg["amp"] if device.type == "cuda" else "none"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    height, width = (int(v) for v in cfg["input_size"])
    label_size = (math.ceil(height / OUTPUT_STRIDE), math.ceil(width / OUTPUT_STRIDE))
    aug = cfg["augment"]
    transform = TrainTransform(
        (height, width), label_size, flip_p=aug["flip_p"], pad=aug["pad"], erase_p=aug["erase_p"]
    )
    pids = [s.pid for s in ds.train]
    batch = int(cfg["p"]) * int(cfg["k"])
    max_batches = None if cfg["max_images_per_epoch"] is None else int(cfg["max_images_per_epoch"]) // batch
    lcfg = cfg["loss"]
    history: list[dict[str, Any]] = []
    labels: np.ndarray | None = None
    best = -1.0
    start = 0
    last = out_dir / "last.pt"
    if cfg["init_from"] and not resume:
        init = torch.load(Path(cfg["init_from"]), map_location="cpu", weights_only=False)  # our own file
        model.load_state_dict(init["model"])
        if cfg["init_heads"]:
            heads.load_state_dict(init["heads"])
    if resume:
        if not last.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last}")
        ck = torch.load(last, map_location="cpu", weights_only=False)  # our own file: RNG states inside
        model.load_state_dict(ck["model"])
        heads.load_state_dict(ck["heads"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        labels = ck["pseudo_labels"].numpy()
        start, best, history = ck["epoch"] + 1, ck["best"], ck["history"]
        random.setstate(ck["rng"]["python"])
        np.random.set_state(ck["rng"]["numpy"])
        torch.set_rng_state(ck["rng"]["torch"])
        if torch.cuda.is_available() and ck["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])

    stop = epochs if stop_after is None else min(epochs, start + stop_after)
    for epoch in range(start, stop):
        _seed_everything(_epoch_seed(seed, epoch, 0))
        if labels is None or epoch % int(cfg["pseudo_every"]) == 0:
            labels = compute_pseudo_labels(
                model,
                ds.train,
                (height, width),
                device,
                int(cfg["pseudo_batch"]),
                seed,
                cfg["progress"],
                cfg["foreground_rule"],
                float(cfg["centre_prior"]),
            )
        batches = pk_batches(pids, int(cfg["p"]), int(cfg["k"]), seed, epoch, max_batches)
        order = [i for b in batches for i in b]
        loader = DataLoader(
            EpochData(ds.train, order, labels, transform, seed, epoch),
            batch_sampler=[list(range(b * batch, (b + 1) * batch)) for b in range(len(batches))],
            num_workers=int(cfg["num_workers"]),
            pin_memory=device.type == "cuda",
        )
        model.train()
        heads.train()
        for module in frozen:
            module.eval()
        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not cfg["progress"])
        for images, part_labels, targets in bar:
            images, part_labels = images.to(device, non_blocking=True), part_labels.to(device)
            targets = targets.to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = model(images)
                ins_logits, part_logits = heads(out)
            ls, margin = float(lcfg["label_smoothing"]), float(lcfg["margin"])
            terms = {
                "id": id_loss(ins_logits, targets, ls),
                "tri": triplet_loss(out.instance, targets, margin),
                "part_id": torch.stack(
                    [id_loss(part_logits[:, k], targets, ls) for k in range(num_parts)]
                ).mean(),
                "part_tri": torch.stack(
                    [triplet_loss(out.parts[:, k], targets, margin) for k in range(num_parts)]
                ).mean(),
            }
            valid = part_labels != IGNORE
            psi_ce = F.cross_entropy(out.logits.float(), part_labels, ignore_index=IGNORE, reduction="sum")
            terms["psi"] = psi_ce / valid.sum().clamp_min(1)
            loss = sum(float(lcfg[f"w_{name}"]) * value for name, value in terms.items())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            for name, value in [("loss", loss), *terms.items()]:
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        record.update({name: total / max(1, len(batches)) for name, total in sums.items()})
        scheduler.step()
        ev = cfg["eval"]
        final = epoch + 1 == epochs
        if ev["enabled"] and (final or (ev["every"] and (epoch + 1) % int(ev["every"]) == 0)):
            metrics, candidate = evaluate(model, ds, cfg, out_dir, device)
            record.update(metrics)
            if metrics["PGR_mAP"] > best:
                best = metrics["PGR_mAP"]
                os.replace(candidate, out_dir / "best.pt")
            else:
                candidate.unlink()
        elif final and not ev["enabled"]:
            write_atomically(out_dir / "best.pt", model.save)
        history.append(record)
        print(json.dumps(record))
        _save_atomic(
            {
                "format": "pgr-train-v1",
                "config": cfg,
                "epoch": epoch,
                "model": model.state_dict(),
                "heads": heads.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "pseudo_labels": torch.from_numpy(labels),
                "best": best,
                "history": history,
                "rng": {
                    "python": random.getstate(),
                    "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                },
            },
            last,
        )
    return {"output_dir": str(out_dir), "best_mAP": best, "history": history}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--resume", action="store_true", help="continue from output_dir/last.pt")
    args = ap.parse_args(argv)
    summary = train(args.config, resume=args.resume)
    print(json.dumps({"best_mAP": summary["best_mAP"], "output_dir": summary["output_dir"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
