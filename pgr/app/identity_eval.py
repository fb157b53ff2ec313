"""How well the live identities link people across cameras, on real multi-camera data (a command, not a test).

    python -m pgr.app.identity_eval replay --dataset dukemtmc --bootstrap HOST:PORT [--minutes M]
        [--speed 10] [--threshold T] [--instance-only] [--out FILE.json]
    python -m pgr.app.identity_eval calibrate --dataset dukemtmc [--minutes M]

`replay` publishes a re-ID test set (query + gallery; training split with `--split train`) as one camera
stream per camera, in the order of the frame numbers in the file names (DukeMTMC: 60 fps, synchronised
across its 8 cameras; Market-1501: 25 fps per camera sequence, its 6 cameras laid end to end in sequence
order, so only roughly synchronised), paced at `--speed` times real time, as crop records over Kafka
through the pipeline's own re-ID and matcher stages. A local track is one identity on one camera while its
crops come at most `--track-gap` seconds apart. It then scores the matcher's identities against the true
ones (matcher/identity_quality.py) and measures the latency from each tracklet's last crop being published
to its identity decision at the tracklet's end.

`calibrate` picks the join threshold on the TRAINING split: the same records (in replay order, extracted
once with the configured model) through the matcher's own tracklet and identity code for each threshold of
a grid, with progressive retrieval and with the instance feature alone (or only that with
`--instance-only`); per mode the threshold with the best IDF1 wins. Never on a test split.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from matcher.identity_quality import identity_quality, percentile
from matcher.identity_service import IdentityService
from matcher.identity_store import IdentityStore
from pgr.messages import CropRecord, Detection, FeatureRecord, decode_identity, encode_crop
from pgr.metrics import PipelineMetrics
from pgr.paths import CONFIGS
from pgr.settings import Settings, load_settings
from pgr.transport import InProcessBus
from reid.retrieval import RetrievalParams
from training.datasets import DATASETS

_DUKE = re.compile(r"^(-?\d+)_c(\d+)_f(\d+)\.jpg$")
_MARKET = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_\d+\.jpg$")
BASE_TIME = 1_400_000_000.0  # the replay's clock starts here (a fixed unix time)


@dataclass(frozen=True)
class ReplayCrop:
    path: Path
    pid: int
    camera: str
    frame: int
    time: float  # seconds from the dataset's first frame
    track: int = -1

    @property
    def detection_id(self) -> str:
        return f"{self.camera}:{self.frame}:t{self.track}"


def replay_crops(root: Path, dataset: str, split: str, track_gap_s: float) -> list[ReplayCrop]:
    """The split's crops in time order with their local tracks (junk and distractors left out)."""
    base = Path(root) / DATASETS[dataset]
    folders = ["bounding_box_train"] if split == "train" else ["query", "bounding_box_test"]
    crops: list[ReplayCrop] = []
    if dataset == "market1501":
        raw = []
        for folder in folders:
            for p in sorted((base / folder).glob("*.jpg")):
                m = _MARKET.match(p.name)
                if m and int(m.group(1)) > 0:
                    raw.append((p, int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))))
        # a camera's sequences one after another: each starts where the one before ended
        ends: dict[tuple[int, int], int] = {}
        for _, _, cam, seq, frame in raw:
            ends[(cam, seq)] = max(ends.get((cam, seq), 0), frame)
        offset = {}
        for cam, seq in sorted(ends):
            offset[(cam, seq)] = sum(ends[(c, s)] for c, s in ends if c == cam and s < seq)
        for p, pid, cam, seq, frame in raw:
            f = offset[(cam, seq)] + frame
            crops.append(ReplayCrop(p, pid, f"c{cam}", f, f / 25.0))
    else:
        for folder in folders:
            for p in sorted((base / folder).glob("*.jpg")):
                m = _DUKE.match(p.name)
                if m and int(m.group(1)) > 0:
                    frame = int(m.group(3))
                    crops.append(ReplayCrop(p, int(m.group(1)), f"c{m.group(2)}", frame, frame / 60.0))
    crops = sorted({(c.camera, c.frame, c.pid): c for c in crops}.values(), key=lambda c: (c.time, c.camera))
    return assign_tracks(crops, track_gap_s)


def assign_tracks(crops: list[ReplayCrop], track_gap_s: float) -> list[ReplayCrop]:
    """One local track per identity, camera and continuous appearance (crops at most `track_gap_s` apart),
    numbered per camera in order of appearance."""
    last: dict[tuple[str, int], tuple[float, int]] = {}
    next_track: dict[str, int] = {}
    out = []
    for c in crops:
        key = (c.camera, c.pid)
        prev = last.get(key)
        if prev is None or c.time - prev[0] > track_gap_s:
            track = next_track.get(c.camera, 0)
            next_track[c.camera] = track + 1
        else:
            track = prev[1]
        last[key] = (c.time, track)
        out.append(ReplayCrop(c.path, c.pid, c.camera, c.frame, c.time, track))
    return out


def window(crops: list[ReplayCrop], minutes: float | None, start_min: float = 0.0) -> list[ReplayCrop]:
    """The crops of `minutes` of the stream from `start_min` minutes after its first crop (all: None)."""
    if minutes is None or not crops:
        return crops
    t0 = crops[0].time + 60 * start_min
    return [c for c in crops if t0 <= c.time < t0 + 60 * minutes]


def crop_record(c: ReplayCrop, read_at: float) -> CropRecord:
    jpeg = c.path.read_bytes()
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    box = (0.0, 0.0, float(w), float(h))
    det = Detection(c.detection_id, c.camera, BASE_TIME + c.time, c.frame, c.track, box, 1.0, read_at)
    return CropRecord(det, jpeg)


def eval_settings(args, workdir: Path, threshold: float) -> Settings:
    """configs/embedded.yaml over Kafka, with fresh topics and stores in `workdir`."""
    run = f"eval{int(time.time())}"
    overrides = {
        "transport": {"kind": "kafka", "bootstrap": args.bootstrap, "partitions": 1, "group_prefix": run},
        "topics": {n: f"{run}.{n}" for n in ("crops", "features", "identities", "dead_letter")},
        "matcher": {
            "milvus_uri": str(workdir / "eval.db"),
            "thumbnails_dir": str(workdir / "thumbnails"),
            "features_dir": str(workdir / "features"),
            "identities": identity_overrides(args, threshold, args.end_gap / args.speed + 1.0),
        },
    }
    return load_settings(CONFIGS / "embedded.yaml", overrides)


def identity_overrides(args, threshold: float, idle_end_s: float) -> dict:
    """matcher.identities for a replay: a tracklet also ends after its end gap in wall-clock time."""
    return {
        "threshold": threshold,
        "end_gap_s": args.end_gap,
        "idle_end_s": idle_end_s,
        "instance_only": args.instance_only,
        "store": str(args.workdir_path / "identities.sqlite"),
    }


def publish(settings: Settings, crops: list[ReplayCrop], speed: float, stop: threading.Event) -> None:
    """Publish the crops as their cameras would, at `speed` times real time."""
    from pgr.app.pipeline import build_transport

    producer = build_transport(settings).producer()
    start, t0 = time.time(), crops[0].time
    try:
        for c in crops:
            if stop.is_set():
                return
            wait = start + (c.time - t0) / speed - time.time()
            if wait > 0:
                time.sleep(wait)
            rec = crop_record(c, time.time())
            producer.send(settings.topics.crops, encode_crop(rec), key=c.camera.encode())
        producer.flush()
    finally:
        producer.close()


def run_replay(args) -> dict:
    from pgr.app.pipeline import build_extractor, build_transport, run_matcher_stage, run_reid_stage

    crops = replay_crops(args.data, args.dataset, args.split, args.track_gap)
    crops = window(crops, args.minutes, args.start)
    workdir = Path(tempfile.mkdtemp(prefix="pgr-identity-eval-"))
    args.workdir_path = workdir
    settings = eval_settings(args, workdir, args.threshold)
    metrics = PipelineMetrics()
    extractor = build_extractor(settings.reid)
    stop, published, reid_done = threading.Event(), threading.Event(), threading.Event()
    errors: list[str] = []

    def guarded(fn, done: threading.Event | None) -> None:
        try:
            fn()
        except Exception as exc:
            errors.append(repr(exc))
            stop.set()
        finally:
            if done is not None:
                done.set()

    transport = build_transport(settings)

    def reid() -> None:
        run_reid_stage(settings, transport, metrics, stop, published, extractor)

    def matcher() -> None:
        run_matcher_stage(settings, transport, metrics, stop, reid_done, extractor)

    threads = [
        threading.Thread(target=guarded, args=(reid, reid_done)),
        threading.Thread(target=guarded, args=(matcher, None)),
    ]
    for t in threads:
        t.start()
    t0 = time.time()
    guarded(lambda: publish(settings, crops, args.speed, stop), published)
    replay_s = time.time() - t0
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    store = IdentityStore(settings.matcher.identity_store_path)
    result = score_store(store, crops)
    result.update(
        dataset=args.dataset,
        split=args.split,
        minutes=args.minutes,
        start_min=args.start,
        speed=args.speed,
        threshold=args.threshold,
        instance_only=args.instance_only,
        model=extractor.name,
        replay_wall_s=round(replay_s, 1),
        total_wall_s=round(time.time() - t0, 1),
        stream_s=round(crops[-1].time - crops[0].time, 1),
        cameras=len({c.camera for c in crops}),
        identity_events_on_topic=count_topic(settings),
    )
    store.close()
    return result


def count_topic(settings: Settings) -> int:
    """How many identity events the identities topic holds (read back over Kafka)."""
    from pgr.app.pipeline import build_transport

    consumer = build_transport(settings).consumer([settings.topics.identities], "eval-reader")
    n, empty = 0, 0
    try:
        while empty < 3:
            batch = consumer.poll(max_records=500, timeout_s=1.0)
            n += sum(1 for m in batch if decode_identity(m.value))
            empty = 0 if batch else empty + 1
    finally:
        consumer.close()
    return n


def score_store(store: IdentityStore, crops: list[ReplayCrop]) -> dict:
    """The identity quality of a finished run and its end-to-identity latencies."""
    truth = {c.detection_id: c.pid for c in crops}
    predicted, read_at = {}, {}
    for tid, ident, meta in store.db.execute("SELECT tracklet_id, identity_id, meta FROM tracklets"):
        m = json.loads(meta)
        read_at[tid] = m["read_at"]
        for det in m["seen"]:
            predicted[det] = ident or f"none:{tid}"
    unassigned = [d for d in truth if d not in predicted]
    for d in unassigned:  # a crop the tracklets refused counts as an identity of its own
        predicted[d] = f"alone:{d}"
    q = identity_quality(truth, predicted)
    events = store.events()
    latency = [
        e.decided_at - read_at[e.tracklet_id] for e in events if e.ended and read_at.get(e.tracklet_id)
    ]
    founded = sum(1 for e in events if e.kind == "created")
    return {
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in q.as_dict().items()},
        "founded_per_true": round(founded / q.true_identities, 3),
        "events": {k: sum(1 for e in events if e.kind == k) for k in sorted({e.kind for e in events})},
        "tracklets": len(read_at),
        "crops_not_in_a_tracklet": len(unassigned),
        "end_to_identity_s": {
            "median": round(percentile(latency, 50), 3),
            "p95": round(percentile(latency, 95), 3),
            "n": len(latency),
        },
        "input_counts": store.counts(),
    }


def run_calibration(args) -> dict:
    """Pick the threshold with the best IDF1 on the training split (offline: same records, same code)."""
    from pgr.app.pipeline import build_extractor

    crops = window(replay_crops(args.data, args.dataset, "train", args.track_gap), args.minutes, args.start)
    settings = load_settings(CONFIGS / "embedded.yaml", check_models=False)
    extractor = build_extractor(settings.reid)
    records = []
    for i in range(0, len(crops), 32):
        batch = [crop_record(c, 0.0) for c in crops[i : i + 32]]
        images = [cv2.imdecode(np.frombuffer(r.jpeg, np.uint8), cv2.IMREAD_COLOR) for r in batch]
        for r, f in zip(batch, extractor.extract(images), strict=True):
            records.append(
                FeatureRecord(
                    r.detection,
                    extractor.name,
                    f.instance,
                    r.jpeg,
                    f.parts,
                    f.part_visibility,
                    f.pixels,
                    f.pixel_coords,
                )
            )
    table = []
    modes = [args.instance_only] if args.instance_only else [False, True]
    for instance_only, threshold in ((m, t) for m in modes for t in args.grid):
        with tempfile.TemporaryDirectory() as tmp:
            args.workdir_path, args.instance_only = Path(tmp), instance_only
            base = settings.matcher.identities
            # offline: only stream time (and the end) ends a tracklet
            cfg = type(base).model_validate({**base.model_dump(), **identity_overrides(args, threshold, 1e9)})
            store = IdentityStore(Path(tmp) / "identities.sqlite")
            service = IdentityService(
                cfg,
                RetrievalParams.from_settings(settings.matcher),
                store,
                InProcessBus(capacity=10**9).producer(),
                "identities",
                PipelineMetrics(),
            )
            for i in range(0, len(records), 64):
                service.add([(r, "") for r in records[i : i + 64]])
            service.finish()
            score = score_store(store, crops)
            store.close()
        keys = ("idf1", "pair_precision", "pair_recall", "identities_per_true")
        row = {"instance_only": instance_only, "threshold": threshold, **{k: score[k] for k in keys}}
        print(json.dumps(row), flush=True)
        table.append(row)
    best = {
        "instance_only" if m else "pgr": max(
            (r for r in table if r["instance_only"] == m), key=lambda r: (r["idf1"], r["threshold"])
        )["threshold"]
        for m in modes
    }
    return {
        "dataset": args.dataset,
        "split": "train",
        "minutes": args.minutes,
        "start_min": args.start,
        "model": extractor.name,
        "crops": len(crops),
        "grid": table,
        "best_threshold": best,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgr.app.identity_eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("replay", "calibrate"):
        p = sub.add_parser(name)
        p.add_argument("--dataset", choices=["dukemtmc", "market1501"], default="dukemtmc")
        p.add_argument("--data", type=Path, default=Path("data"))
        p.add_argument("--minutes", type=float, help="replay only this many minutes of the stream")
        p.add_argument("--start", type=float, default=0.0, help="... from this many minutes in")
        p.add_argument("--track-gap", type=float, default=6.0, help="seconds that split a local track")
        p.add_argument("--end-gap", type=float, default=7.0, help="matcher.identities.end_gap_s")
        p.add_argument("--instance-only", action="store_true")
        p.add_argument("--out", type=Path)
    replay = sub.choices["replay"]
    replay.add_argument("--bootstrap", required=True, help="Kafka broker HOST:PORT")
    replay.add_argument("--split", choices=["test", "train"], default="test")
    replay.add_argument("--speed", type=float, default=10.0, help="times real time")
    replay.add_argument("--threshold", type=float, required=True, help="from `calibrate`")
    calibrate = sub.choices["calibrate"]
    calibrate.add_argument("--grid", type=float, nargs="+", default=[0.76, 0.80, 0.84, 0.88, 0.92, 0.95])
    args = parser.parse_args(argv)
    result = run_replay(args) if args.command == "replay" else run_calibration(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
