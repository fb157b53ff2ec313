"""What the matcher costs per record, by how many records one write carries (a benchmark, not a test).

    python -m pgr.app.matcher_benchmark [--batch 1 4 16] [--records 1500] [--dataset dukemtmc] [--sightings]

Each run feeds `--records` feature records, in the identity replay's order of a re-ID test set (cameras,
frames and local tracks from the file names: pgr/app/identity_eval.py), through `MatcherWorker.handle` in
batches of `--batch`, with every store real and on disk (thumbnails, feature store, embedded index, identity
store) and identities on (configs/identities_dukemtmc.yaml). The features are synthetic but shaped like the
default model's (instance 256, five parts, 60 pixel cells of 64): one random direction per true identity
plus noise, so tracklets join and found identities as they would, without running the CNN. Kafka is left
out (the consume loop's poll and commit). Reports wall and CPU milliseconds per record for each batch size:
the fixed cost of a write (fsyncs, manifests, the identity store's commit) shows as the difference. With
`--sightings`, as under hard shedding (reid/sampling.py), only a track's first crop is a feature record and
every other crop a sighting (no features): what the matcher costs a record when most are sightings.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pgr.machine import describe_machine
from pgr.paths import REPO


def feature_messages(data: Path, dataset: str, n: int, seed: int = 0, sightings: bool = False) -> list:
    """`n` encoded feature records of the replay's first crops, with synthetic per-identity features (with
    `sightings`: a sighting for every crop but a track's first)."""
    from pgr.app.identity_eval import crop_record, replay_crops
    from pgr.messages import FeatureRecord, encode_feature, encode_sighting
    from pgr.transport import Message

    rng = np.random.default_rng(seed)
    direction: dict[int, np.ndarray] = {}
    tracks: set[tuple[str, int]] = set()
    out = []
    for i, c in enumerate(replay_crops(data, dataset, "test", 10.0)[:n]):
        if sightings and (c.camera, c.track) in tracks:
            sighting = encode_sighting(crop_record(c, time.time()).detection)
            out.append(Message("features", 0, i, None, sighting))
            continue
        tracks.add((c.camera, c.track))
        v = direction.setdefault(c.pid, rng.normal(size=256))
        inst = v + 0.6 * rng.normal(size=256)
        parts = (v[None] + rng.normal(size=(5, 256))).astype(np.float32)
        pixels = rng.normal(size=(60, 64)).astype(np.float32)
        coords = np.stack([rng.integers(0, 16, 60), rng.integers(0, 8, 60)], 1).astype(np.int16)
        r = crop_record(c, time.time())
        rec = FeatureRecord(
            r.detection,
            "pgr-benchmark",
            (inst / np.linalg.norm(inst)).astype(np.float32),
            r.jpeg,
            parts / np.linalg.norm(parts, axis=1, keepdims=True),
            np.ones(5, bool),
            pixels / np.linalg.norm(pixels, axis=1, keepdims=True),
            coords,
        )
        out.append(Message("features", 0, i, None, encode_feature(rec)))
    return out


def run(messages: list, batch: int, folder: Path, config: Path) -> tuple[float, float]:
    """Wall and CPU seconds of handling `messages` in batches of `batch` with fresh stores in `folder`."""
    from matcher.embedded_index import EmbeddedIndex
    from matcher.feature_store import FeatureStore
    from matcher.identity_service import IdentityService
    from matcher.identity_store import IdentityStore
    from matcher.service import MatcherWorker
    from matcher.thumbnails import ThumbnailStore
    from pgr.app.identity_eval import _Discard
    from pgr.metrics import PipelineMetrics
    from pgr.settings import load_settings
    from reid.retrieval import RetrievalParams

    m = load_settings(config, check_models=False).matcher
    metrics = PipelineMetrics()
    identities = IdentityService(
        m.identities,
        RetrievalParams.from_settings(m),
        IdentityStore(folder / "identities.db"),
        _Discard(),
        "identities",
        metrics,
    )
    worker = MatcherWorker(
        EmbeddedIndex(folder / "index", dim=256, model="pgr-benchmark"),
        ThumbnailStore(folder / "thumbnails"),
        FeatureStore(folder / "features"),
        _Discard(),
        "dead_letter",
        metrics,
        model="pgr-benchmark",
        identities=identities,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(messages), batch):
        worker.handle(messages[start : start + batch])
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--dataset", default="dukemtmc")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "identities_dukemtmc.yaml")
    ap.add_argument("--records", type=int, default=1500)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--sightings", action="store_true", help="a track's first crop only; sightings after")
    ap.add_argument(
        "--workdir", type=Path, default=REPO / "var", help="where the stores go (a real disk: fsyncs count)"
    )
    args = ap.parse_args(argv)
    messages = feature_messages(args.data, args.dataset, args.records, sightings=args.sightings)
    kind = "records (a track's first crop, then sightings)" if args.sightings else "records"
    print(f"{describe_machine()}; {len(messages)} {kind} of {args.dataset}'s replay")
    for batch in args.batch:
        args.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="pgr-matcher-bench-", dir=args.workdir) as folder:
            wall, cpu = run(messages, batch, Path(folder), args.config)
        n = len(messages)
        print(f"batch {batch:3d}: {1000 * wall / n:6.2f} ms wall, {1000 * cpu / n:6.2f} ms CPU per record")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
