"""The `pgr` command: run the embedded demo, run one stage as a service, search the index, benchmark."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from pgr.app.index_benchmark import add_index_bench_options
from pgr.errors import Unavailable
from pgr.images import BadImage
from pgr.model_files import ModelFileMissing
from pgr.paths import CONFIGS
from pgr.settings import SettingsError, load_settings

DEFAULT_EMBEDDED = CONFIGS / "embedded.yaml"
log = logging.getLogger("pgr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgr", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the embedded pipeline on the configured video and search it")
    demo.add_argument("--config", default=str(DEFAULT_EMBEDDED))
    demo.add_argument(
        "--keep", action="store_true", help="keep the index of an earlier run instead of starting fresh"
    )

    run = sub.add_parser("run", help="run one stage as a service (distributed mode)")
    run.add_argument("stage", choices=["ingest", "reid", "matcher"])
    run.add_argument("--config", required=True)

    search = sub.add_parser("search", help="search the index with a person image")
    search.add_argument("--image", required=True)
    search.add_argument("--camera")
    search.add_argument("--since", help="unix seconds or ISO time (2009-01-01T10:00:00)")
    search.add_argument("--until", help="unix seconds or ISO time")
    search.add_argument("--top", type=int, default=10)
    search.add_argument("--config", default=str(DEFAULT_EMBEDDED))

    idents = sub.add_parser("identities", help="list the global identities the matcher formed")
    idents.add_argument("--camera")
    idents.add_argument("--since", help="unix seconds or ISO time")
    idents.add_argument("--until", help="unix seconds or ISO time")
    idents.add_argument("--config", default=str(DEFAULT_EMBEDDED))
    ident = sub.add_parser("identity", help="one identity's timeline across cameras")
    ident.add_argument("identity_id")
    ident.add_argument("--config", default=str(DEFAULT_EMBEDDED))

    bench = sub.add_parser(
        "bench",
        help="benchmarks (BENCHMARKS.md): embedded throughput per stage (default), index (stage 1 at "
        "scale), search (the whole search at scale), detector sizes, live cameras, crops per second with and "
        "without representatives, scale-out",
    )
    bench.add_argument("what", nargs="?", default="embedded", choices=list(BENCHMARKS))
    bench.add_argument("--config", help="pipeline config (default: embedded.yaml; live: four_cameras.yaml)")
    bench.add_argument("--out", help="also write the figures as JSON here")
    add_index_bench_options(bench)
    bench.add_argument("--seconds", type=float, default=60.0, help="live, scaleout: seconds of video")
    bench.add_argument("--imgsz", type=int, help="live: detector input size (long side)")
    bench.add_argument("--detect-batch", type=int, help="live: frames of different cameras per inference")
    bench.add_argument("--every-crop", action="store_true", help="live: no representatives, every crop")
    bench.add_argument("--sizes", type=int, nargs="+", default=[640, 480, 416, 320], help="detector")
    bench.add_argument("--fps", type=float, default=2.0, help="detector: frames sampled per second")
    bench.add_argument("--videos", nargs="+", help="detector: videos (default: the shared two)")
    bench.add_argument("--bootstrap", help="scaleout: a Kafka broker (default: start a noida-db one)")
    bench.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="scaleout: re-ID workers")
    bench.add_argument(
        "--reid-threads",
        type=int,
        nargs="+",
        default=[0],
        help="scaleout: OpenVINO threads per worker (0: all)",
    )
    add_operator_commands(sub)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # milvus-lite serves pymilvus through an in-process gRPC server that logs a traceback for every
    # optional call it does not implement (AllocTimestamp); those are not errors of ours.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "run":
            return _run(args)
        if args.command == "search":
            return _search(args)
        if args.command in OPERATOR_COMMANDS:
            return OPERATOR_COMMANDS[args.command](args)
        if args.command == "identities":
            return _identities(args)
        if args.command == "identity":
            return _identity(args)
        return BENCHMARKS[args.what](args)
    except (SettingsError, ModelFileMissing, BadImage, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:  # a broker, an index or a port: not the command line's fault
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _bench_embedded(args) -> int:
    from pgr.app.benchmark import run_benchmark

    return run_benchmark(args.config or str(DEFAULT_EMBEDDED), args.out)


def _bench_index(args) -> int:
    from pgr.app.index_benchmark import bench_index, report

    return report(bench_index(args), args.out)


def _bench_search(args) -> int:
    from pgr.app.index_benchmark import bench_search, report

    return report(bench_search(args), args.out)


def _bench_detector(args) -> int:
    from pgr.app.detector_benchmark import run_detector_sizes
    from pgr.paths import assets_dir

    settings = load_settings(args.config or str(DEFAULT_EMBEDDED))
    videos = [Path(v) for v in args.videos] if args.videos else sorted((assets_dir() / "video").glob("*.mp4"))
    result = run_detector_sizes(settings.ingest, videos, args.sizes, args.fps)
    _write_json(result, args.out)
    return 0


def _bench_live(args) -> int:
    from pgr.app.live_benchmark import print_live, run_live

    config = args.config or str(CONFIGS / "four_cameras.yaml")
    result = run_live(config, args.seconds, args.imgsz, args.detect_batch, args.every_crop)
    print_live(result)
    _write_json(result, args.out)
    return 0


def _bench_crops(args) -> int:
    import json

    from pgr.app.live_benchmark import run_crop_rates

    result = run_crop_rates(args.config or str(CONFIGS / "four_cameras.yaml"), args.seconds)
    print(json.dumps(result, indent=2))
    _write_json(result, args.out)
    return 0


def _bench_scaleout(args) -> int:
    from pgr.app.scaleout_benchmark import print_scaleout, run_scaleout

    result = run_scaleout(args.bootstrap, args.workers, args.seconds, args.reid_threads)
    print_scaleout(result)
    _write_json(result, args.out)
    return 0


def _write_json(result: dict, out: str | None) -> None:
    import json

    if out:
        Path(out).write_text(json.dumps(result, indent=2))


BENCHMARKS = {
    "embedded": _bench_embedded,
    "index": _bench_index,
    "search": _bench_search,
    "detector": _bench_detector,
    "live": _bench_live,
    "crops": _bench_crops,
    "scaleout": _bench_scaleout,
}


def parse_time(value: str | None) -> float | None:
    """Unix seconds or an ISO-8601 time (local time unless it names a zone)."""
    if value is None:
        return None
    try:
        t = float(value)
    except ValueError:
        try:
            t = datetime.fromisoformat(value).timestamp()
        except ValueError:
            raise ValueError(f"bad time {value!r}: use unix seconds or ISO-8601") from None
    if not math.isfinite(t):
        raise ValueError(f"bad time {value!r}: use unix seconds or ISO-8601")
    return t


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _run(args) -> int:
    stop = _stop_on_signals()  # first, so a SIGTERM during start-up is a clean stop too
    from pgr.app.pipeline import build_transport, run_ingest_stage, run_matcher_stage, run_reid_stage
    from pgr.metrics import PipelineMetrics

    settings = load_settings(args.config)
    if settings.transport.kind != "kafka":
        raise SettingsError(
            f"{args.config}: `pgr run` needs transport.kind: kafka (the in-process bus is `pgr demo`)"
        )
    metrics = PipelineMetrics()
    port = metrics.serve(settings.metrics.host, settings.metrics.port)
    log.info("%s: metrics on http://%s:%d/metrics", args.stage, settings.metrics.host, port)
    transport = build_transport(settings)
    stage = {"ingest": run_ingest_stage, "reid": run_reid_stage, "matcher": run_matcher_stage}[args.stage]
    result = stage(settings, transport, metrics, stop)
    log.info("%s: stopped (%s)", args.stage, result)
    return 0


def _demo(args) -> int:
    import shutil

    from matcher.contact_sheet import write_contact_sheet
    from matcher.feature_store import FeatureStore
    from matcher.open_index import open_index
    from matcher.search import longest_track_query, search_image
    from pgr.app.pipeline import build_extractor, run_embedded
    from pgr.metrics import PipelineMetrics, counter_total
    from reid.retrieval import RetrievalParams

    settings = load_settings(args.config)
    if settings.transport.kind != "inprocess":
        raise SettingsError(f"{args.config}: the demo runs embedded: transport.kind must be inprocess")
    m = settings.matcher
    if not args.keep:
        if m.index == "embedded":
            shutil.rmtree(m.index_path, ignore_errors=True)
        elif "://" not in m.milvus_uri:
            db = Path(m.milvus_uri)  # milvus-lite 3 keeps a .db as a folder; older releases as a file
            shutil.rmtree(db, ignore_errors=True) if db.is_dir() else db.unlink(missing_ok=True)
        shutil.rmtree(m.thumbnails_dir, ignore_errors=True)
        shutil.rmtree(m.feature_store_dir, ignore_errors=True)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{m.identity_store_path}{suffix}").unlink(missing_ok=True)
    metrics = PipelineMetrics()
    port = metrics.serve(settings.metrics.host, settings.metrics.port)
    print(f"metrics: http://{settings.metrics.host}:{port}/metrics")
    for cam in settings.cameras:
        print(f"camera {cam.id}: {cam.source} sampled at {cam.fps} fps")
    extractor = build_extractor(settings.reid, shared=True)
    t0 = time.perf_counter()
    run = run_embedded(settings, metrics, stop=_stop_on_signals(), extractor=extractor)
    elapsed = time.perf_counter() - t0
    if run.errors:
        print("errors: " + "; ".join(run.errors), file=sys.stderr)
        return 1
    index = open_index(m)
    frames = counter_total(metrics.frames_read)
    print(
        f"\nprocessed in {elapsed:.1f}s: {int(frames)} frames sampled, "
        f"{sum(run.crops_per_camera.values())} person crops, {index.count()} detections indexed"
    )
    detections = index.get(index.all_ids())
    tracks = Counter((d.camera_id, d.track_id) for d in detections if d.track_id >= 0)
    print(
        f"local tracks: {len(tracks)}; the longest: "
        + ", ".join(f"{cam}/track {t} ({n} crops)" for (cam, t), n in tracks.most_common(5))
    )
    picked = longest_track_query(detections)
    if picked is None:
        print("no person was tracked; nothing to search")
        index.close()
        return 0
    (cam, track), _, query = picked
    print(f"\nsearch with the crop of {query.detection_id} ({query.thumbnail}):")
    hits = search_image(
        index,
        extractor,
        Path(query.thumbnail),
        top_k=10,
        features=FeatureStore(m.feature_store_dir),
        params=RetrievalParams.from_settings(settings.matcher),
    )
    for rank, h in enumerate(hits, 1):
        same = "  <- same track" if (h.camera_id, h.track_id) == (cam, track) else ""
        print(format_hit(rank, h) + same)
    sheet = write_contact_sheet(
        Path(m.thumbnails_dir).parent / "demo_search.png", Path(query.thumbnail), hits
    )
    print(f"\nquery and results side by side: {sheet}")
    index.close()
    print_identities(m.identity_store_path)
    return 0


def _search(args) -> int:
    from matcher.feature_store import FeatureStore
    from matcher.index_check import check_rows_against_files
    from matcher.open_index import open_index
    from matcher.search import search_image
    from pgr.app.pipeline import build_extractor, milvus_token
    from reid.retrieval import RetrievalParams

    settings = load_settings(args.config)
    if args.top < 1 or args.top > 1000:
        raise ValueError("--top must be between 1 and 1000")
    since, until = parse_time(args.since), parse_time(args.until)
    extractor = build_extractor(settings.reid)
    index = open_index(settings.matcher, token=milvus_token(settings))
    try:
        check_rows_against_files(index, settings.matcher.thumbnails_dir, slack=settings.matcher.batch_size)
        hits = search_image(
            index,
            extractor,
            Path(args.image),
            features=FeatureStore(settings.matcher.feature_store_dir),
            params=RetrievalParams.from_settings(settings.matcher),
            top_k=args.top,
            camera=args.camera,
            since=since,
            until=until,
        )
    finally:
        index.close()
    if not hits:
        print("no results")
    for rank, h in enumerate(hits, 1):
        print(format_hit(rank, h))
    return 0


def add_operator_commands(sub) -> None:
    """`pgr index`, `pgr serve` and `pgr user` (operator search, issue 13)."""
    index = sub.add_parser(
        "index", help="index recorded video files and folders of stills (resumable; progress per file)"
    )
    index.add_argument("paths", nargs="+", metavar="FILE_OR_FOLDER")
    index.add_argument("--camera", required=True, help="the camera id the footage comes from")
    index.add_argument(
        "--start",
        help="unix seconds or ISO time of the first frame (default: the config's camera, the file's "
        "metadata, else its modification time)",
    )
    index.add_argument("--fps", type=float, help="frames sampled per second (default: config, else 2)")
    index.add_argument("--config", default=str(DEFAULT_EMBEDDED))

    serve = sub.add_parser("serve", help="serve the search API and web page (settings: the serve section)")
    serve.add_argument("--config", default=str(DEFAULT_EMBEDDED))
    serve.add_argument("--host", help="override serve.host")
    serve.add_argument("--port", type=int, help="override serve.port")

    erase = sub.add_parser(
        "erase",
        help="erase, for good and audited, everything stored about one identity or some detections "
        "(stop `pgr serve` first when it owns a milvus-lite file, or use its API)",
    )
    what = erase.add_mutually_exclusive_group(required=True)
    what.add_argument("--identity", help="a global identity id (`pgr identities` lists them)")
    what.add_argument("--detection", nargs="+", metavar="ID", help="detection ids")
    erase.add_argument("--reason", required=True, help="why: the request's reference (audited)")
    erase.add_argument("--by", help="who asks, for the audit log (default: your login name)")
    erase.add_argument("--config", default=str(DEFAULT_EMBEDDED))

    user = sub.add_parser("user", help="add or change an account of the search server (password on stdin)")
    user.add_argument("name")
    user.add_argument("--role", choices=["admin", "viewer"], default="viewer")
    user.add_argument("--delete", action="store_true", help="remove the account")
    user.add_argument("--config", default=str(DEFAULT_EMBEDDED))


def _index(args) -> int:
    from pgr.app.indexing import index_files
    from pgr.app.pipeline import build_extractor
    from pgr.validation import is_camera_id

    if not is_camera_id(args.camera):
        raise ValueError(f"bad camera id {args.camera!r}: want 1-64 of A-Z a-z 0-9 _ . -")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError("--fps must be a positive number")
    settings = load_settings(args.config)
    stop = _stop_on_signals()
    for noisy in ("faiss", "milvus_lite"):  # their INFO lines would break the progress bars
        logging.getLogger(noisy).setLevel(logging.WARNING)
    files = index_files(
        settings,
        [Path(p) for p in args.paths],
        args.camera,
        build_extractor(settings.reid, shared=True),
        start=parse_time(args.start),
        fps=args.fps,
        stop=stop,
    )
    for f in files:
        if f.skipped:
            print(f"{f.path}: indexed before ({f.detections} detections), skipped")
            continue
        rate = f.frames / f.seconds if f.seconds else float("nan")
        state = "done" if f.done else "interrupted (run the same command again to finish)"
        print(
            f"{f.path}: camera {f.camera}, {f.frames} frames, {f.detections} detections, "
            f"{f.seconds:.1f}s ({rate:.2f} frames/s), "
            f"start {datetime.fromtimestamp(f.start_time).isoformat()} from the {f.start_from}: {state}"
        )
    return 0 if all(f.done for f in files) else 1


def _serve(args) -> int:
    import uvicorn

    from pgr.app.web.app import create_app

    settings = load_settings(args.config)
    over = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if over:
        settings = settings.model_copy(update={"serve": settings.serve.model_copy(update=over)})
    app = create_app(settings)
    if settings.serve.metrics_port is not None:
        port = app.state.pgr.metrics.serve(settings.metrics.host, settings.serve.metrics_port)
        print(f"metrics: http://{settings.metrics.host}:{port}/metrics")
    print(f"search page: http://{settings.serve.host}:{settings.serve.port}/  (API docs: /docs)")
    uvicorn.run(app, host=settings.serve.host, port=settings.serve.port, log_level="info")
    return 0


def _user(args) -> int:
    import getpass

    from pgr.app.web.auth import Sessions, UserStore

    settings = load_settings(args.config, check_models=False)
    users = UserStore(settings.users_file)
    sessions = Sessions(settings.serve.session_hours, settings.sessions_file)
    if args.delete:
        users.delete(args.name)
        sessions.end_user(args.name)
        print(f"account {args.name} removed (and logged out)")
        return 0
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    users.set(args.name, password, args.role)
    ended = sessions.end_user(args.name)  # a new password or role: its open sessions end
    print(
        f"account {args.name} ({args.role}) saved in {settings.users_file}"
        + (" (logged out)" if ended else "")
    )
    return 0


def _erase(args) -> int:
    import getpass

    from matcher.erasure import UnknownIdentity, erase_detections, erase_identity
    from matcher.feature_store import FeatureStore
    from matcher.open_index import open_index
    from matcher.thumbnails import ThumbnailStore
    from pgr.app.pipeline import milvus_token
    from pgr.app.web.audit import AuditLog

    settings = load_settings(args.config, check_models=False)
    m = settings.matcher
    who = args.by or getpass.getuser()
    audit = AuditLog(settings.audit_log)
    index = open_index(m, token=milvus_token(settings))
    stores = (index, ThumbnailStore(m.thumbnails_dir), FeatureStore(m.feature_store_dir))
    try:
        if args.identity is not None:
            try:
                erased = erase_identity(m.identity_store_path, *stores, args.identity)
            except UnknownIdentity as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            counts = erased.counts()
            audit.append(
                who,
                "identity_erasure",
                via="cli",
                reason=args.reason,
                query={"identity_id": args.identity},
                result_count=erased.detections,
                **counts,
            )
            print(
                f"identity {args.identity} erased: {counts['tracklets']} tracklets, {erased.events} events, "
                f"{erased.detections} detections (index rows, thumbnails, features); identities deleted: "
                + ", ".join(erased.identities)
            )
            return 0
        ids = list(dict.fromkeys(args.detection))
        found = {d.detection_id for d in erase_detections(m.identity_store_path, *stores, ids)}
        query = {"detection_ids": ids}
        audit.append(who, "erasure", via="cli", reason=args.reason, query=query, result_count=len(found))
        missing = ", ".join(i for i in ids if i not in found)
        print(f"{len(found)} detections erased" + (f"; not in the index: {missing}" if missing else ""))
        return 0
    finally:
        index.close()


OPERATOR_COMMANDS = {"index": _index, "serve": _serve, "user": _user, "erase": _erase}


def _identity_store(args):
    from matcher.identity_store import IdentityStore

    settings = load_settings(args.config, check_models=False)
    path = settings.matcher.identity_store_path
    if not path.is_file():
        raise ValueError(f"no identities yet: {path} does not exist (run the matcher first)")
    return IdentityStore(path)


def _when(t: float) -> str:
    try:
        return datetime.fromtimestamp(t).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{t:g}"


def _identities(args) -> int:
    from matcher.identity_store import list_identities

    since, until = parse_time(args.since), parse_time(args.until)
    store = _identity_store(args)
    try:
        found = list_identities(store, args.camera, since, until)
    finally:
        store.close()
    print(f"{len(found)} identities")
    for s in found:
        print(
            f"{s.identity_id}  cameras {','.join(s.cameras)}  {_when(s.first_seen)} .. {_when(s.last_seen)}  "
            f"tracklets {s.tracklets}  {s.thumbnail}"
        )
    return 0


def _identity(args) -> int:
    from matcher.identity_store import timeline

    store = _identity_store(args)
    try:
        entries = timeline(store, args.identity_id)
    finally:
        store.close()
    if not entries:
        print(f"error: no identity {args.identity_id!r}", file=sys.stderr)
        return 1
    print(f"{args.identity_id}: {len(entries)} tracklets on {len({e.camera_id for e in entries})} cameras")
    print(format_timeline(entries))
    return 0


def format_timeline(entries) -> str:
    """One line per tracklet: camera, first and last seen, crops, best thumbnail."""
    return "\n".join(
        f"  camera {e.camera_id}  {_when(e.first_seen)} .. {_when(e.last_seen)}  {e.crops} crops  "
        f"{e.thumbnail}  ({e.tracklet_id})"
        for e in entries
    )


def print_identities(path: Path) -> None:
    """The demo's summary of the identities it formed: how many, the longest timeline."""
    from matcher.identity_store import IdentityStore, list_identities, timeline

    if not path.is_file():
        print("\nidentities: none (matcher.identities.enabled is off)")
        return
    store = IdentityStore(path)
    try:
        found = list_identities(store)
        multi = [s for s in found if len(s.cameras) > 1]
        print(f"\nidentities formed: {len(found)} ({len(multi)} seen on more than one camera)")
        if found:
            longest = max(found, key=lambda s: (s.last_seen - s.first_seen, s.identity_id))
            span = longest.last_seen - longest.first_seen
            print(f"the longest timeline: {longest.identity_id} ({span:.0f} s):")
            print(format_timeline(timeline(store, longest.identity_id)))
    finally:
        store.close()


def format_hit(rank: int, h) -> str:
    """One result line: rank, score (and the per-granularity scores that made it), where and when."""
    try:
        when = datetime.fromtimestamp(h.timestamp).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # a row indexed before times were validated
        when = f"{h.timestamp:g}"
    stages = "".join(
        f" {name} {value:.3f}"
        for name, value in (("ins", h.s_ins), ("part", h.s_part), ("px", h.s_pixel))
        if value == value  # NaN: that stage did not score this item
    )
    stages = stages.strip() or "instance cosine"
    return (
        f"{rank:3d}. score {h.score:.3f} ({stages})  camera {h.camera_id}  time {when}  "
        f"frame {h.frame_index}  track {h.track_id}  {h.thumbnail}"
    )


if __name__ == "__main__":
    sys.exit(main())
