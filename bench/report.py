"""The report: markdown tables of every section, the targets, the machine, JSON.

Kept apart from the measuring so that what is printed (and documented in
docs/BENCHMARKS.md) can be read and changed in one place. Everything here works on
the plain figures the sections return; nothing here runs a client.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

from bench.harness import GiB, Run, tool_version
from bench.sections.idle import idle_runs, marginal, steady_marginal
from tests.support.s3server import S3Endpoint
from tests.support.videos import ffmpeg_exe


def machine_info(ep: S3Endpoint, moto: bool) -> dict[str, str]:
    import boto3
    import botocore

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": f"{cpu} x {os.cpu_count()}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "boto3": boto3.__version__, "botocore": botocore.__version__,
        "load_avg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "s3_server": "moto server (in-memory)" if moto else ep.url,
        "ffmpeg": tool_version([ffmpeg_exe(), "-version"]),
    }
    if moto:
        import moto as moto_pkg
        info["moto"] = moto_pkg.__version__
    return info


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def report(results: dict[str, Any]) -> str:
    out: list[str] = []
    bulk: list[Run] = results.get("bulk_runs", [])
    base = next((r for r in bulk if r.name == "boto3"), None)
    if bulk:
        idle = idle_runs(bulk)
        base_m = marginal(base, idle) if base else float("nan")
        aws = next((r for r in bulk if r.name == "awscli"), None)
        aws_m = marginal(aws, idle) if aws else float("nan")
        out.append(f"Bulk ingest: {results['bulk_files']} finished MP4s, "
                   f"{results['bulk_bytes'] / GiB:.3f} GiB, 10 MiB chunks. CPU = user+sys "
                   "of the client's process tree (wait4); 'marginal' subtracts the same "
                   "client's idle run (start, connect, stop, no data); 'steady marginal' "
                   "subtracts the processor's warm idle run instead (start, one small file "
                   "through each worker the data lands on, stop), which also holds the "
                   "one-time costs a long-running service pays once: each worker's probe "
                   "helper and first request of each kind.")
        out.append("")
        out.append(row(["client", "wall s", "MB/s", "throughput vs boto3", "CPU s (user+sys)",
                        "CPU s/GiB", "vs boto3", "vs awscli", "marginal CPU s/GiB",
                        "marginal vs boto3", "marginal vs awscli",
                        "steady marginal CPU s/GiB", "steady marginal vs awscli"]))
        out.append(row(["---"] * 13))
        for r in bulk:
            if r.idle:
                continue
            m = marginal(r, idle)
            out.append(row([
                r.name, f"{r.wall:.2f}", f"{r.mb_per_s:.0f}",
                f"{base.wall / r.wall:.2f}x" if base else "-",
                f"{r.cpu:.2f} ({r.cpu_user:.2f}+{r.cpu_sys:.2f})", f"{r.cpu_per_gib:.2f}",
                f"{r.cpu_per_gib / base.cpu_per_gib:.2f}x" if base else "-",
                f"{r.cpu_per_gib / aws.cpu_per_gib:.2f}x" if aws else "-",
                f"{m:.2f}", ratio(m, base_m), ratio(m, aws_m),
                f"{sm:.2f}" if (sm := steady_marginal(r, idle)) == sm else "-",
                ratio(sm, aws_m)]))
        out.append("")
        out.append(row(["idle run (fixed cost)", "wall s", "CPU s (user+sys)",
                        "CPU s of each run (the mean is used)"]))
        out.append(row(["---"] * 4))
        for r in bulk:
            if r.idle:
                each = r.extra.get("cpu_samples", [round(r.cpu, 2)])
                out.append(row([r.name, f"{r.wall:.2f}",
                                f"{r.cpu:.2f} ({r.cpu_user:.2f}+{r.cpu_sys:.2f})",
                                " / ".join(f"{c:.2f}" for c in each)]))
        out.append("")
        out.append(row(["processor run", "start→first chunk s", "uploads s (first→last full)",
                        "last full chunk→last metadata s", "Σ PUT s", "PUT p50 s",
                        "server part-copy, boto3 alone s (all parts)",
                        "chunks verified: re-read / settled"]))
        out.append(row(["---"] * 8))
        for r in bulk:
            if r.name.startswith("processor") and not r.idle:
                x = r.extra
                out.append(row([r.name, str(x.get("start_to_first_chunk_s")),
                                str(x.get("first_to_last_full_chunk_s")),
                                str(x.get("last_full_chunk_to_last_completed_s")),
                                str(x.get("put_seconds_sum")), str(x.get("put_seconds_p50")),
                                str(x.get("assembly_baseline_s_all")),
                                f"{x.get('verified_by_read')} / {x.get('verified_settled')}"]))
        out.append("")
        out.append(row(["processor run", "supervisor peak RSS MB", "worker peak RSS MB (max)",
                        "each worker", "probe helper peak RSS MB (max)",
                        "total peak PSS MB (all processes)"]))
        out.append(row(["---"] * 6))
        for r in bulk:
            if r.name.startswith("processor"):
                m = r.extra["memory"]
                out.append(row([r.name, str(m["supervisor_peak_rss_mb"]),
                                str(m["worker_peak_rss_mb"]),
                                " ".join(str(x) for x in m["worker_peak_rss_mb_each"]),
                                str(m.get("probe_helper_peak_rss_mb", 0)),
                                str(m["total_peak_pss_mb"])]))
    live = results.get("live")
    if live:
        out.append("")
        out.append(f"Live: {live['streams']} streams x {live['rate_mb_s']:.0f} MB/s, "
                   f"whole real MP4s of ~{live['stream_mb']} MB "
                   f"({live['chunks_per_stream']} full chunks + tail each), "
                   f"{live['workers']} workers, --stream-timeout {live['stream_timeout']}")
        out.append("")
        out.append(row(["metric", "value"]))
        out.append(row(["---", "---"]))
        for key in ("samples", "overhead_p50_ms", "overhead_p99_ms", "overhead_max_ms",
                    "put_p50_ms", "put_p99_ms", "finalize_p50_s", "finalize_max_s",
                    "finalize_tail_put_s", "verify_read_s", "probe_s",
                    "parts_copied_at_completion_max", "finalize_complete_request_max_s",
                    "finalize_without_complete_max_s", "complete_server_alone_s",
                    "complete_server_together_s"):
            out.append(row([key, str(live[key])]))
    many = results.get("many")
    if many:
        out.append("")
        out.append(f"Many streams: {many['streams']} growing files, {many['workers']} workers, "
                   f"{many['appends_per_s']} appends/s for {many['steady_s']} s, "
                   f"{many['probes']} probe files")
        out.append("")
        out.append(row(["metric", "value"]))
        out.append(row(["---", "---"]))
        for key in ("supervisor_cpu_pct", "group_cpu_pct", "detect_ramp_p50_ms",
                    "detect_ramp_p99_ms", "detect_probe_p50_ms", "detect_probe_p99_ms",
                    "detect_probe_first_half_p50_ms", "detect_probe_second_half_p50_ms",
                    "dispatch_to_worker_p99_ms_at_most"):
            out.append(row([key, str(many[key])]))
        m = many["memory"]
        out.append(row(["supervisor_peak_rss_mb", str(m["supervisor_peak_rss_mb"])]))
        out.append(row(["worker_peak_rss_mb", str(m["worker_peak_rss_mb"])]))
        out.append(row(["total_peak_pss_mb", str(m["total_peak_pss_mb"])]))
    playlist = results.get("playlist")
    if playlist:
        out.append("")
        out.append(f"### Live playlist ({playlist['gib']} GiB of fragmented MP4, "
                   f"{len(playlist['cpu_ratio'])} pairs)")
        out.append("CPU-s per GiB with / without: " + ", ".join(
            f"{w} / {n} = {r:.3f}x" for w, n, r in zip(
                playlist["cpu_per_gib_with"], playlist["cpu_per_gib_without"],
                playlist["cpu_ratio"], strict=True)))
        lat = playlist["latency"]
        out.append(f"fragment on disk -> listed, minus the chunk PUT ({lat['samples']} chunks at "
                   f"{lat['rate_mb_s']} MB/s): p50 {lat['delay_p50_ms']} ms, p99 "
                   f"{lat['delay_p99_ms']} ms, max {lat['delay_max_ms']} ms")
        cost = playlist.get("put_cost")
        if cost:
            out.append(f"client CPU per PUT, in-process: playlist {cost['playlist_put_cpu_ms']} "
                       f"ms, 10 MiB chunk {cost['chunk_put_cpu_ms']} ms")
    uplink = results.get("uplink")
    if uplink:
        out.append("")
        out.append(f"### Uplink: server {uplink['server_mb_s']} MB/s, cap {uplink['cap_mb_s']} "
                   f"MB/s, live stream {uplink['live_mb_s']} MB/s")
        out.append("")
        out.append(row(["run", "achieved / cap", "live chunks", "visible p50 s",
                        "visible p99 s", "visible max s"]))
        out.append(row(["---"] * 6))
        for mode in ("live-first", "no-priority"):
            r = uplink[mode]
            out.append(row([mode, str(r["achieved_over_cap"]), str(r["live_chunks"]),
                            str(r["live_visible_p50_s"]), str(r["live_visible_p99_s"]),
                            str(r["live_visible_max_s"])]))
        out.append("")
        out.append("metered (--bwlimit 64GiB/s) CPU per GiB / no cap, pair by pair: "
                   + ", ".join(f"{c:.3f}x" for c in uplink["metered_cpu_per_gib_ratio"]))
    out.append("")
    out.append(targets(results))
    return "\n".join(out)


def ratio(value: float, baseline: float) -> str:
    """``value / baseline`` as "0.59x", or "-" when either is missing (NaN)."""
    return f"{value / baseline:.2f}x" if value == value and baseline == baseline else "-"


def targets(results: dict[str, Any]) -> str:
    lines = [row(["target", "measured", "met"]), row(["---"] * 3)]
    bulk: list[Run] = results.get("bulk_runs", [])
    base = next((r for r in bulk if r.name == "boto3"), None)
    aws = next((r for r in bulk if r.name == "awscli"), None)
    p1 = next((r for r in bulk if r.name == "processor 1w"), None)

    def add(name: str, value: float, ok: bool, fmt: str = "{:.2f}") -> None:
        lines.append(row([name, fmt.format(value), "yes" if ok else "NO"]))

    idle = idle_runs(bulk)
    for r in bulk:
        if r.name.startswith("processor") and not r.idle:
            add(f"{r.name}: CPU <= 1.2 s/GiB", r.cpu_per_gib, r.cpu_per_gib <= 1.2)
            m = marginal(r, idle)
            if m == m:
                add(f"{r.name}: marginal CPU <= 1.2 s/GiB", m, m <= 1.2)
            if aws:
                v = r.cpu_per_gib / aws.cpu_per_gib
                add(f"{r.name}: CPU <= 0.6x awscli", v, v <= 0.6, "{:.2f}x")
                ma = marginal(aws, idle)
                if m == m and ma == ma:
                    add(f"{r.name}: marginal CPU <= 0.6x awscli's", m / ma, m / ma <= 0.6,
                        "{:.2f}x")
            sm = steady_marginal(r, idle)
            if sm == sm:
                add(f"{r.name}: steady-state marginal CPU <= 1.2 s/GiB", sm, sm <= 1.2)
                ma = marginal(aws, idle) if aws else float("nan")
                if ma == ma:
                    add(f"{r.name}: steady-state marginal CPU <= 0.6x awscli's marginal",
                        sm / ma, sm / ma <= 0.6, "{:.2f}x")
    if p1 and base:
        v = base.wall / p1.wall
        add("processor 1w throughput >= 0.95x boto3 loop", v, v >= 0.95, "{:.2f}x")
    live = results.get("live")
    if live:
        add("chunk visibility overhead p99 <= 50 ms", live["overhead_p99_ms"],
            live["overhead_p99_ms"] <= 50, "{:.1f} ms")
        budget = 1.0 + live["verify_read_s"] + live["finalize_tail_put_s"]
        add(f"finalization <= 1 s + verify read + tail PUT (= {budget:.2f} s); the server's "
            f"CompleteMultipartUpload alone takes {live['complete_server_alone_s']:.2f} s, "
            f"{live['streams']} at once {live['complete_server_together_s']:.2f} s",
            live["finalize_max_s"], live["finalize_max_s"] <= budget, "{:.2f} s")
        add("finalization without the server's CompleteMultipartUpload request "
            f"<= {budget:.2f} s", live["finalize_without_complete_max_s"],
            live["finalize_without_complete_max_s"] <= budget, "{:.2f} s")
    many = results.get("many")
    if many:
        add("supervisor CPU <= 10% of a core", many["supervisor_cpu_pct"],
            many["supervisor_cpu_pct"] <= 10, "{:.1f}%")
        add("dispatch (first reaction) p99 <= 100 ms", many["detect_probe_p99_ms"],
            many["detect_probe_p99_ms"] <= 100, "{:.1f} ms")
        to_worker = many.get("dispatch_to_worker_p99_ms_at_most")
        if to_worker is not None:
            add("dispatch (supervisor's event to the worker's receipt; histogram bucket "
                "bound) p99 <= 100 ms", to_worker, to_worker <= 100, "<= {:.0f} ms")
        grow = many["detect_probe_second_half_p50_ms"] - many["detect_probe_first_half_p50_ms"]
        add("no backlog growth (probe p50 2nd half - 1st half)", grow, grow <= 50,
            "{:+.1f} ms")
    for r in bulk:
        if r.name.startswith("processor") and not r.idle:
            m = r.extra["memory"]["worker_peak_rss_mb"]
            add(f"{r.name}: worker RSS <= 80 MB", m, m <= 80, "{:.1f} MB")
    return "\n".join(lines)


def to_json(results: dict[str, Any]) -> dict[str, Any]:
    data = dict(results)
    data["bulk_runs"] = [
        {"name": r.name, "wall_s": round(r.wall, 3), "cpu_user_s": round(r.cpu_user, 3),
         "cpu_sys_s": round(r.cpu_sys, 3), "cpu_s_per_gib": round(r.cpu_per_gib, 3),
         "mb_per_s": round(r.mb_per_s, 1), **r.extra} for r in results.get("bulk_runs", [])]
    return data
