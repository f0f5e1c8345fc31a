"""How big the long tests run: reduced in ``make test`` (its 15-minute budget), full in
``make test-full`` (``TESTS_FULL=1``) and, for the fault suite, ``make test-faults``
(``FAULTS_FULL=1``). A reduced run proves the same property on less data or fewer
repetitions; docs/RELIABILITY.md and the README give both figures."""

from __future__ import annotations

import os
from typing import TypeVar

__all__ = ["FULL", "pick"]

T = TypeVar("T")


def _set(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


FULL = _set("TESTS_FULL") or _set("FAULTS_FULL")


def pick(reduced: T, full: T) -> T:
    """The reduced value for ``make test``, the full one for the full runs."""
    return full if FULL else reduced
