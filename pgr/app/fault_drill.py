"""The fault drill: N small real crops streamed through ingest, two re-ID workers and the matcher over Kafka
while, one at a time, the faults an operator meets happen; then, per fault, what was published and what was
indexed, lost, duplicated and dead-lettered, and how long the pipeline took to catch up.

    python -m pgr.app.fault_drill --crops 10000

Everything runs on this machine as processes: a noida-db broker (stopped and restarted by the drill), a
milvus-lite server (the index, shared by the matcher and the drill's counting), `pgr run` for each stage,
and a live MJPEG camera on loopback (PETS 2009 frames) that the ingest service reads. The crops are fed to
the crops topic by the drill (person crops cut where the detector finds people, 48 x 96, about 2 KB a
record), `crops / 5` in each fault's phase at `--rate` crops per second; the fault starts a third of the
way into its phase and lasts `--outage` seconds:

  reid worker SIGKILL     a re-ID worker is killed; its successor (same member id) starts after the outage
  matcher SIGKILL         the matcher is killed; its successor starts after the outage
  broker restart          the broker is stopped and started again on its port and data
  camera lost             the camera disappears for the outage and returns (it streams only in this phase)
  malformed records       records that cannot be decoded go to the crops and features topics

Recovery is the time from the end of the fault (the successor started, the broker back, the camera back,
the records injected) until every record published before then is in the index (for the camera: until
a crop it took after its return is). Lost, duplicated and dead-lettered are counted at the end, from the
index and the dead-letter topic: the drill exits 1 unless nothing was lost or duplicated and exactly the
injected records were dead-lettered.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from matcher.index import DetectionIndex
from pgr.app.crop_feed import CropFeed, person_crops
from pgr.app.local_stack import (
    MilvusLiteServer,
    StageProcess,
    free_port,
    start_noida,
    stop_noida,
    topic_messages,
)
from pgr.app.loopback_camera import LoopbackCamera, video_frames
from pgr.messages import decode_crop
from pgr.paths import assets_dir
from pgr.transport import KafkaTransport

log = logging.getLogger("pgr.drill")
FAULTS = ("reid worker SIGKILL", "matcher SIGKILL", "broker restart", "camera lost", "malformed records")
CAMERA = "door"
MALFORMED_CROPS = [b"\x00not a record", b"{}", b'{"kind": "pgr.crop", "version": 1}', b"[1, 2]", b"\xff" * 64]
MALFORMED_FEATURES = [b"{", b'{"kind": "pgr.feature"}', b'{"kind": "pgr.crop", "version": 1}', b"null", b"0"]


@dataclass
class FaultRow:
    """One fault's line of the table."""

    fault: str
    published: int = 0
    indexed: int = 0
    lost: int = 0
    duplicated: int = 0
    dead_lettered: int = 0
    injected: int = 0
    recovery_s: float = float("nan")
    ids: list[str] = field(default_factory=list, repr=False)
    started: float = 0.0
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.dead_lettered == self.injected


@dataclass
class DrillResult:
    rows: list[FaultRow]
    crops: int
    seconds: float
    extra_rows: int  # rows in the index that nobody published
    dead_letter_origins_ok: bool  # the dead letters came from exactly the injected records

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and self.extra_rows == 0 and self.dead_letter_origins_ok


class Feeder:
    """Publishes feed crops `seq` in order at `rate` per second from a thread; remembers when each was
    sent."""

    def __init__(self, feed: CropFeed, producer, topic: str, rate: float) -> None:
        self.feed, self.producer, self.topic, self.rate = feed, producer, topic, rate
        self.sent_at: dict[int, float] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def publish(self, seqs: range) -> None:
        """Start publishing `seqs` (returns at once; `join` waits for the last send)."""

        def run() -> None:
            t0 = time.monotonic()
            for k, seq in enumerate(seqs):
                delay = t0 + k / self.rate - time.monotonic()
                if self._stop.wait(max(delay, 0)):
                    return
                _, key, value = self.feed.record(seq)
                self.producer.send(self.topic, value, key=key)
                self.sent_at[seq] = time.time()
            self.producer.flush()

        self._thread = threading.Thread(target=run, name="feeder", daemon=True)
        self._thread.start()

    def sent(self) -> int:
        return len(self.sent_at)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def stop(self) -> None:
        """Stop publishing (the drill is ending) and wait for the thread."""
        self._stop.set()
        self.join()

    def ids_before(self, t: float) -> list[str]:
        return [self.feed.detection_id(s) for s, at in list(self.sent_at.items()) if at < t]


class Drill:
    """The processes of one drill and the faults done to them."""

    def __init__(self, work: Path, outage_s: float, reid_workers: int = 2) -> None:
        self.work, self.outage_s = work, outage_s
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.assets = assets_dir()
        video = self.assets / "video" / "pets2009_vtest.mp4"
        self.feed = CropFeed(person_crops(video, self.assets / "weights" / "yolo11n_int8_openvino_model"))
        self.topics = {"crops": "drill.crops", "features": "drill.features", "dead_letter": "drill.dead"}
        self.procs: dict[str, StageProcess] = {}
        self.reid_names = [f"reid{i}" for i in range(reid_workers)]
        self.index: DetectionIndex | None = None
        self.confirmed: set[str] = set()
        self.camera = LoopbackCamera(video_frames(video, 80, every=2), fps=4)
        self.camera.go_down()  # it streams only during its phase
        self.broker_port, self.broker_dir = free_port(), work / "broker"
        self.broker_dir.mkdir(exist_ok=True)
        self.bootstrap = f"127.0.0.1:{self.broker_port}"
        self.broker = start_noida(self.broker_port, self.broker_dir)
        try:
            self.milvus = MilvusLiteServer(work / "milvus").start()
        except BaseException:
            stop_noida(self.broker)
            self.camera.close()
            raise
        self.config = self._write_config()

    def _write_config(self) -> Path:
        weights = self.assets / "weights"
        cfg = {
            "transport": {"kind": "kafka", "bootstrap": self.bootstrap, "group_prefix": "drill"},
            "topics": self.topics,
            "cameras": [{"id": CAMERA, "source": self.camera.url, "fps": 2}],
            "ingest": {
                "detector_weights": str(weights / "yolo11n_int8_openvino_model"),
                "retry": {"initial_s": 0.5, "max_s": 2.0},
            },
            "reid": {"batch_size": 16},
            "matcher": {"milvus_uri": self.milvus.uri, "thumbnails_dir": str(self.work / "thumbnails")},
            "metrics": {"port": "${PGR_METRICS_PORT:-0}"},
        }
        cfg["transport"]["instance_id"] = "${PGR_INSTANCE_ID:-}"  # each service's own (static membership)
        path = self.work / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start(self, name: str) -> StageProcess:
        """Start (or restart, with the same member id and metrics port) one service."""
        stage = "reid" if name.startswith("reid") else name
        old = self.procs.get(name)
        env = {"PGR_INSTANCE_ID": f"drill-{name}", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = StageProcess(
            stage, self.config, self.logs / f"{name}.log", env, port=old.port if old else None
        )
        self.procs[name] = proc
        return proc

    def start_all(self) -> None:
        for name in ("matcher", *self.reid_names, "ingest"):
            self.start(name)
        for p in self.procs.values():
            p.wait_ready(timeout_s=300)

    def indexed(self) -> DetectionIndex:
        """The drill's client of the index, once the matcher has created its collection."""
        if self.index is not None and self.index.dim is None:
            self.index.close()
            self.index = None
        if self.index is None:
            self.index = DetectionIndex(self.milvus.uri, "detections")
        return self.index

    def kill(self, name: str) -> None:
        self.procs[name].stop(signal.SIGKILL)

    def restart_broker(self) -> None:
        stop_noida(self.broker)
        time.sleep(self.outage_s)
        self.broker = start_noida(self.broker_port, self.broker_dir)

    def camera_ids(self, since: float = 0.0) -> list[str]:
        """Ids of the crops the camera published (read from the crops topic), sent at `since` or later."""
        return [
            decode_crop(m.value).detection.detection_id
            for m in topic_messages(self.bootstrap, self.topics["crops"])
            if m.key == CAMERA.encode() and m.timestamp / 1000 >= since
        ]

    def camera_ids_since(self, t: float, timeout_s: float) -> list[str]:
        """Once the camera published a crop at `t` or later (its frames flow again), the ids of those."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_services()
            ids = self.camera_ids(t)
            if ids:
                return ids
            if time.monotonic() > deadline:
                raise TimeoutError(f"the camera published nothing {timeout_s:.0f}s after its return")
            time.sleep(1.0)

    def wait_indexed(self, ids: list[str], timeout_s: float) -> float:
        """Until every id is in the index; returns when that happened (time.time())."""
        pending = [i for i in ids if i not in self.confirmed]
        deadline = time.monotonic() + timeout_s
        while pending:
            self._check_services()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} records not indexed after {timeout_s:.0f}s")
            found = self.indexed().row_counts(pending)
            self.confirmed.update(found)
            pending = [i for i in pending if i not in found]
            if pending:
                time.sleep(0.5)
        return time.time()

    def _check_services(self) -> None:
        for name, p in self.procs.items():
            if p.proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({p.proc.returncode}): {p.tail(1500)}")

    def inject_malformed(self) -> int:
        producer = KafkaTransport(self.bootstrap).producer()
        for raw in MALFORMED_CROPS:
            producer.send(self.topics["crops"], raw)
        for raw in MALFORMED_FEATURES:
            producer.send(self.topics["features"], raw)
        producer.flush()
        producer.close()
        return len(MALFORMED_CROPS) + len(MALFORMED_FEATURES)

    def close(self) -> None:
        for p in self.procs.values():
            p.ensure_stopped()
        if self.index is not None:
            self.index.close()
        self.camera.close()
        self.milvus.stop()
        stop_noida(self.broker)


def run_drill(
    crops: int,
    rate: float = 25.0,
    outage_s: float = 3.0,
    work: Path | None = None,
    progress: Callable[[str], None] = print,
    phase_timeout_s: float = 1800.0,
) -> DrillResult:
    """Run the five faults over `crops` feed crops; returns the table's rows and the end checks."""
    keep = work is not None
    work = work or Path(tempfile.mkdtemp(prefix="pgr-drill-"))
    t0 = time.monotonic()
    drill = Drill(work, outage_s)
    producer = feeder = None
    try:
        progress(f"drill: {crops} crops at {rate:g}/s, outages of {outage_s:g}s, work in {work}")
        drill.start_all()
        producer = KafkaTransport(drill.bootstrap).producer()
        feeder = Feeder(drill.feed, producer, drill.topics["crops"], rate)
        rows, per = [], crops // len(FAULTS)
        for k, fault in enumerate(FAULTS):
            seqs = range(k * per, crops if k == len(FAULTS) - 1 else (k + 1) * per)
            row = FaultRow(fault, started=time.time())
            progress(f"{fault}: {len(seqs)} crops")
            if fault == "camera lost":
                drill.camera.come_back()
            feeder.publish(seqs)
            while feeder.sent() < seqs.start + len(seqs) // 3:
                time.sleep(0.1)
            repaired = _fault(drill, fault, row)
            if fault == "camera lost":
                back = drill.camera_ids_since(repaired, phase_timeout_s)
                done = drill.wait_indexed(back[:1], phase_timeout_s)
            else:
                done = drill.wait_indexed(feeder.ids_before(repaired), phase_timeout_s)
            row.recovery_s = done - repaired
            feeder.join()
            if fault == "camera lost":
                drill.camera.go_down()
                time.sleep(2)  # the last frames through ingest
            row.ids = [drill.feed.detection_id(s) for s in seqs]
            drill.wait_indexed(row.ids, phase_timeout_s)
            row.ended = time.time()
            rows.append(row)
            progress(f"{fault}: caught up {row.recovery_s:.1f}s after the fault ended")
        camera_ids = drill.camera_ids()
        next(r for r in rows if r.fault == "camera lost").ids += camera_ids
        drill.wait_indexed(camera_ids, phase_timeout_s)
        time.sleep(3)  # dead letters of the last batches
        return _count(drill, rows, crops, time.monotonic() - t0)
    finally:
        if feeder is not None:
            feeder.stop()
        if producer is not None:
            producer.close()
        drill.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _fault(drill: Drill, fault: str, row: FaultRow) -> float:
    """Do one fault; returns when it ended (the repair's time)."""
    if fault == "reid worker SIGKILL":
        drill.kill(drill.reid_names[0])
        time.sleep(drill.outage_s)
        drill.start(drill.reid_names[0])
    elif fault == "matcher SIGKILL":
        drill.kill("matcher")
        time.sleep(drill.outage_s)
        drill.start("matcher")
    elif fault == "broker restart":
        drill.restart_broker()
    elif fault == "camera lost":
        drill.camera.go_down()
        time.sleep(drill.outage_s)
        drill.camera.come_back()
    else:
        row.injected = drill.inject_malformed()
    return time.time()


def _count(drill: Drill, rows: list[FaultRow], crops: int, seconds: float) -> DrillResult:
    """Lost, duplicated and dead-lettered per fault, from the index and the dead-letter topic."""
    letters = [json.loads(m.value) for m in topic_messages(drill.bootstrap, drill.topics["dead_letter"])]
    for k, row in enumerate(rows):
        counts = drill.indexed().row_counts(row.ids)
        row.published = len(row.ids)
        row.indexed = len(counts)
        row.lost = row.published - row.indexed
        row.duplicated = sum(n - 1 for n in counts.values())
        until = rows[k + 1].started if k + 1 < len(rows) else float("inf")
        row.dead_lettered = sum(1 for d in letters if row.started <= d["failed_at"] < until)
    published_rows = sum(drill.indexed().row_counts([i for r in rows for i in r.ids]).values())
    extra = drill.indexed().count() - published_rows
    # each dead letter names its topic and carries the record: the very records injected, once each
    origins = [(d["source_topic"], d["stage"], base64.b64decode(d["payload"])) for d in letters]
    injected = [(drill.topics["crops"], "reid", raw) for raw in MALFORMED_CROPS]
    injected += [(drill.topics["features"], "matcher", raw) for raw in MALFORMED_FEATURES]
    return DrillResult(rows, crops, seconds, extra, sorted(origins) == sorted(injected))


def format_table(result: DrillResult) -> str:
    """The drill's table (Markdown) and its verdict."""
    lines = [
        "| fault | published | indexed | lost | duplicated | dead-lettered (injected) | recovery s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result.rows:
        lines.append(
            f"| {r.fault} | {r.published} | {r.indexed} | {r.lost} | {r.duplicated} | "
            f"{r.dead_lettered} ({r.injected}) | {r.recovery_s:.1f} |"
        )
    total = sum(r.published for r in result.rows)
    lines.append(
        f"\n{total} records ({result.crops} feed crops and the camera's), {result.seconds:.0f} s; rows "
        f"nobody published: {result.extra_rows}; dead letters exactly the injected records: "
        f"{'yes' if result.dead_letter_origins_ok else 'NO'}; verdict: {'PASS' if result.ok else 'FAIL'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgr.app.fault_drill", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--crops", type=int, default=1000, help="feed crops, spread over the five faults")
    parser.add_argument("--rate", type=float, default=25.0, help="feed crops published per second")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds each fault lasts")
    parser.add_argument("--work", help="keep the drill's broker, index and logs in this folder")
    parser.add_argument("--out", help="also write the table here (Markdown)")
    args = parser.parse_args(argv)
    if args.crops < len(FAULTS) * 3 or args.rate <= 0 or args.outage < 0:
        parser.error(f"--crops must be at least {len(FAULTS) * 3}, --rate positive, --outage not negative")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.work) if args.work else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    result = run_drill(args.crops, args.rate, args.outage, work)
    table = format_table(result)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    table += f"\nmachine: {os.cpu_count()} CPUs, load average {load} at the end"
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
