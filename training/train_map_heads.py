"""Train PGR heads (reduction, psi, BN-necks; `reid.map_heads`) on a frozen backbone's cached maps.

    python -m training.map_cache --dataset market1501 --out var/maps/market1501        (once, ~10 min)
    python -m training.train_map_heads --config configs/heads_0277_market1501.yaml

Pseudo labels are computed once (the backbone never changes): per identity, ISP's foreground over the
cleaned maps (artifact cells zeroed), then K-means into p parts ordered top to bottom; mirrored rows get
the mirrored labels. Each step draws PK batches, picks the plain or mirrored map of every image at random,
and erases a random block of cells (its labels ignored), the map-level stand-ins for flip and random
erasing. Losses are the end-to-end trainer's (`training.losses.pgr_loss_terms`): CE + triplet on the pooled
instance feature and on every part, CE for psi.

With `val_ids` > 0 the last `val_ids` training identities are held out as a validation split (query: one
image per identity and camera, gallery: the rest), and the run reports I / I+P / I+P+Px there for a grid of
retrieval settings: hyper-parameters are chosen on it, never on a test split. The checkpoint is written
atomically to `output` after the last epoch.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from itertools import product
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pgr.files import write_atomically
from pgr.settings import StrictModel, read_config, validate_config
from reid.map_heads import MapHeads, MapHeadsConfig
from reid.openvino_pgr_extractor import features_of_maps
from reid.pixel_projection import pixel_projection
from reid.retrieval import GalleryFeatures, RetrievalParams, progressive_retrieval
from training.config import LossConfig
from training.datasets import Sample, load_dataset
from training.evaluate_model import evaluate_result
from training.heads import TrainingHeads
from training.losses import pgr_loss_terms
from training.map_cache import MapCache, open_cache
from training.pseudo_labels import identity_foreground, identity_part_labels
from training.sampler import pk_batches
from training.transforms import IGNORE


class MapHeadsTrainConfig(StrictModel):
    data_root: Path = Path("data")
    dataset: str = "market1501"
    cache: Path  # the training split's map cache (with mirrored rows)
    output: Path  # the heads checkpoint to write
    seed: int = 0
    val_ids: int = 0  # identities held out for validation (0: train on all)
    reduce_dim: int = 256
    num_parts: int = 5
    instance_mix: float = 0.0
    artifact_cells: list[tuple[int, int]] = [(0, 0), (0, 7)]
    centre_prior: float = 0.0
    epochs: int = 30
    p: int = 16
    k: int = 4
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    erase_p: float = 0.5
    loss: LossConfig = LossConfig()
    pixel_dim: int = 64
    # validation grid: every combination is reported
    val_instance_mix: list[float] = [0.0]
    val_a1: list[float] = [0.05]
    val_a2: list[float] = [0.8]
    # stage 3 (k-reciprocal re-ranking of the final top n3): each combination is one more row per (a1, a2)
    val_n3: list[int] = []
    val_k1: list[int] = [20]
    val_k2: list[int] = [6]
    val_a3: list[float] = [0.3]


def split_identities(samples: list[Sample], val_ids: int) -> tuple[list[int], list[int], list[int]]:
    """(training rows, validation query rows, validation gallery rows) of the training samples."""
    pids = sorted({s.pid for s in samples})
    held = set(pids[len(pids) - val_ids :]) if val_ids else set()
    train = [i for i, s in enumerate(samples) if s.pid not in held]
    query, gallery, seen = [], [], set()
    for i, s in enumerate(samples):
        if s.pid in held:
            if (s.pid, s.camid) in seen:
                gallery.append(i)
            else:
                seen.add((s.pid, s.camid))
                query.append(i)
    return train, query, gallery


def pseudo_labels(maps: np.ndarray, samples: list[Sample], heads: MapHeads, centre_prior: float, seed: int):
    """(N, h, w) int8 part labels of the plain rows, identity by identity."""
    by_pid: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_pid.setdefault(s.pid, []).append(i)
    labels = np.zeros((len(samples), *maps.shape[2:]), dtype=np.int8)
    for rows in tqdm(by_pid.values(), desc="pseudo labels", unit="id"):
        x = heads.clean(torch.from_numpy(np.asarray(maps[rows])))
        fg = identity_foreground(x, centre_prior)
        labels[rows] = identity_part_labels(x, fg, heads.config.num_parts, seed)
    return labels


def cached_pseudo_labels(cfg: MapHeadsTrainConfig, cache: MapCache, samples: list[Sample], heads: MapHeads):
    """The plain rows' pseudo labels, kept beside the map cache: they depend only on the maps and on the
    labelling settings, so a validation run and the final run on the same cache compute them once."""
    cells = "-".join(f"{r}.{c}" for r, c in cfg.artifact_cells) or "none"
    path = cfg.cache / f"pseudo_labels-p{cfg.num_parts}-c{cfg.centre_prior:g}-s{cfg.seed}-a{cells}.npy"
    if path.is_file():
        print(f"pseudo labels from {path}")
        return np.load(path)
    labels = pseudo_labels(cache.maps[: len(samples)], samples, heads, cfg.centre_prior, cfg.seed)
    write_atomically(path, lambda tmp: np.save(tmp, labels))
    return labels


def erase_cells(x: torch.Tensor, labels: torch.Tensor, p: float, gen: torch.Generator) -> None:
    """Zero a random block of cells (up to half of each side) in place, with probability p per item."""
    n, _, h, w = x.shape
    for i in range(n):
        if torch.rand(1, generator=gen).item() >= p:
            continue
        bh = int(torch.randint(2, h // 2 + 1, (1,), generator=gen))
        bw = int(torch.randint(1, w // 2 + 1, (1,), generator=gen))
        r = int(torch.randint(0, h - bh + 1, (1,), generator=gen))
        c = int(torch.randint(0, w - bw + 1, (1,), generator=gen))
        x[i, :, r : r + bh, c : c + bw] = 0
        labels[i, r : r + bh, c : c + bw] = IGNORE


def gallery_features(heads: MapHeads, maps: np.ndarray, embs: np.ndarray, pixel_dim: int) -> GalleryFeatures:
    """Stored features of cached rows, as the services would store them (pixels projected, float16)."""
    heads.eval()
    projection = pixel_projection(heads.dim, pixel_dim)
    feats = []
    for start in range(0, len(maps), 256):
        end = start + 256
        feats.extend(features_of_maps(heads, maps[start:end], embs[start:end], projection))
    return GalleryFeatures.from_crop_features(feats)


def rankings(base: RetrievalParams) -> dict[str, RetrievalParams]:
    """The three ablation rows of one setting: instance only, + parts, + pixels (no stage 3)."""
    plain = replace(base, n3=0)
    return {"I": replace(plain, n1=1, n2=1), "I+P": replace(plain, n2=1), "I+P+Px": plain}


def reranked(base: RetrievalParams, cfg: MapHeadsTrainConfig) -> dict[str, RetrievalParams]:
    """The stage-3 rows of one setting: I+P+Px re-ranked, for every combination of the stage-3 grid."""
    return {
        f"I+P+Px+R n3 {n3} k1 {k1} k2 {k2} a3 {a3:g}": replace(base, n3=n3, k1=k1, k2=k2, a3=a3)
        for n3, k1, k2, a3 in product(cfg.val_n3, cfg.val_k1, cfg.val_k2, cfg.val_a3)
    }


def validate(
    heads: MapHeads, cache: MapCache, samples: list[Sample], query: list[int], gallery: list[int], cfg
) -> list[dict]:
    """R1 / mAP on the validation split for every combination of the validation grid."""
    rows = []
    q_samples, g_samples = [samples[i] for i in query], [samples[i] for i in gallery]
    for mix in cfg.val_instance_mix:
        heads.config = replace(heads.config, instance_mix=mix)
        q = gallery_features(heads, cache.maps[query], cache.embeddings[query], cfg.pixel_dim)
        g = gallery_features(heads, cache.maps[gallery], cache.embeddings[gallery], cfg.pixel_dim)
        for a1, a2 in product(cfg.val_a1, cfg.val_a2):
            params = RetrievalParams(a1=a1, a2=a2)
            for name, p in {**rankings(params), **reranked(params, cfg)}.items():
                r = evaluate_result(progressive_retrieval(q, g, p), q_samples, g_samples)
                rows.append({"instance_mix": mix, "a1": a1, "a2": a2, "ranking": name, **r.row()})
                print(json.dumps(rows[-1]))
    return rows


def load_train_config(config: str | Path | dict) -> MapHeadsTrainConfig:
    """The validated config of a dict or a YAML file (which may name a `base:`)."""
    if isinstance(config, dict):
        return validate_config(MapHeadsTrainConfig, config, "map heads config")
    return validate_config(MapHeadsTrainConfig, read_config(config), str(config))


def validate_checkpoint(config: str | Path | dict, heads_path: Path) -> list[dict]:
    """The validation grid of `config` for heads already trained (by the same config's validation run)."""
    cfg = load_train_config(config)
    if not cfg.val_ids:
        raise ValueError("the config holds out no validation identities (val_ids: 0)")
    ds = load_dataset(cfg.data_root, cfg.dataset)
    _, query, gallery = split_identities(ds.train, cfg.val_ids)
    return validate(MapHeads.load(heads_path), open_cache(cfg.cache), ds.train, query, gallery, cfg)


def train_map_heads(config: str | Path | dict) -> dict:
    """Train as configured; returns a summary (losses per epoch, validation rows, wall time)."""
    cfg = load_train_config(config)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    ds = load_dataset(cfg.data_root, cfg.dataset)
    cache = open_cache(cfg.cache)
    if not cache.flipped:
        raise ValueError(f"{cfg.cache}: the training cache needs mirrored rows")
    rows = cache.rows([s.path.name for s in ds.train])
    if not np.array_equal(rows, np.arange(len(ds.train))):
        raise ValueError(f"{cfg.cache}: its rows are not the training split in order")
    heads = MapHeads(
        MapHeadsConfig(
            in_channels=cache.maps.shape[1],
            embedding_dim=cache.embeddings.shape[1],
            reduce_dim=cfg.reduce_dim,
            num_parts=cfg.num_parts,
            artifact_cells=[tuple(c) for c in cfg.artifact_cells],
            instance_mix=cfg.instance_mix,
        )
    )
    train_rows, val_query, val_gallery = split_identities(ds.train, cfg.val_ids)
    n = len(ds.train)
    print(f"loading {len(cache.maps)} cached maps")
    maps = torch.from_numpy(np.array(cache.maps))  # (2N, c, h, w) float16 in memory, plain rows then mirrored
    embs = torch.from_numpy(np.array(cache.embeddings))
    labels = cached_pseudo_labels(cfg, cache, ds.train, heads)
    labels = torch.from_numpy(np.concatenate([labels, labels[:, :, ::-1]])).long()
    relabel = {pid: i for i, pid in enumerate(sorted({ds.train[i].pid for i in train_rows}))}
    targets = torch.tensor([relabel.get(s.pid, -1) for s in ds.train])
    trainer = TrainingHeads(heads, len(relabel))
    params = [p for p in [*heads.parameters(), *trainer.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    pids = [ds.train[i].pid for i in train_rows]
    schedule = [pk_batches(pids, cfg.p, cfg.k, cfg.seed, epoch) for epoch in range(cfg.epochs)]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(  # the batch count differs from epoch to epoch
        optimizer, max_lr=cfg.lr, total_steps=sum(len(b) for b in schedule), pct_start=0.1
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        heads.train()
        trainer.train()
        sums: dict[str, float] = {}
        batches = schedule[epoch]
        for batch in batches:
            idx = torch.tensor([train_rows[b] for b in batch])
            mirrored = torch.rand(len(idx), generator=gen) < 0.5
            rows_ = idx + n * mirrored.long()
            x, lab = maps[rows_].float(), labels[rows_].clone()
            erase_cells(x, lab, cfg.erase_p, gen)
            out = heads(x, embs[rows_])
            ins_logits, part_logits = trainer(out)
            terms = pgr_loss_terms(out, ins_logits, part_logits, targets[idx], lab, cfg.loss)
            loss = sum(getattr(cfg.loss, f"w_{name}") * v for name, v in terms.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            for name, v in [("loss", loss), *terms.items()]:
                sums[name] = sums.get(name, 0.0) + float(v.detach())
        record = {"epoch": epoch + 1, **{k: v / len(batches) for k, v in sums.items()}}
        history.append(record)
        print(json.dumps(record), flush=True)
    summary: dict = {"history": history, "train_s": time.perf_counter() - t0}
    if cfg.val_ids:
        summary["validation"] = validate(heads, cache, ds.train, val_query, val_gallery, cfg)
    heads.config = replace(heads.config, instance_mix=cfg.instance_mix)
    heads.eval()
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(cfg.output, heads.save)
    summary["output"] = str(cfg.output)
    print(f"heads written to {cfg.output} ({summary['train_s']:.0f} s)")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.train_map_heads", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--summary", type=Path, help="write the summary (losses, validation rows) here as JSON")
    ap.add_argument(
        "--validate", type=Path, help="no training: run the config's validation grid on these heads"
    )
    args = ap.parse_args(argv)
    if args.validate:
        summary = {"validation": validate_checkpoint(args.config, args.validate)}
    else:
        summary = train_map_heads(args.config)
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
