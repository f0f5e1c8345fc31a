"""Real H.264 MP4 files for tests, made by the ffmpeg bundled with imageio-ffmpeg.

The uploader must be tested on genuine MP4s (box layout, moov placement,
fragments) that are larger than an upload chunk, and a suite can afford only
a second or so per file.  Content is ``testsrc2`` plus temporal uniform noise:
nearly incompressible, so libx264 ``ultrafast`` with a bitrate target yields a
predictable size (about ``(seconds + 0.4) * bitrate_mbps / 8`` MB: the 1 s
VBV buffer lets the first second overshoot) at several hundred frames/second.

Durations are exact to one frame: ``round(seconds * fps)`` frames are encoded.
Each call uses a random noise seed by default, so two files never share
content; pass ``seed`` for byte-identical output.
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import imageio_ffmpeg

__all__ = [
    "ffmpeg_exe",
    "make_video",
    "start_live_writer",
    "make_not_mp4",
    "ffmpeg_command",
    "FRAGMENTED_MOVFLAGS",
]

#: What a fragmenting camera/muxer would use: a moov without samples up
#: front, then one self-contained moof+mdat per keyframe (one per second);
#: ffmpeg appends an ``mfra`` index box when it finishes cleanly.
FRAGMENTED_MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the static ffmpeg binary shipped in the imageio-ffmpeg wheel."""
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def ffmpeg_command(
    path: str | os.PathLike[str],
    seconds: float,
    *,
    fragmented: bool = False,
    size: str = "640x360",
    fps: int = 25,
    bitrate_mbps: float = 12.0,
    realtime: bool = False,
    seed: int | None = None,
    audio: bool = False,
    movflags: str | None = None,
    gop: int | None = None,
    frag_duration: float | None = None,
    keyframes_until: float | None = None,
) -> list[str]:
    """The ffmpeg argv used by :func:`make_video` / :func:`start_live_writer`.
    ``audio``: a 48 kHz AAC tone as a second track; ``movflags`` replaces the
    fragmenting flags (e.g. ``frag_duration`` fragments); ``gop``: frames between
    keyframes (default one second's); ``frag_duration``: fragments of that many
    seconds, cut whether or not a keyframe starts them; ``keyframes_until``: a keyframe
    each second up to that time and none after it (with a ``gop`` longer than the
    rest, one fragment holds all of it: fragments too large for a chunk)."""
    if seconds <= 0 or fps <= 0 or bitrate_mbps <= 0:
        raise ValueError("seconds, fps and bitrate_mbps must be positive")
    frames = max(1, round(seconds * fps))
    kbps = max(1, round(bitrate_mbps * 1000))
    seed = secrets.randbelow(2**31 - 1) if seed is None else seed
    source = f"testsrc2=size={size}:rate={fps},noise=alls=100:allf=t+u:all_seed={seed}"
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    if realtime:
        # -re alone bursts the first 0.5 s (ffmpeg >= 7) and a burst of 0
        # means "default"; a tiny one makes the file grow at wall-clock pace.
        cmd += ["-re", "-readrate_initial_burst", "0.01"]
    # fmt: off
    cmd += [
        "-f", "lavfi", "-i", source,
    ]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    cmd += [
        "-frames:v", str(frames),
        # One encoder thread: with VBV, frame threads make output vary run to
        # run; single-threaded it's deterministic per seed and only ~25% slower.
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-threads", "1",
        # 1 s GOP: a keyframe (and so a fragment) every second, like a camera.
        "-g", str(gop or fps), "-keyint_min", str(gop or fps), "-sc_threshold", "0",
        # bitrate target with a 1 s VBV buffer => predictable size
        "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k", "-bufsize", f"{kbps}k",
    ]
    # fmt: on
    if keyframes_until is not None:
        cmd += ["-force_key_frames", f"expr:lt(t,{keyframes_until})*gte(t,n_forced)"]
    if audio:
        cmd += ["-c:a", "aac", "-b:a", "96k", "-shortest"]
    if frag_duration is not None:
        cmd += ["-frag_duration", str(round(frag_duration * 1e6)),
                "-movflags", movflags or "empty_moov+default_base_moof"]
    elif fragmented or movflags:
        cmd += ["-movflags", movflags or FRAGMENTED_MOVFLAGS]
    # No +faststart: moov goes at the end, as a recording camera writes it.
    cmd += ["-f", "mp4", os.fspath(path)]
    return cmd


def make_video(
    path: str | os.PathLike[str],
    seconds: float,
    *,
    fragmented: bool = False,
    size: str = "640x360",
    fps: int = 25,
    bitrate_mbps: float = 12.0,
    seed: int | None = None,
    **options: Any,
) -> Path:
    """Write a complete H.264 MP4 at ``path`` as fast as possible.

    Defaults give ~1.5 MB per second of video, so 8 s is ~12.6 MB (12.0 MiB)
    and takes about 0.4 s of CPU.  Regular files have moov at the end;
    ``fragmented=True`` gives empty_moov + one moof/mdat per second.
    """
    out = Path(path)
    cmd = ffmpeg_command(
        out,
        seconds,
        fragmented=fragmented,
        size=size,
        fps=fps,
        bitrate_mbps=bitrate_mbps,
        seed=seed,
        **options,
    )
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(
            f"ffmpeg failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}"
        )
    return out


def start_live_writer(
    path: str | os.PathLike[str],
    seconds: float,
    *,
    fragmented: bool = True,
    size: str = "640x360",
    fps: int = 25,
    bitrate_mbps: float = 12.0,
    seed: int | None = None,
    **options: Any,
) -> subprocess.Popen[bytes]:
    """Start ffmpeg writing ``path`` in real time, like a live camera.

    The file grows for about ``seconds`` of wall time (a fragment per second
    when fragmented; a regular file only gets its moov when ffmpeg exits).
    The caller must wait: ``proc.communicate(timeout=...)`` returns stderr
    (errors only) and ``returncode`` should be 0; kill it on test failure.
    """
    cmd = ffmpeg_command(
        path,
        seconds,
        fragmented=fragmented,
        size=size,
        fps=fps,
        bitrate_mbps=bitrate_mbps,
        realtime=True,
        seed=seed,
        **options,
    )
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def make_not_mp4(path: str | os.PathLike[str], size: int) -> Path:
    """Random bytes of exactly ``size`` bytes: a file named like a video that isn't one."""
    out = Path(path)
    with open(out, "wb") as f:
        remaining = size
        while remaining > 0:
            n = min(remaining, 1 << 20)
            f.write(os.urandom(n))
            remaining -= n
    return out
