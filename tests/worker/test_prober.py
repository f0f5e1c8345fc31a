"""worker.prober: probes run in a helper process, and what its crash or hang costs.

The helper is the real one (``python -m worker.prober``) on a real video. A probe
that crashes or hangs FFmpeg cannot be produced on demand, so for those two cases
a stand-in helper that kills itself or never answers is started instead: it is the
worker's side (timeouts, reaping, replacement) that is under test there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.prober import Prober

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

CRASHING = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
HANGING = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("video") / "clip.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-loglevel", "error",
                    "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "2",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    str(out)], check=True, capture_output=True, timeout=60)
    return out


@pytest.fixture
def fd(video: Path) -> Iterator[int]:
    descriptor = os.open(video, os.O_RDONLY)
    yield descriptor
    os.close(descriptor)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_probe_runs_in_one_kept_helper(fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-the-helper")
    monkeypatch.setenv("PROCESSOR_S3_BUCKET", "nor-this")
    pulses: list[int] = []
    prober = Prober(lambda: pulses.append(1))
    try:
        first = prober.probe(fd)
        helper = prober._proc
        assert helper is not None and helper.pid != os.getpid()
        environ = Path(f"/proc/{helper.pid}/environ").read_bytes()
        assert b"AWS_SECRET_ACCESS_KEY" not in environ, "the helper holds no credentials"
        assert b"PROCESSOR_" not in environ
        second = prober.probe(fd)
        assert prober._proc is helper, "the helper is kept for the next probe"
    finally:
        prober.close()
    assert first.error is None, first.error
    assert first.duration_seconds == pytest.approx(2.0, abs=0.1)
    assert (first.video_codec, first.width, first.height) == ("h264", 320, 240)
    assert second == first
    assert helper.poll() is not None, "close() ends the helper"


def test_worker_never_loads_pyav(video: Path) -> None:
    """The worker's modules, a completed probe, and still no FFmpeg in the process."""
    code = (
        "import os, sys\n"
        "import worker.process, worker.uploader, worker.tracker\n"
        "from worker.prober import Prober\n"
        f"fd = os.open({str(video)!r}, os.O_RDONLY)\n"
        "p = Prober(lambda: None)\n"
        "info = p.probe(fd)\n"
        "assert info.error is None, info.error\n"
        "p.close()\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('av' in sys.modules, 'libavformat' in maps)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["False", "False"]


def test_helper_that_dies_is_replaced_and_reported(fd: int, video: Path) -> None:
    prober = Prober(lambda: None, command=CRASHING)
    try:
        info = prober.probe(fd)
        assert info.duration_seconds is None
        assert info.error == "media probe crashed (killed by SIGSEGV)"
        prober.command = [sys.executable, "-m", "worker.prober"]
        again = prober.probe(fd)  # a new helper, this time a working one
    finally:
        prober.close()
    assert again.error is None and again.duration_seconds == pytest.approx(2.0, abs=0.1)


def test_helper_killed_from_outside_mid_run_costs_nothing(fd: int) -> None:
    """OOM killer, an operator: the next probe starts a new helper and succeeds."""
    prober = Prober(lambda: None)
    try:
        assert prober.probe(fd).error is None
        assert prober._proc is not None
        prober._proc.kill()
        prober._proc.wait()
        info = prober.probe(fd)
    finally:
        prober.close()
    assert info.error is None


def test_hanging_helper_times_out_and_is_killed(fd: int) -> None:
    pulses: list[int] = []
    prober = Prober(lambda: pulses.append(1), timeout=1.5, command=HANGING)
    helper = None
    try:
        prober._ensure()
        helper = prober._proc
        info = prober.probe(fd)
    finally:
        prober.close()
    assert info.error == "media probe timed out after 1.5 s"
    assert len(pulses) >= 2, "the worker's heartbeat kept going while it waited"
    assert helper is not None and helper.poll() is not None, "the hung helper was killed"


def test_drain_while_probing_ends_the_helper(fd: int) -> None:
    class Draining(BaseException):
        pass

    def pulse() -> None:
        raise Draining

    prober = Prober(pulse, command=HANGING)
    prober._ensure()
    helper = prober._proc
    with pytest.raises(Draining):
        prober.probe(fd)
    assert helper is not None and helper.poll() is not None
    assert prober._proc is None


def test_helper_exits_when_the_worker_is_gone(video: Path) -> None:
    """kill -9 of the worker closes its socket end: the helper sees EOF and exits."""
    code = (
        "import os, sys, time\n"
        "from worker.prober import Prober\n"
        f"fd = os.open({str(video)!r}, os.O_RDONLY)\n"
        "p = Prober(lambda: None)\n"
        "assert p.probe(fd).error is None\n"
        "print(p._proc.pid, flush=True)\n"
        "time.sleep(60)\n")
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    helper_pid = int(worker.stdout.readline())
    assert _rss_mb(helper_pid) > 0
    worker.kill()
    worker.wait()
    import time
    deadline = time.monotonic() + 10
    while Path(f"/proc/{helper_pid}").exists():
        stat = Path(f"/proc/{helper_pid}/stat").read_text()
        if stat[stat.rfind(")") + 2] == "Z":
            break  # exited; a zombie until init reaps it
        assert time.monotonic() < deadline, "helper outlived its worker"
        time.sleep(0.05)
