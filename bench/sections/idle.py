"""Idle and warm idle runs: the fixed cost of a client, subtracted from its bulk run.

A client's CPU per GiB includes starting its interpreter, connecting and stopping,
which a long-running service pays once. The idle run (start, connect, stop, no data)
measures that for every client alike ("marginal"); the processor's warm idle run
also passes one small file through each worker the data lands on, so that the
one-time costs of a long-running service (each worker's probe helper, the first
request of each kind) are subtracted too ("steady marginal"). Idle runs are noisy
(about ±0.3 CPU-s), so the full run repeats each and uses the mean.
"""

from __future__ import annotations

from bench.harness import GiB, Run

IDLE_REPEATS = 2  # idle and warm idle runs vary by ±0.3 CPU-s alone; their mean is used


def repeats(name: str, smoke: bool) -> int:
    """How many times the bulk plan's run ``name`` is made (idle runs: averaged)."""
    return 1 if smoke or not name.endswith(" idle") else IDLE_REPEATS


def mean_run(samples: list[Run]) -> Run:
    """One run standing for several of the same client (the idle runs): mean wall and
    CPU, the samples kept in ``extra["cpu_samples"]``, the rest from the last one."""
    last = samples[-1]
    if len(samples) == 1:
        return last
    n = len(samples)
    extra = dict(last.extra, cpu_samples=[round(s.cpu, 2) for s in samples])
    return Run(last.name, sum(s.wall for s in samples) / n,
               sum(s.cpu_user for s in samples) / n, sum(s.cpu_sys for s in samples) / n,
               last.nbytes, max((s.returncode for s in samples), key=abs), extra)


def idle_runs(bulk: list[Run]) -> dict[str, Run]:
    """The idle runs by the name of the run they belong to ("processor 1w" for
    "processor 1w idle", "processor 1w warm" for "processor 1w warm idle")."""
    return {r.name[:-len(" idle")]: r for r in bulk if r.idle}


def marginal(r: Run, idle: dict[str, Run]) -> float:
    """CPU s/GiB above the client's own fixed cost (its idle run), when measured."""
    fixed = idle.get(r.name)
    if fixed is None or not r.nbytes:
        return float("nan")
    return (r.cpu - fixed.cpu) / (r.nbytes / GiB)


def steady_marginal(r: Run, idle: dict[str, Run]) -> float:
    """CPU s/GiB above the processor's warm idle run: start, one small file through
    every worker the data lands on (so each has started its probe helper and made each
    kind of S3 request once), stop. What a long-running service pays per GiB once those
    one-time costs are behind it."""
    fixed = idle.get(r.name + " warm")
    if fixed is None or not r.nbytes:
        return float("nan")
    return (r.cpu - fixed.cpu) / (r.nbytes / GiB)
