"""The Grafana dashboard and the alert rules ask only for metrics the code exports: every metric name in a
panel's or a rule's PromQL is one of the series the services' prometheus_client registries produce (or
Prometheus' own `up`). tests/test_prometheus.py also runs every panel's query against a real Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from pgr.metrics import PipelineMetrics, ServeMetrics
from pgr.paths import REPO

DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "pgr.json"
ALERTS = REPO / "docker" / "prometheus" / "alerts.yml"
PROMETHEUS_OWN = {"up"}  # series Prometheus writes itself for every target
# Grafana's variables, as a query against Prometheus sees them once Grafana filled them in
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$camera": ".*"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool"}
_KEYWORDS |= {"offset", "inf", "nan"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, Grafana's variables filled in."""
    out = []
    for panel in json.loads(path.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def rule_queries(path: Path = ALERTS) -> list[tuple[str, str]]:
    """(alert name, PromQL) of every rule."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return [(r.get("alert") or r["record"], r["expr"]) for g in groups for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and durations left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if not call and word.lower() not in _KEYWORDS:
            names.add(word)
    return names


def exported_names() -> set[str]:
    """Every series name the services' registries export (a new PipelineMetrics and ServeMetrics hold every
    metric a stage or the search server registers)."""
    names = set()
    for registry in (PipelineMetrics().registry, ServeMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def test_metric_names_are_read_from_promql():
    expr = (
        'histogram_quantile(0.95, sum by (le, stage) (rate(pgr_stage_latency_seconds_bucket{stage="x"}[5m])))'
        " / on (stage) group_left max without (job) (pgr_gallery_size offset 5m) > bool 2e3"
        ' and up{job=~"pgr-.*"} unless absent(pgr_nope_total)'
    )
    assert metric_names(expr) == {
        "pgr_stage_latency_seconds_bucket",
        "pgr_gallery_size",
        "up",
        "pgr_nope_total",
    }


def test_the_registries_list_what_a_stage_exports():
    names = exported_names()
    assert {"pgr_frames_read_total", "pgr_consumer_lag", "pgr_stage_latency_seconds_bucket"} <= names
    assert "pgr_search_seconds_count" in names and "pgr_frames_read" not in names


def test_every_panel_asks_for_exported_metrics():
    queries = dashboard_queries()
    assert len({title for title, _ in queries}) >= 12
    exported = exported_names() | PROMETHEUS_OWN
    unknown = {(title, n) for title, q in queries for n in metric_names(q) if n not in exported}
    assert not unknown, f"panels ask for metrics nobody exports: {sorted(unknown)}"
    asked = {n for _, q in queries for n in metric_names(q)}
    wanted = ("frames_read", "frames_dropped", "detections", "stage_latency", "consumer_lag")
    wanted += ("dead_lettered", "gallery_size", "identity_events")
    assert all(any(w in n for n in asked) for w in wanted), asked


def test_every_alert_rule_asks_for_exported_metrics():
    exported = exported_names() | PROMETHEUS_OWN
    unknown = {(a, n) for a, q in rule_queries() for n in metric_names(q) if n not in exported}
    assert not unknown, f"alert rules ask for metrics nobody exports: {sorted(unknown)}"


def test_a_panel_with_an_unknown_metric_is_caught(tmp_path):
    board = json.loads(DASHBOARD.read_text())
    board["panels"][0]["targets"][0]["expr"] = "sum(rate(pgr_frames_readd_total[$__rate_interval]))"
    path = tmp_path / "board.json"
    path.write_text(json.dumps(board))
    exported = exported_names()
    assert {n for _, q in dashboard_queries(path) for n in metric_names(q)} - exported == {
        "pgr_frames_readd_total"
    }
