"""The Prometheus alerting rules: valid, unit-tested with promtool, wired into the stack.

``promtool`` comes from Debian's ``prometheus`` package, which ``make test`` installs
through ``deploy/system-deps.sh``; without it these tests fail rather than skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
COMPOSE_FILE = ROOT / "docker-compose.yml"
CONTAINER_CONFIG = PurePosixPath("/etc/prometheus/prometheus.yml")

# What issues 4 and 15 ask to be alerted on, by the names the rules use.
REQUIRED_ALERTS = {
    "ProcessorDown",               # scrape fails
    "ProcessorUploadsFailing",     # S3 errors / retries while nothing is uploaded
    "ProcessorLagGrowing",         # backlog above a threshold and growing
    "ProcessorStreamStuck",        # an old unfinished stream and no uploads
    "ProcessorWorkerRestartLoop",  # restarts in 15 minutes
    "ProcessorS3NotReady",         # bucket not answering for 5 minutes
    "ProcessorWorkersMissing",     # alive < configured
    # issue 15 (local retention): the watch dir's disk nearly full while data waits
    "ProcessorDiskNearlyFullWithDataWaiting",
}
SEVERITIES = {"critical", "warning"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: `make test` installs it with "
                    "deploy/system-deps.sh (Debian package `prometheus`)")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool in deploy/prometheus (rule file paths are relative to it)."""
    return subprocess.run([promtool(), *args], cwd=PROMETHEUS_DIR, capture_output=True,
                          text=True, timeout=180, check=False)


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yml."""
    data = yaml.safe_load(RULES.read_text())
    found = [rule for group in data["groups"] for rule in group["rules"] if "alert" in rule]
    assert found, "alerts.yml defines no alerting rule"
    return found


# --- promtool -------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    """alerts.yml is a valid rule file: every expression parses, templates compile."""
    result = run_promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    """alerts_test.yml: each alert fires on its failure series and stays silent otherwise."""
    result = run_promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config_loads_the_rule_file() -> None:
    """prometheus.yml is valid and its rule_files entry resolves to alerts.yml."""
    result = run_promtool("check", "config", CONFIG.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{RULES.name}" in result.stdout and "SUCCESS" in result.stdout


# --- the rules' content -----------------------------------------------------------------


def test_the_required_alerts_exist_once_each(rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    assert set(names) >= REQUIRED_ALERTS, f"missing: {sorted(REQUIRED_ALERTS - set(names))}"


def test_every_alert_has_for_severity_and_annotations(rules: list[dict[str, Any]]) -> None:
    """Each rule waits (`for:`), has a severity and summary/description/runbook_url."""
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no `for:`"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert str(annotations.get(key, "")).strip(), f"{name}: no {key} annotation"


def test_every_runbook_link_names_a_section_of_operations_md(rules: list[dict[str, Any]]) -> None:
    """runbook_url is docs/OPERATIONS.md#<anchor> and that heading exists."""
    headings = [m.group(1) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$",
                                                  OPERATIONS.read_text(), re.M)]
    anchors = {github_anchor(h) for h in headings}
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/OPERATIONS.md", f"{rule['alert']}: {url}"
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in OPERATIONS.md"


def test_every_alert_has_a_firing_and_a_silent_unit_test(rules: list[dict[str, Any]]) -> None:
    """alerts_test.yml checks each alert both firing and not firing."""
    data = yaml.safe_load(RULE_TESTS.read_text())
    assert data.get("rule_files") == [RULES.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in data["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in rules}
    assert names <= firing, f"never shown firing: {sorted(names - firing)}"
    assert names <= silent, f"never shown silent: {sorted(names - silent)}"


def test_service_down_alert_uses_the_scrape_job_of_prometheus_yml(
        rules: list[dict[str, Any]]) -> None:
    """`up{job=...}` names the job that scrapes the processor."""
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    down = next(rule for rule in rules if rule["alert"] == "ProcessorDown")
    used = set(re.findall(r'up\{job="([^"]+)"\}', down["expr"]))
    assert used and used <= jobs, f"{used} not among the scrape jobs {jobs}"


# --- wiring into the compose stack --------------------------------------------------------


def test_compose_mounts_the_rule_file_where_prometheus_yml_looks_for_it() -> None:
    """Each rule_files entry, resolved next to the config in the container, is a
    read-only bind of the repository's file."""
    config = yaml.safe_load(CONFIG.read_text())
    rule_files = config.get("rule_files") or []
    assert rule_files, "prometheus.yml loads no rule file"
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    mounts = {}
    for item in compose["services"]["prometheus"].get("volumes", []):
        assert isinstance(item, str), "expected the short volume syntax"
        source, target, *options = item.split(":")
        mounts[PurePosixPath(target)] = (source, options)
    for entry in rule_files:
        target = CONTAINER_CONFIG.parent / entry
        assert target in mounts, f"{target} is not mounted into the prometheus container"
        source, options = mounts[target]
        assert (ROOT / source).resolve() == (PROMETHEUS_DIR / entry).resolve()
        assert options and "ro" in options[0].split(",")
