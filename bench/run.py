#!/usr/bin/env python3
"""The benchmark's command line, as ``make bench``, CI and docs/BENCHMARKS.md call it.

A thin entry: the benchmark is the ``bench`` package (see ``bench/__init__.py``);
``python -m bench`` is the same. Run as a script, Python puts this directory first on
``sys.path``; the repository root takes its place, so that ``bench``, ``tests`` and the
service's packages import as packages and no module here shadows another by name.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # as a script: the repository root in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
