"""A real Prometheus (Debian's `prometheus`) scrapes ingest, two re-ID workers, the matcher and the search
server, running as processes over Kafka on real video, with the shipped jobs and alert rules
(docker/prometheus/). Checked through Prometheus' HTTP API: every target is up; its counters match what
flowed through the topics and into the index; every dashboard query returns data; and each alert fires on the
fault it is about and resolves when the fault ends:

  PgrFramesDropped      a camera (an image folder) with a quarter of its frames corrupt
  PgrCameraDown         a live MJPEG camera that disappears (and comes back)
  PgrConsumerLagHigh    a burst of 1,500 small crops, more than the re-ID workers take at once
  PgrDeadLetters        malformed records injected into the crops topic
  PgrIdentityEventsStalled  the burst comes from a camera whose clock stopped: indexed, no identity decided
  PgrServiceDown        a re-ID worker SIGKILLed (and its successor started on the same port)
  PgrIndexWriteErrors   the Milvus server killed while the matcher writes (and started again)
  PgrServiceMissing     the re-ID job taken out of Prometheus' config (and put back)

The rules run as shipped, except that every duration (each `for` and each range) is divided by TIME_SCALE,
and so are the scrape and evaluation intervals and Prometheus' look-back for a series no longer scraped:
the same expressions and thresholds, in seconds instead of minutes. The alerts' timeline (Prometheus'
ALERTS series) is written to tests/artifacts/.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from kafka import KafkaProducer

from matcher.index import DetectionIndex
from pgr.app.crop_feed import CropFeed, person_crops
from pgr.app.local_stack import (
    MilvusLiteServer,
    StageProcess,
    free_port,
    scrape,
    topic_messages,
    topic_records,
    wait_for_port,
)
from pgr.app.loopback_camera import LoopbackCamera, video_frames
from pgr.messages import MalformedRecord, decode_crop, decode_feature
from pgr.paths import REPO
from pgr.settings import load_settings
from tests.conftest import write_clip
from tests.test_dashboard import dashboard_queries

pytestmark = pytest.mark.kafka

SHIPPED = REPO / "docker" / "prometheus"
ARTIFACTS = Path(__file__).parent / "artifacts"
TIME_SCALE = 30  # 15 s scrapes become 0.5 s, a 10 m window 20 s, `for: 1m` 2 s
LOOKBACK = "5m"  # Prometheus' default: how long a series that stopped being scraped still answers queries
ALL_ALERTS = {
    "PgrFramesDropped",
    "PgrCameraDown",
    "PgrConsumerLagHigh",
    "PgrDeadLetters",
    "PgrIdentityEventsStalled",
    "PgrServiceDown",
    "PgrIndexWriteErrors",
    "PgrServiceMissing",
}
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def scaled(duration: str) -> str:
    """A Prometheus duration ("1h30m", "15s") divided by TIME_SCALE, in milliseconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    return f"{sum(int(n) * _UNITS_MS[u] for n, u in parts) // TIME_SCALE}ms"


def scaled_rules(text: str) -> dict:
    """The shipped rules with every `for` and every range divided by TIME_SCALE."""
    rules = yaml.safe_load(text)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = scaled(rule["for"])
            rule["expr"] = re.sub(r"\[(\w+)\]", lambda m: f"[{scaled(m.group(1))}]", rule["expr"])
    return rules


def test_shipped_config_and_rules_pass_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("no promtool: apt-get install prometheus (CI does)")
    for what, path in (("config", SHIPPED / "prometheus.yml"), ("rules", SHIPPED / "alerts.yml")):
        out = subprocess.run([promtool, "check", what, str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 8 rules found" in out.stdout


def test_scaling_keeps_the_expressions(tmp_path):
    rules = scaled_rules((SHIPPED / "alerts.yml").read_text())
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(by_name) == ALL_ALERTS
    assert by_name["PgrCameraDown"]["for"] == "2000ms"
    assert "[20000ms]" in by_name["PgrDeadLetters"]["expr"] and "10m" not in by_name["PgrDeadLetters"]["expr"]
    path = tmp_path / "alerts.yml"
    path.write_text(yaml.safe_dump(rules))
    promtool = shutil.which("promtool") or pytest.fail("no promtool: apt-get install prometheus")
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


class Prometheus:
    """A Prometheus server on loopback over a temporary folder: the shipped jobs with local targets, the
    shipped rules scaled in time. Its own systemd service (Debian's package) plays no part."""

    def __init__(self, folder: Path, targets: dict[str, list[int]]) -> None:
        exe = shutil.which("prometheus")
        if exe is None:
            pytest.fail("no prometheus: apt-get install prometheus (CI does)")
        self.folder, self.port = folder, free_port()
        folder.mkdir()
        (folder / "alerts.yml").write_text(yaml.safe_dump(scaled_rules((SHIPPED / "alerts.yml").read_text())))
        self.url = f"http://127.0.0.1:{self.port}"
        self.configure(targets)
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--query.lookback-delta={scaled(LOOKBACK)}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=(folder / "prometheus.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)
        deadline = time.monotonic() + 30
        while self._get("/-/ready", raw=True) != 200:
            assert time.monotonic() < deadline, (folder / "prometheus.log").read_text()[-2000:]
            time.sleep(0.2)

    def configure(self, targets: dict[str, list[int]]) -> None:
        """Write the shipped config with these jobs' targets on loopback (a job not given is left out)."""
        cfg = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
        interval = scaled(cfg["global"]["scrape_interval"])
        cfg["global"] = {
            "scrape_interval": interval,
            "evaluation_interval": scaled(cfg["global"]["evaluation_interval"]),
            "scrape_timeout": interval,
        }
        cfg["rule_files"] = [str(self.folder / "alerts.yml")]
        jobs = []
        for job in cfg["scrape_configs"]:
            name = job["job_name"]
            ports = [self.port] if name == "prometheus" else targets.get(name)
            if ports:
                jobs.append(
                    {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}
                )
        cfg["scrape_configs"] = jobs
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(cfg))

    def reload(self, targets: dict[str, list[int]]) -> None:
        self.configure(targets)
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/-/reload", method="POST"), timeout=10)

    def _get(self, path: str, raw: bool = False, **params):
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.status if raw else json.loads(r.read())["data"]
        except OSError:
            if raw:
                return None
            raise

    def query(self, expr: str) -> list[dict]:
        return self._get("/api/v1/query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        """The value of a query that gives one series (None when it gives none)."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def wait(self, expr: str, want, timeout_s: float = 120, what: str = "") -> None:
        """Until `want(value of expr)` holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            v = self.value(expr)
            if v is not None and want(v):
                return
            assert time.monotonic() < deadline, f"{what or expr}: last value {v}"
            time.sleep(0.5)

    def firing(self) -> list[dict]:
        return [a for a in self._get("/api/v1/alerts")["alerts"] if a["state"] == "firing"]

    def wait_firing(self, alert: str, timeout_s: float = 120, **labels: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(
            a["labels"]["alertname"] == alert and all(a["labels"].get(k) == v for k, v in labels.items())
            for a in self.firing()
        ):
            assert time.monotonic() < deadline, f"{alert} {labels} never fired: {self.firing()}"
            time.sleep(0.5)

    def timeline(self, start: float, end: float) -> dict[tuple[str, str], list[tuple[float, float]]]:
        """Per alert (name, labels), the spans during which Prometheus had it firing (from ALERTS)."""
        step = 0.5
        data = self._get(
            "/api/v1/query_range", query='ALERTS{alertstate="firing"}', start=start, end=end, step=step
        )
        spans: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for series in data["result"]:
            labels = dict(series["metric"])
            name = labels.pop("alertname")
            for k in ("__name__", "alertstate", "severity"):
                labels.pop(k, None)
            key = (name, ",".join(f"{k}={v}" for k, v in sorted(labels.items())))
            times = [float(t) for t, _ in series["values"]]
            out = spans.setdefault(key, [])
            for t in times:
                if out and t - out[-1][1] <= 2 * step:
                    out[-1] = (out[-1][0], t)
                else:
                    out.append((t, t))
        return spans

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _stills(folder: Path, video: Path, good: int, corrupt: int) -> Path:
    """An image-folder camera: `good` frames of the video, every third of them followed by a corrupt one."""
    write_clip(video, folder, good, every=5)
    for i in range(corrupt):
        (folder / f"still_{i * 15:04d}_x.jpg").write_bytes(b"\xff\xd8\xff garbage, not a JPEG body")
    return folder


@pytest.fixture
def camera(pets_video):
    """A live camera on loopback streaming PETS 2009 frames."""
    cam = LoopbackCamera(video_frames(pets_video, 60, every=2), fps=4)
    try:
        yield cam
    finally:
        cam.close()


def test_prometheus_scrapes_every_service_and_fires_and_resolves_each_alert(
    kafka_bootstrap, write_config, pets_video, camera, milvus_server, tmp_path
):
    t_start, milvus = time.time(), milvus_server
    good, corrupt = 12, 4
    stills = _stills(tmp_path / "stills", pets_video, good, corrupt)
    group = f"prom{uuid.uuid4().hex[:6]}"
    config = write_config(
        transport={
            "kind": "kafka",
            "bootstrap": kafka_bootstrap,
            "group_prefix": group,
            "instance_id": "${PGR_INSTANCE_ID:-}",
        },
        cameras=[
            {"id": "door", "source": camera.url, "fps": 1},
            {"id": "stills", "source": str(stills), "fps": 1, "realtime": True, "track": False},
        ],
        ingest={"retry": {"initial_s": 0.2, "max_s": 1.0, "max_attempts": None}},
        # a tracklet ends when its camera's clock runs past it, never from idleness during this test
        matcher={"milvus_uri": milvus.uri, "batch_size": 16, "identities": {"idle_end_s": 600}},
        metrics={"port": "${PGR_METRICS_PORT:-0}"},
        serve={"port": free_port(), "metrics_port": "${PGR_METRICS_PORT:-}", "retention_days": None},
    )
    settings = load_settings(config)
    topics = settings.topics
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: dict[str, StageProcess] = {}
    prometheus = None

    def start(name: str, stage: str, port: int | None = None) -> StageProcess:
        env = {"PGR_INSTANCE_ID": f"{group}-{name}"}
        procs[name] = StageProcess(stage, config, logs / f"{name}.log", env, port=port)
        return procs[name]

    def targets() -> dict[str, list[int]]:
        jobs: dict[str, list[int]] = {}
        for p in procs.values():
            jobs.setdefault(f"pgr-{p.stage}", []).append(p.port)
        return jobs

    try:
        for name, stage in (("matcher", "matcher"), ("reid1", "reid"), ("reid2", "reid"), ("serve", "serve")):
            start(name, stage)
        for p in procs.values():
            p.wait_ready()
        # both re-ID workers hold partitions (each exports the lag of its own) before a crop flows
        _wait(lambda: all(_lag_series(procs[n]) for n in ("reid1", "reid2", "matcher")), 180, procs)
        start("ingest", "ingest").wait_ready()
        prometheus = Prometheus(tmp_path / "prometheus", targets())
        prom = prometheus

        # every target is up: each answered a scrape in the last 3 s (the scaled scrapes time out after
        # 0.5 s, which a busy 2-core CI machine sometimes misses for one target at a time)
        prom.wait("count(max_over_time(up[3s]) == 1)", lambda v: v == len(procs) + 1, 60, "targets up")
        assert {t["labels"]["job"] for t in prom._get("/api/v1/targets")["activeTargets"]} == {
            "pgr-ingest",
            "pgr-reid",
            "pgr-matcher",
            "pgr-serve",
            "prometheus",
        }

        # Phase A: the door camera and the stills flow; the door goes away; counters match what flowed.
        prom.wait('pgr_crops_published_total{camera="door"}', lambda v: v >= 10, 180, "door crops")
        _wait(lambda: "camera stills: finished" in procs["ingest"].log.read_text(), 120, procs)
        camera.go_down()
        prom.wait_firing("PgrCameraDown", camera="door")
        crops = topic_records(kafka_bootstrap, topics.crops)
        n = len(crops)
        prom.wait("sum(pgr_crops_published_total)", lambda v: v == n, 60, "crops published")
        prom.wait("sum(pgr_records_indexed_total)", lambda v: v >= n, 180, "records indexed")
        features = [
            decode_feature(r).detection.detection_id for r in topic_records(kafka_bootstrap, topics.features)
        ]
        rows = _rows(milvus, settings)
        print(f"phase A: {n} crops, {len(features)} feature records, {rows} rows")
        assert rows == n == len(set(features))
        assert prom.value("sum(pgr_features_extracted_total)") == len(features)
        assert prom.value("sum(pgr_records_indexed_total)") == len(features)
        assert prom.value('pgr_frames_read_total{camera="stills"}') == good
        assert prom.value('pgr_frames_dropped_total{camera="stills",reason="corrupt"}') == corrupt
        for cam in ("door", "stills"):
            published = prom.value(f'pgr_crops_published_total{{camera="{cam}"}}')
            assert published > 0 and prom.value(f'pgr_detections_total{{camera="{cam}"}}') >= published
        prom.wait("max(pgr_gallery_size)", lambda v: v == n, 60, "gallery size")
        prom.wait("sum(pgr_consumer_lag)", lambda v: v == 0, 60, "lag drained")
        partitions = settings.transport.partitions
        assert prom.value('count(pgr_consumer_lag{stage="reid"})') == partitions
        assert prom.value('count(pgr_consumer_lag{stage="matcher"})') == partitions
        assert prom.value('count(count by (instance) (pgr_consumer_lag{stage="reid"}))') == 2
        assert prom.value('sum(pgr_identity_events_total{kind="created"})') > 0

        # Phase B: a burst from a camera whose clock stopped, and malformed records.
        burst = CropFeed(
            person_crops(pets_video, settings.ingest.detector_weights),
            cameras=("frozen",),
            crops_per_track=1,
            frozen_clock=True,
        )
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20)
        for bad in (b"\x00not a record", b"{}", b'{"kind": "pgr.crop", "version": 1}'):
            producer.send(topics.crops, bad)
        producer.flush()
        prom.wait_firing("PgrDeadLetters", stage="reid")
        # the burst: enough that the workers stay more than 1,000 behind for a while at the speed they go here
        burst_size = 0
        while burst_size < 8000:
            speed = prom.value("sum(rate(pgr_features_extracted_total[10s]))") or 0.0
            if (prom.value('sum(pgr_consumer_lag{stage="reid"})') or 0) > 1000 + 12 * max(speed, 10):
                break
            for seq in range(burst_size, burst_size + 200):
                _, key, value = burst.record(seq)
                producer.send(topics.crops, value, key=key, partition=seq % partitions)
            producer.flush()
            burst_size += 200
            time.sleep(1.0)
        print(f"burst of {burst_size} crops")
        prom.wait_firing("PgrConsumerLagHigh", stage="reid")
        prom.wait_firing("PgrIdentityEventsStalled", 180)

        # a re-ID worker dies; its successor takes its port and its partitions
        port = procs["reid2"].port
        procs["reid2"].stop(signal.SIGKILL)
        prom.wait_firing("PgrServiceDown", job="pgr-reid", instance=f"127.0.0.1:{port}")
        start("reid2", "reid", port=port).wait_ready()

        # the index goes away while the matcher has records to write, then comes back
        milvus.kill()
        feed = CropFeed(burst.jpegs, cameras=("feed0",))
        for seq in range(20):
            _, key, value = feed.record(seq)
            producer.send(topics.crops, value, key=key)
        producer.flush()
        prom.wait_firing("PgrIndexWriteErrors", 240, reason="unavailable")
        milvus.start()

        # Phase C: the door comes back; the re-ID job leaves Prometheus' config and returns; all resolve.
        camera.come_back()
        jobs = targets()
        prom.reload({k: v for k, v in jobs.items() if k != "pgr-reid"})
        prom.wait_firing("PgrServiceMissing")
        prom.reload(jobs)
        prom.wait('count(up{job="pgr-reid"} == 1)', lambda v: v == 2, 60, "re-ID workers scraped again")
        drained = f"count(pgr_consumer_lag) == {2 * partitions} and sum(pgr_consumer_lag) < 20"
        prom.wait(drained, lambda v: True, 600, "burst drained")
        _wait(lambda: not prom.firing(), 180, procs, lambda: f"still firing: {prom.firing()}")

        # every panel of the dashboard has data
        empty = [(title, q) for title, q in dashboard_queries() if not prom.query(q)]
        assert not empty, f"dashboard queries without data: {empty}"

        # the evidence: each alert's firing spans, from Prometheus' ALERTS series
        spans = prom.timeline(t_start, time.time())
        report = [f"alerts of {Path(__file__).name} (rules' durations / {TIME_SCALE}), seconds from start:"]
        for (name, labels), periods in sorted(spans.items()):
            shown = ", ".join(f"{a - t_start:.1f}-{b - t_start:.1f}" for a, b in periods)
            report.append(f"  {name:26s} {labels:60s} firing {shown}")
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "prometheus_alerts.txt").write_text("\n".join(report) + "\n")
        print("\n".join(report))
        assert {name for name, _ in spans} == ALL_ALERTS
        assert not prom.firing(), "each alert resolved"
        rules = prom._get("/api/v1/rules")["groups"][0]["rules"]
        assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]

        # what flowed is all in the index, once; exactly the malformed records were dead-lettered
        assert procs["ingest"].stop() == 0
        valid = {decode_crop(r).detection.detection_id for r in _decodable(kafka_bootstrap, topics.crops)}
        assert len(valid) >= n + burst_size + 20
        running = {k: p for k, p in procs.items() if k != "ingest"}  # ingest was stopped on purpose above
        _wait(
            lambda: _rows(milvus, settings) == len(valid), 180, running, lambda: f"{_rows(milvus, settings)}"
        )
        letters = [json.loads(m.value) for m in topic_messages(kafka_bootstrap, topics.dead_letter)]
        assert len({(d["source_topic"], d["partition"], d["offset"]) for d in letters}) == 3
    finally:
        for p in procs.values():
            if p.proc.poll() is None:
                p.stop(signal.SIGKILL)
        if prometheus is not None:
            prometheus.stop()


def _rows(milvus: MilvusLiteServer, settings) -> int:
    index = DetectionIndex(milvus.uri, settings.matcher.collection)
    try:
        return index.count()
    finally:
        index.close()


def _decodable(bootstrap: str, topic: str) -> list[bytes]:
    out = []
    for raw in topic_records(bootstrap, topic):
        try:
            decode_crop(raw)
        except MalformedRecord:
            continue
        out.append(raw)
    return out


def _lag_series(p: StageProcess) -> bool:
    try:
        return any(name == "pgr_consumer_lag" for name, _ in scrape(p.port))
    except OSError:
        return False


def _wait(cond, timeout_s: float, procs: dict[str, StageProcess], why=lambda: "") -> None:
    """Until cond() holds; AssertionError when a service exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        for name, p in procs.items():
            assert p.proc.poll() is None, f"{name} exited: {p.tail()}"
        assert time.monotonic() < deadline, f"timed out: {why()}"
        time.sleep(0.5)
