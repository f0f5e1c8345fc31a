"""The Grafana dashboard and its provisioning, and the metric names every PromQL
expression uses (dashboard and alerting rules) against what the service exports.

The exported names come from the code itself: ``shared.metrics`` is imported in a
subprocess (without ``PROMETHEUS_MULTIPROC_DIR``) and ``prometheus_client.REGISTRY``
is walked, so a renamed metric breaks this test, not a dashboard in production.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DASHBOARD = DASHBOARD_DIR / "video-stream-processor.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "video-stream-processor.yml"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
COMPOSE_FILE = ROOT / "docker-compose.yml"

# Series Prometheus itself attaches to every target; the only ones used here.
PROMETHEUS_BUILTINS = {"up"}

# What issues 4 and 15 ask the dashboard to show, by the series that show it.
REQUIRED_ON_DASHBOARD = {
    "processor_uploaded_bytes_total",             # throughput, bytes/s
    "processor_chunks_uploaded_total",            # chunks/s
    "processor_lag_bytes",
    "processor_active_streams",
    "processor_oldest_stream_age_seconds",
    "processor_upload_retries_total",
    "processor_s3_errors_total",                  # by kind
    "processor_chunk_upload_seconds_bucket",      # p50/p99
    "processor_checkpoint_write_seconds_bucket",
    "processor_dispatch_seconds_bucket",
    "processor_workers_alive",
    "processor_workers_configured",
    "processor_worker_restarts_total",
    "processor_s3_ready",
    # issue 15 (local retention)
    "processor_watch_dir_free_bytes",
    "processor_min_free_bytes",
    "processor_source_files_removed_total",       # by reason
    "processor_source_bytes_removed_total",
    "processor_retention_blocked_total",
}

# Grafana's macros, replaced by plausible values so that promtool can parse the query.
GRAFANA_MACROS = {
    "$__rate_interval": "1m", "$__interval": "15s", "$__range": "6h",
    "$job": "video-stream-processor", "$instance": ".*",
}

_EXPORTED_NAMES_SCRIPT = """
import json
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, REGISTRY
for collector in (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR):
    REGISTRY.unregister(collector)  # the service's /metrics does not serve these
import shared.metrics  # noqa: F401  (registers the service's metrics)
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"],
            "summary": ["", "_count", "_sum"], "gauge": [""], "info": ["_info"],
            "stateset": [""], "enum": [""], "unknown": [""]}
names = set()
for family in REGISTRY.collect():
    names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, [""]))
    names.update(s.name for s in family.samples if not s.name.endswith("_created"))
print(json.dumps(sorted(names)))
"""

# --- PromQL: the metric names an expression selects ---------------------------------------

_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan",
    # aggregation operators, which may be followed by `by (...)` instead of `(`
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.I)
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names selected in a PromQL expression: identifiers outside label
    matchers, ranges, grouping clauses and strings that are neither function calls
    nor keywords."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"#[^\n]*", " ", text)            # comments
    text = re.sub(r"\{[^{}]*\}", " ", text)          # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)        # ranges and subqueries
    text = _LABEL_LIST.sub(" ", text)                # by (...), on (...), ...
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('up{job="x"} == 0 or absent(up{job="x"})', {"up"}),
        ("histogram_quantile(0.99, sum by (le) (rate(a_bucket{b=~\"c|d\"}[5m])))", {"a_bucket"}),
        ("sum by (job, instance) (x) > 1e9 and on () y offset 5m", {"x", "y"}),
        ("max without (pid) (g) < bool 0x1F", {"g"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ("rate(c_total{q=\"by (x)\"}[$__rate_interval]) * 60", {"c_total"}),
        ("max_over_time(sum(h)[1h:5m]) / ignoring (le) group_left k", {"h", "k"}),
    ],
)
def test_metric_names_finds_selectors_only(expr: str, expected: set[str]) -> None:
    """The extractor keeps metric names and drops functions, keywords, labels, numbers."""
    assert metric_names(expr) == expected


# --- expressions -----------------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # collapsed rows nest their panels


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and query:
            match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query, re.S)
            found.append((f"variable {variable['name']}", match.group(1) if match else query))
    return found


def alert_exprs() -> list[tuple[str, str]]:
    data = yaml.safe_load(RULES.read_text())
    return [(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
            for group in data["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """The series names the service's registry exports."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", _EXPORTED_NAMES_SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    names = set(json.loads(result.stdout))
    assert "processor_chunks_uploaded_total" in names, names
    return names


def test_exported_names_include_counters_histograms_and_gauges(exported: set[str]) -> None:
    """The walk sees each kind of metric under the name a scrape shows."""
    assert {"processor_chunks_uploaded_total", "processor_chunk_upload_seconds_bucket",
            "processor_chunk_upload_seconds_count", "processor_active_streams"} <= exported
    assert not any(name.startswith(("process_", "python_")) for name in exported)


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_used_is_exported_by_the_service(
        source: str, dashboard: dict[str, Any], exported: set[str]) -> None:
    """Each metric name in a PromQL expression is one the service exports (or `up`)."""
    exprs = dashboard_exprs(dashboard) if source == "dashboard" else alert_exprs()
    assert exprs
    unknown = {}
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        missing = names - exported - PROMETHEUS_BUILTINS
        if missing:
            unknown[where] = sorted(missing)
    assert not unknown, f"metrics the service does not export: {unknown}"


def test_the_dashboard_shows_what_issues_4_and_15_ask_for(dashboard: dict[str, Any]) -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_exprs(dashboard)))
    assert used >= REQUIRED_ON_DASHBOARD, f"not shown: {sorted(REQUIRED_ON_DASHBOARD - used)}"


def test_every_dashboard_query_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses every dashboard query (as recording rules, macros substituted)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `make test` installs it with "
                    "deploy/system-deps.sh (Debian package `prometheus`)")
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs(dashboard)):
        for macro in sorted(GRAFANA_MACROS, key=len, reverse=True):
            expr = expr.replace(macro, GRAFANA_MACROS[macro])
        assert "$" not in expr.replace('"$1"', ""), f"unknown Grafana macro in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    rule_file = tmp_path / "dashboard_queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True,
                            text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- dashboard structure and provisioning ----------------------------------------------------


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    data = yaml.safe_load(DATASOURCES.read_text())
    sources = data["datasources"]
    assert len(sources) == 1
    source: dict[str, Any] = sources[0]
    return source


def test_the_datasource_is_the_compose_prometheus(datasource: dict[str, Any]) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert "prometheus" in compose["services"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource.get("uid") and datasource.get("isDefault") is True


def test_every_panel_queries_the_provisioned_datasource(
        dashboard: dict[str, Any], datasource: dict[str, Any]) -> None:
    for panel in _panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for ref in [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]:
            assert ref == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]


def test_the_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    """A stable uid, unique panel ids, panels inside the 24-column grid, no overlaps."""
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for row in range(grid["y"], grid["y"] + grid["h"]):
            for col in range(grid["x"], grid["x"] + grid["w"]):
                assert (row, col) not in cells, f"{panel['title']!r} overlaps {cells[(row, col)]!r}"
                cells[(row, col)] = panel["title"]


def test_the_provider_loads_the_mounted_dashboards() -> None:
    """The provider's path is where compose mounts deploy/grafana/dashboards, and the
    provisioning directory is mounted where Grafana reads it; both read-only."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts = {}
    for item in compose["services"]["grafana"]["volumes"]:
        parts = item.split(":")
        if parts[0].startswith("."):
            mounts[(ROOT / parts[0]).resolve()] = (PurePosixPath(parts[1]), parts[2:])
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]
    target, options = mounts[DASHBOARD_DIR.resolve()]
    assert PurePosixPath(providers[0]["options"]["path"]) == target
    assert options == ["ro"]
    target, options = mounts[(GRAFANA_DIR / "provisioning").resolve()]
    assert target == PurePosixPath("/etc/grafana/provisioning") and options == ["ro"]
