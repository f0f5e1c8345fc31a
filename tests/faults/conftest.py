"""Fixtures of the fault-injection suite: the mode (reduced or full), the seed, and
the reliability table each scenario adds a row to (printed at the end of the run;
also written as JSON lines to ``$FAULTS_REPORT`` when set)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.common import FULL, Row

_ROWS: list[Row] = []


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Iterator[Row]:
    """The table row of this scenario; the test fills it in."""
    row = Row(scenario=request.node.name, mode="full" if FULL else "reduced")
    yield row
    outcome = getattr(request.node, "rep_call", None)
    row.outcome = "passed" if outcome is not None and outcome.passed else (
        "xfailed" if outcome is not None and hasattr(outcome, "wasxfail") else "failed")
    _ROWS.append(row)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _ROWS:
        return
    terminalreporter.section("reliability (tests/faults)")
    for row in _ROWS:
        terminalreporter.write_line(row.line())
    path = os.environ.get("FAULTS_REPORT")
    if path:
        with open(path, "a") as f:
            for row in _ROWS:
                f.write(json.dumps(row.__dict__) + "\n")
