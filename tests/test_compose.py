"""docker/compose.yaml, checked without a Docker engine: it parses; every file it builds from or mounts
exists; Prometheus scrapes its services on the port it gives them and Grafana finds the dashboard where it
mounts it; and each PGR service starts from its own command and environment, the compose network's names
replaced by local stand-ins (a noida-db broker for Kafka, a milvus-lite server for Milvus, folders for the
volumes), and does its job: crops published, two re-ID workers sharing one consumer group, records
indexed, the search server answering."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pgr.app.local_stack import (
    StageProcess,
    free_port,
    scrape,
    start_noida,
    stop_noida,
)
from pgr.paths import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
PGR_SERVICES = ("ingest", "reid", "matcher", "serve")
WORKDIR = "/app"  # the image's WORKDIR: the repository's root inside the container
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with `env` (default: none set)."""
    env = env or {}

    def one(m: re.Match) -> str:
        name, op, rest = m.groups()
        if env.get(name):
            return env[name]
        if op and "?" in op:
            raise ValueError(f"{name} must be set: {rest}")
        return rest if op else ""

    return _VAR.sub(one, value)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def dockerfile_workdir() -> str:
    return re.search(r"^WORKDIR\s+(\S+)", (DOCKER / "Dockerfile").read_text(), re.M).group(1)


def bind_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts (named volumes left out)."""
    out = []
    for v in service.get("volumes", []):
        source, target = interpolate(v).split(":")[:2]
        if source.startswith((".", "/")):
            out.append(((DOCKER / source).resolve(), target))
    return out


def test_compose_names_every_part_with_health_checks_and_volumes():
    c = compose()
    services = c["services"]
    assert set(services) == {"kafka", "milvus", "prometheus", "grafana", *PGR_SERVICES}
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and "KAFKA_ZOOKEEPER_CONNECT" not in kafka
    assert services["milvus"]["command"][-1] == "standalone"
    for name, s in services.items():
        assert s.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for port in s.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if ":" in v}
    named = {v for v in named if not v.startswith(("$", ".", "/"))}
    assert named == set(c["volumes"]) and {"kafka-data", "milvus-data", "pgr-data"} <= named
    assert int(interpolate(str(services["reid"]["deploy"]["replicas"]))) >= 2
    for name in ("kafka", "milvus"):
        assert all(
            services[s]["depends_on"][name]["condition"] == "service_healthy" for s in PGR_SERVICES[:3]
        )


def test_every_file_compose_builds_from_or_mounts_exists():
    c = compose()
    for name, s in c["services"].items():
        for host, _ in bind_mounts(s):
            if "shared/assets" in str(host):  # the model weights and videos: outside the repository
                continue
            assert host.exists(), f"{name} mounts {host}, which does not exist"
        if "build" in s:
            context = (DOCKER / s["build"]["context"]).resolve()
            assert context == REPO and (context / s["build"]["dockerfile"]).is_file()
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
    assert dockerfile_workdir() == WORKDIR
    for name in PGR_SERVICES:
        command = c["services"][name]["command"]
        config = command[command.index("--config") + 1]
        assert (REPO / config).is_file(), f"{name} runs with {config}, which does not exist"


def test_prometheus_and_grafana_see_the_compose_services():
    c = compose()
    services = c["services"]
    ((prom_dir, prom_target),) = bind_mounts(services["prometheus"])
    assert prom_target == "/etc/prometheus"
    config_flag = next(a for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    config = prom_dir / Path(config_flag.split("=", 1)[1]).relative_to(prom_target)
    promtool = shutil.which("promtool") or pytest.fail("no promtool: apt-get install prometheus (CI does)")
    out = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    prom = yaml.safe_load(config.read_text())
    metrics_port = int(services["ingest"]["environment"]["PGR_METRICS_PORT"])
    jobs = {}
    for job in prom["scrape_configs"]:
        hosts = [tuple(t.rsplit(":", 1)) for sc in job.get("static_configs", []) for t in sc["targets"]]
        hosts += [(n, str(sd["port"])) for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
        jobs[job["job_name"]] = hosts
    for name in PGR_SERVICES:
        assert jobs[f"pgr-{name}"] == [(name, str(metrics_port))], jobs
    assert services["serve"]["environment"]["PGR_SERVE_METRICS_PORT"] == str(metrics_port)
    assert prom["rule_files"] and all((config.parent / f).is_file() for f in prom["rule_files"])

    mounts = dict((target, host) for host, target in bind_mounts(services["grafana"]))
    provisioning = mounts["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards" / "pgr.yml").read_text())["providers"][0]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / "pgr.json").is_file()
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in services


def _local_environment(service: dict, local: dict[str, str], var: Path, assets: Path) -> dict[str, str]:
    """A compose service's environment with the compose network's names and the containers' paths replaced
    by local ones."""
    env = {k: interpolate(str(v)) for k, v in (service.get("environment") or {}).items()}
    env["PGR_ASSETS"] = str(assets)  # the image's ENV; compose mounts the assets there
    for key, value in env.items():
        for remote, here in local.items():
            value = value.replace(remote, here)
        env[key] = value.replace(f"{WORKDIR}/var", str(var))
    return env


@pytest.mark.kafka
def test_each_pgr_service_starts_from_the_compose_config(tmp_path, assets_dir, milvus_server):
    c = compose()
    services = c["services"]
    assert services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    broker_port, milvus = free_port(), milvus_server
    (tmp_path / "kafka").mkdir()
    broker = start_noida(broker_port, tmp_path / "kafka")
    local = {
        "kafka:9092": f"127.0.0.1:{broker_port}",
        "http://milvus:19530": milvus.uri,
        "0.0.0.0": "127.0.0.1",  # a test binds loopback only
    }
    var = tmp_path / "var"
    procs: dict[str, StageProcess] = {}
    serve_port = free_port()

    def start(name: str) -> None:
        s = services[name]
        replicas = int(interpolate(str(s.get("deploy", {}).get("replicas", 1))))
        env = _local_environment(s, local, var, assets_dir)
        env["PGR_MEMBER_LOCKS"] = str(tmp_path / "locks")
        if name == "serve":
            env["PGR_SERVE_PORT"] = str(serve_port)
            env["PGR_SERVE_METRICS_PORT"] = str(free_port())
        port = int(env["PGR_SERVE_METRICS_PORT"]) if name == "serve" else None
        for i in range(replicas):
            key = f"{name}{i}" if replicas > 1 else name
            log = tmp_path / f"{key}.log"
            procs[key] = StageProcess(name, None, log, env, port=port, args=list(s["command"]))

    try:
        for name in ("matcher", "reid", "serve"):
            start(name)
        reid = [p for k, p in procs.items() if k.startswith("reid")]
        assert len(reid) >= 2
        for p in procs.values():
            p.wait_ready(timeout_s=240)

        def owned(p: StageProcess) -> set[str]:
            return {dict(labels)["partition"] for n, labels in scrape(p.port) if n == "pgr_consumer_lag"}

        def shared(shares: list[set[str]]) -> bool:  # each partition owned by exactly one worker
            return set().union(*shares) == {"0", "1", "2", "3"} and sum(map(len, shares)) == 4

        # a worker exports its lag every few seconds: one that just lost partitions to a rebalance still
        # shows them until its next look-up, so wait for the exported shares to settle
        deadline = time.monotonic() + 240
        while not shared(shares := [owned(p) for p in reid]) or not all(shares):
            assert all(p.proc.poll() is None for p in procs.values()), _tails(procs)
            assert time.monotonic() < deadline, (
                f"the re-ID workers did not share the partitions: {shares}\n{_tails(procs)}"
            )
            time.sleep(1)

        # the compose ingest reads the shared videos, which end: a finished ingest exits 0 and stays down,
        # so it starts last and counts as published by its metrics while it runs or its log once done
        start("ingest")
        _wait_published(procs["ingest"], timeout_s=240)
        procs["matcher"].wait_metric("pgr_records_indexed_total", 1, timeout_s=240)
        assert sum(p.total("pgr_features_extracted_total") for p in reid) >= 1
        with urllib.request.urlopen(f"http://127.0.0.1:{serve_port}/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        assert any(n == "pgr_search_seconds_count" for n, _ in scrape(procs["serve"].port))
        assert (var / "thumbnails").is_dir()
    finally:
        for p in procs.values():
            p.ensure_stopped()
        stop_noida(broker)


def _wait_published(ingest: StageProcess, timeout_s: float) -> None:
    """Until the ingest published a crop of camera "pets": by its metrics, or its log once it finished."""
    deadline = time.monotonic() + timeout_s
    while ingest.metric("pgr_crops_published_total", (("camera", "pets"),)) < 1:
        rc = ingest.proc.poll()
        if rc is not None:
            assert rc == 0 and re.search(
                r"camera pets: finished, [1-9]\d* crops published", ingest.tail(10**6)
            ), f"ingest exited {rc} without publishing: {ingest.tail()}"
            return
        assert time.monotonic() < deadline, f"ingest published nothing in {timeout_s}s: {ingest.tail()}"
        time.sleep(0.5)


def _tails(procs: dict[str, StageProcess]) -> str:
    return "\n".join(f"--- {k}\n{p.tail(1500)}" for k, p in procs.items())


def test_interpolation_reads_defaults_and_environment():
    assert interpolate("${A:-x}/${B}") == "x/"
    assert interpolate("${A:-x}", {"A": "y"}) == "y"
    assert interpolate("${GRAFANA_ADMIN_PASSWORD:-admin}") == "admin"
    with pytest.raises(ValueError, match="X must be set"):
        interpolate("${X:?say so}")
    assert os.path.isabs(str(bind_mounts({"volumes": ["./prometheus:/etc/prometheus:ro"]})[0][0]))
