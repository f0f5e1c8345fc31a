"""Live playlists (contract §6): what they cost and how soon a fragment is listed.

1. CPU: a backlog of fragmented MP4s (the bulk set remuxed with ``-c copy -movflags
   frag_keyframe+empty_moov``, cached), 4 workers, with the live playlist (the default)
   and with ``--no-live-playlist``, in turn, pair by pair: the client CPU per GiB of
   each and their ratio. The playlist's share is the box walking, one playlist PUT per
   chunk and the final one.
2. Latency: one fragmented file written at a steady rate, as a camera records. For
   each full chunk, the time from its last fragment's last byte on disk (the next
   ``moof``'s header written) to the ``playlist_written`` that lists it, minus the
   chunk PUT's own seconds: what listing costs beyond the upload. p50, p99, max.
3. Where the CPU goes: in this process, ``time.process_time()`` of one playlist PUT
   (a 100-segment playlist) against one 10 MiB chunk PUT, through the worker's own
   ``Storage``: the playlist is one more S3 request per chunk, and a small request
   costs the client nearly as much as a large one.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import xxhash

from bench.harness import Broken, GiB, empty_bucket, log, parse_ts, pct
from bench.service import ProcessorRun
from shared.s3 import make_client
from shared.settings import Settings
from tests.support.s3server import S3Endpoint, unique_bucket_name
from tests.support.videos import ffmpeg_exe
from worker.fmp4 import Fragment, classify, next_boundary
from worker.playlist import render, segments_of
from worker.storage import Storage

WORKERS = 4


def fragmented_set(sources: list[Path]) -> list[Path]:
    """The sources remuxed to fragmented MP4 (stream copy, fragments at keyframes).

    They are cached in a directory beside the sources' (``smoke-fragmented/``), never
    in it: every bulk client uploads the whole source directory, so a file added there
    would be uploaded too and break their byte counts.
    """
    out = []
    for src in sources:
        folder = src.parent.with_name(f"{src.parent.name}-fragmented")
        folder.mkdir(parents=True, exist_ok=True)
        dst = folder / f"frag-{src.name}"
        if not dst.exists():
            tmp = dst.with_name(f".tmp-{dst.name}")
            subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i",
                            str(src), "-c", "copy", "-movflags",
                            "frag_keyframe+empty_moov+default_base_moof", str(tmp)],
                           check=True, timeout=300)
            os.utime(tmp, (time.time() - 3600, time.time() - 3600))
            tmp.rename(dst)
        out.append(dst)
    return out


def _backlog_cpu(ep: S3Endpoint, s3: Any, work: Path, files: list[Path],
                 live_playlist: bool, run: int) -> float:
    """Client CPU seconds per GiB to upload ``files`` as a finished backlog."""
    bucket = unique_bucket_name("bench-pl")
    s3.create_bucket(Bucket=bucket)
    workdir = work / f"playlist-{run}-{int(live_playlist)}"
    watch = workdir / "in"
    watch.mkdir(parents=True)
    for src in files:
        os.link(src, watch / src.name)
    flag = "--live-playlist" if live_playlist else "--no-live-playlist"
    pr = ProcessorRun(workdir, watch, ep, bucket, WORKERS, stream_timeout=1.0, extra=[flag])
    pr.start()
    try:
        pr.wait_for("stream_completed", len(files), 600)
        _, usage = pr.stop()
    except BaseException:
        pr.kill()
        raise
    playlists = sum(e.get("event") == "playlist_written" for e in pr.events())
    if live_playlist and not any(e.get("event") == "stream_fragmented" for e in pr.events()):
        raise Broken("playlist: the fragmented set was not taken as fragmented")
    empty_bucket(s3, bucket)
    nbytes = sum(p.stat().st_size for p in files)
    log(f"  {flag}: {usage.ru_utime + usage.ru_stime:.2f} CPU-s, {playlists} playlist PUTs")
    return (usage.ru_utime + usage.ru_stime) / (nbytes / GiB)


def _latency(ep: S3Endpoint, s3: Any, work: Path, src: Path, rate: float) -> dict[str, Any]:
    data = src.read_bytes()
    read = lambda offset, size: data[offset:offset + size]  # noqa: E731
    kind, _ = classify(read, len(data))
    if kind != "fmp4":
        raise Broken(f"playlist: {src} is not a fragmented MP4")
    # where each full chunk ends, by the service's own rule; a boundary is "on disk"
    # once the 8 bytes of the next moof's header are
    ends, start = [], 0
    while (end := next_boundary(read, start, start, len(data), 10 << 20, 40 << 20)[0]):
        ends.append(end)
        start = end
    bucket = unique_bucket_name("bench-pl-live")
    s3.create_bucket(Bucket=bucket)
    workdir = work / "playlist-live"
    watch = workdir / "in"
    watch.mkdir(parents=True)
    pr = ProcessorRun(workdir, watch, ep, bucket, 1, stream_timeout=2.0)
    pr.start()
    on_disk: list[float] = []
    try:
        pr.wait_for("bucket_ready", 1, 60)
        fd = os.open(watch / "cam.mp4", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        t0, written = time.monotonic(), 0
        while written < len(data):
            due = min(len(data), int(rate * (time.monotonic() - t0)))
            pending = [e + 8 for e in ends if written < e + 8 <= due]
            for stop in [*pending, due]:
                if stop > written:
                    os.write(fd, data[written:stop])
                    written = stop
                    if stop in {e + 8 for e in ends}:
                        on_disk.append(time.time())
            time.sleep(0.005)
        os.close(fd)
        pr.wait_for("stream_completed", 1, 300)
        pr.stop()
    except BaseException:
        pr.kill()
        raise
    events = pr.events()
    puts = {int(e["index"]): e["seconds"] for e in events if e.get("event") == "chunk_uploaded"}
    listed = [(int(e["chunks"]), parse_ts(e["timestamp"])) for e in events
              if e.get("event") == "playlist_written"]
    delays = []
    for index, at in enumerate(on_disk):
        when = min((t for chunks, t in listed if chunks > index), default=None)
        if when is not None and index in puts:
            delays.append(when - at - puts[index])
    empty_bucket(s3, bucket)
    if not delays:
        raise Broken("playlist: no chunk was listed while the file was written")
    return {"samples": len(delays), "delay_p50_ms": round(pct(delays, 50) * 1000, 1),
            "delay_p99_ms": round(pct(delays, 99) * 1000, 1),
            "delay_max_ms": round(max(delays) * 1000, 1), "rate_mb_s": rate / 1e6}


def _put_cost(ep: S3Endpoint, s3: Any, rounds: int) -> dict[str, float]:
    """Client CPU ms of one playlist PUT and of one 10 MiB chunk PUT (medians of
    ``rounds`` batches of 20), through the worker's Storage and client settings."""
    bucket = unique_bucket_name("bench-pl-put")
    s3.create_bucket(Bucket=bucket)
    saved = dict(os.environ)
    os.environ.update(ep.env())   # make_client takes boto3's standard chain only
    try:
        client = make_client(Settings(watch_dir=Path("."), s3_endpoint=ep.url,
                                      s3_bucket=bucket, s3_region=ep.region))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    storage = Storage(client, bucket)
    fragments = [Fragment(i * 700_000, 700_000, 1.0, float(i), True) for i in range(200)]
    playlist = render("chunks/000000.m4s", 1_000,
                      segments_of(fragments, "chunks/000003.m4s", 0), ended=False).encode()
    chunk = os.urandom(10 << 20)
    digest = xxhash.xxh3_128_hexdigest(chunk)
    costs: dict[str, list[float]] = {"playlist": [], "chunk": []}
    for _ in range(rounds):
        for name, put in (("playlist", lambda: storage.put_playlist("p/playlist.m3u8",
                                                                     playlist)),
                          ("chunk", lambda: storage.put_chunk("p/chunks/000000", chunk,
                                                              digest))):
            put()   # warm: connection and caches
            started = time.process_time()
            for _ in range(20):
                put()
            costs[name].append((time.process_time() - started) / 20 * 1000)
    empty_bucket(s3, bucket)
    result = {f"{name}_put_cpu_ms": round(pct(values, 50), 2) for name, values in costs.items()}
    log(f"  CPU per PUT: playlist {result['playlist_put_cpu_ms']} ms "
        f"({len(playlist)} bytes), 10 MiB chunk {result['chunk_put_cpu_ms']} ms")
    return result


def playlist_section(ep: S3Endpoint, s3: Any, work: Path, files: list[Path],
                     smoke: bool) -> dict[str, Any]:
    fragmented = fragmented_set(files[:1] if smoke else files[:4])
    log("live playlist: CPU per GiB with and without, pair by pair")
    ratios, with_cpu, without_cpu = [], [], []
    for run in range(1 if smoke else 3):
        without = _backlog_cpu(ep, s3, work, fragmented, False, run)
        with_ = _backlog_cpu(ep, s3, work, fragmented, True, run)
        with_cpu.append(with_)
        without_cpu.append(without)
        ratios.append(with_ / without)
    log("live playlist: from a fragment on disk to the playlist listing it")
    latency = _latency(ep, s3, work, fragmented[0], rate=4e6 if smoke else 10e6)
    log("live playlist: client CPU of one playlist PUT against one chunk PUT")
    put_cost = _put_cost(ep, s3, rounds=3 if smoke else 7)
    return {"cpu_per_gib_with": [round(c, 3) for c in with_cpu],
            "put_cost": put_cost,
            "cpu_per_gib_without": [round(c, 3) for c in without_cpu],
            "cpu_ratio": [round(r, 3) for r in ratios], "latency": latency,
            "gib": round(sum(p.stat().st_size for p in fragmented) / GiB, 3)}
