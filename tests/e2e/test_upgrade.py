"""Upgrade: a state dir written by the release before the restructure resumes unchanged.

The restructure moves the worker's modules, the checkpoint store and the write-ahead
log, but must not change what is on disk. So this test does not keep a fixture state
dir that could drift from what the old code really writes: it builds one at test time
with the old commit's own code, against the real S3 server, and then resumes it with
the current checkout.

- The old code is ``git archive`` of ``OLD_COMMIT`` (its ``supervisor``, ``worker`` and
  ``shared`` packages), run by the same venv's python with ``PYTHONPATH`` naming that
  tree first. The venv's editable install of the current checkout is a finder that
  setuptools *appends* to ``sys.meta_path``, after the ``sys.path`` finder, so the old
  tree wins in the supervisor, in the spawned workers (spawn hands them the parent's
  ``sys.path``, and the environment) and in each worker's probe helper (which prepends
  its own package root, the old tree, to ``PYTHONPATH``). The test does not take that
  on trust: an audit hook (a ``sitecustomize`` on the same ``PYTHONPATH``, outside the
  old tree, which stays exactly as committed) logs every source or bytecode file of
  those packages that any process opens: the supervisor, both workers and the probe
  helper (every process of the old service's group but spawn's resource tracker, which
  runs none of them) must have loaded them from the old tree, and no process any file
  of the checkout's.
- The old service leaves at once: a completed stream (``metadata.json`` written), two
  live streams with chunk 0 committed, their final objects' multipart uploads open,
  and each with chunk 1's ``put_chunk`` intent pending: one whose PUT reached S3
  (the response is held at the proxy) and one whose PUT never got past the proxy.
  Then ``kill -9`` of the whole group; the old ``processor inspect`` confirms it.
- The current service resumes the same watch and state dirs while the recordings go
  on, then they end. Every file ends as exactly one stream under the id it had before,
  byte-identical; committed chunks and the completed stream get no new PUT; the landed
  intent is recovered without a PUT, the other one is uploaded once; no multipart
  upload is left open.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash

from tests.support.bucket import (
    check_stream,
    list_keys,
    metadata_documents,
    read_object,
    wait_for_metadata,
)
from tests.support.proxy import RecordingProxy, RequestHead
from tests.support.puts import chunk_puts
from tests.support.runner import Processor, wait_until
from tests.support.videos import make_video

pytestmark = pytest.mark.timeout(180)

#: The last commit before the restructure: the on-disk format it writes is the one the
#: current code must keep reading.
OLD_COMMIT = "a0691a2f1b014c02ff3598cfac9b64d4344b8e9a"
PACKAGES = ("supervisor", "worker", "shared")
REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
CHUNK = 5 * MiB  # the harness runs every processor with --chunk-size 5MiB
#: what the old code's console script (``processor = "supervisor.entry:main"``) runs
OLD_MAIN = "import sys; from supervisor.entry import main; sys.exit(main())"

#: Logs, in every process that has it on its path, each file of the service's packages
#: that the process opens to import (source or bytecode), as "<pid> <path>" lines.
AUDIT_HOOK = '''\
import os
import sys

_LOG = os.environ.get("UPGRADE_TEST_IMPORT_LOG")
_PACKAGES = {"supervisor", "worker", "shared"}


def _audit(event, args):
    if event != "open" or not args or not isinstance(args[0], str):
        return
    path = args[0]
    if path.endswith((".py", ".pyc")) and _PACKAGES.intersection(path.split(os.sep)[-3:-1]):
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {path}\\n".encode())
        finally:
            os.close(fd)


if _LOG:
    sys.addaudithook(_audit)
'''


# -- the old code ------------------------------------------------------------------------
def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, timeout=60)


def _extract_old_tree(into: Path) -> Path:
    """The old commit's packages under ``into``; skips when git or the commit is missing."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot build the old commit's state dir")
    if _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout: cannot build the old commit's state dir")
    if _git("cat-file", "-e", f"{OLD_COMMIT}^{{commit}}").returncode != 0:
        pytest.skip(f"commit {OLD_COMMIT[:7]} is not in this clone (shallow?): cannot build "
                    "the old commit's state dir; fetch the full history")
    archive = _git("archive", "--format=tar", OLD_COMMIT, *PACKAGES)
    assert archive.returncode == 0, archive.stderr.decode()
    into.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    for package in PACKAGES:
        assert (into / package / "__init__.py").is_file()
    return into


def _old_env(old_tree: Path, hook_dir: Path, import_log: Path) -> dict[str, str]:
    """What the old code's processes get on top of the harness's environment."""
    return {"PYTHONPATH": os.pathsep.join((str(old_tree), str(hook_dir))),
            "UPGRADE_TEST_IMPORT_LOG": str(import_log)}


def _environ(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment for an old-code process: plus ``extra``, without
    coverage.py's variables (``make coverage`` must not measure the old tree's copies of
    the packages as if they were the checkout's)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}, **extra}


def _imports(import_log: Path) -> dict[int, set[Path]]:
    """The service's package files each process opened, by pid."""
    found: dict[int, set[Path]] = {}
    for line in import_log.read_text().splitlines():
        pid, path = line.split(" ", 1)
        found.setdefault(int(pid), set()).add(Path(path))
    return found


def _is_under(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _group(pgid: int) -> dict[int, str]:
    """Live processes of process group ``pgid``: their command lines, by pid."""
    members = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members[int(entry.name)] = cmdline
    return members


# -- recordings --------------------------------------------------------------------------
class Recording:
    """A file in the watch dir that is written, in order, with the bytes of ``data``."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data, self.written = path, data, 0
        self._lock = threading.Lock()

    @property
    def rel_path(self) -> str:
        return self.path.name

    def write_to(self, size: int) -> None:
        with self._lock:
            size = min(size, len(self.data))
            if size > self.written:
                with open(self.path, "ab") as f:
                    f.write(self.data[self.written:size])
                self.written = size

    def finish(self) -> None:
        self.write_to(len(self.data))

    def is_whole(self, doc: dict[str, Any]) -> bool:
        """Whether ``doc`` (a metadata.json) describes the whole recording."""
        return bool(doc["total_size_bytes"] == len(self.data))


class Trickle:
    """Keeps recordings growing a little at a time (a camera still recording), so no
    stream reaches its idle timeout while the test waits for something else; stops
    short of the end, which ``Recording.finish`` writes. At 16 KiB/s the 512 KiB kept
    back from the trickle last half a minute past the point where chunk 1 is written;
    ``exhausted`` says if a recording stopped growing before ``stop`` all the same."""

    STEP, EVERY, RESERVE = 4 * 1024, 0.25, 512 * 1024

    def __init__(self, recordings: list[Recording]) -> None:
        self.recordings = recordings
        self.exhausted: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="trickle")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.EVERY):
            for rec in self.recordings:
                cap = len(rec.data) - self.RESERVE
                if rec.written >= cap and rec.rel_path not in self.exhausted:
                    self.exhausted.append(rec.rel_path)
                rec.write_to(min(rec.written + self.STEP, cap))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _two_names_on_two_workers() -> tuple[str, str]:
    """Two file names the old code routes to worker 0 and worker 1 of two: each live
    stream is held mid-PUT by its own worker, so neither blocks the other. (The old
    commit's routing, ``xxh64(rel_path) % workers``, is a fixed fact; the log checks it.)"""
    names: dict[int, str] = {}
    for i in range(100):
        name = f"cam-{i}.mp4"
        names.setdefault(xxhash.xxh64_intdigest(name.encode()) % 2, name)
        if len(names) == 2:
            return names[0], names[1]
    raise AssertionError("no names for both workers")


def _of(stream_id: str, index: int | None = None) -> Callable[[dict[str, Any]], bool]:
    """A log event predicate: about ``stream_id`` (and chunk ``index``)."""
    def matches(event: dict[str, Any]) -> bool:
        return event.get("stream_id") == stream_id and (index is None
                                                        or event.get("index") == index)
    return matches


# -- holding chunk PUTs at the proxy -----------------------------------------------------
def _chunk_put(bucket: str, rel_path: str, index: int) -> re.Pattern[str]:
    stem = rel_path.rsplit(".", 1)[0]
    return re.compile(rf"/{re.escape(bucket)}/streams/{re.escape(stem)}-[0-9a-f]{{8}}"
                      rf"/chunks/{index:06d}")


class HoldPut:
    """Proxy hook: a chunk PUT matching ``pattern`` is held before any of its bytes reach
    S3, and dropped unsent when released."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.entered = threading.Event()
        self.released = threading.Event()

    def matches(self, head: RequestHead) -> bool:
        return head.method == "PUT" and not head.query and bool(
            self.pattern.fullmatch(head.path))

    def __call__(self, head: RequestHead) -> None:
        if self.released.is_set() or not self.matches(head):
            return
        self.entered.set()
        self.released.wait(120)
        raise ConnectionAbortedError("held chunk PUT dropped unsent")


@pytest.fixture
def at_end() -> Iterator[list[Callable[[], None]]]:
    """Calls made when the test ends, whatever happened (release holds, stop writers)."""
    calls: list[Callable[[], None]] = []
    yield calls
    for call in calls:
        call()


def test_state_dir_of_the_previous_release_resumes_unchanged(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        at_end: list[Callable[[], None]]) -> None:
    old_tree = _extract_old_tree(tmp_path / "old-tree")
    hook_dir = tmp_path / "audit-hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
    import_log = tmp_path / "old-imports.log"
    import_log.touch()
    old_env = _old_env(old_tree, hook_dir, import_log)
    checkout = [REPO / package for package in PACKAGES]

    # the same venv python, with that environment, imports the old packages
    probe = subprocess.run(
        [sys.executable, "-c", "import json, supervisor, worker, shared; print(json.dumps("
                               "[m.__file__ for m in (supervisor, worker, shared)]))"],
        cwd=tmp_path, env=_environ(old_env), capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert all(Path(f).is_relative_to(old_tree) for f in json.loads(probe.stdout)), probe.stdout

    videos = tmp_path / "videos"
    videos.mkdir()
    done_video = make_video(videos / "done.mp4", 1.0)
    name_a, name_b = _two_names_on_two_workers()
    processor: Processor = make_processor(workers=2)
    processor.watch_dir.mkdir(parents=True, exist_ok=True)
    # A's chunk 1 reaches S3 but its answer is held; B's chunk 1 never gets past the proxy
    live_a = Recording(processor.watch_dir / name_a, make_video(videos / name_a, 8.0).read_bytes())
    live_b = Recording(processor.watch_dir / name_b, make_video(videos / name_b, 8.0).read_bytes())
    assert min(len(live_a.data), len(live_b.data)) > 2 * CHUNK + 2 * Trickle.RESERVE
    landed_put = _chunk_put(bucket, live_a.rel_path, 1)
    proxy.set_faults(response_delay=120.0, match=lambda head: head.method == "PUT" and not
                     head.query and bool(landed_put.fullmatch(head.path)))
    unsent_put = HoldPut(_chunk_put(bucket, live_b.rel_path, 1))
    at_end.append(unsent_put.released.set)
    proxy.on_request = unsent_put
    trickle = Trickle([live_a, live_b])
    at_end.append(trickle.stop)

    # ---- the old release builds the state dir --------------------------------------
    runner_module = sys.modules[type(processor).__module__]
    with monkeypatch.context() as patch:
        patch.setattr(runner_module, "processor_command", lambda: [sys.executable, "-c", OLD_MAIN])
        for key, value in old_env.items():
            patch.setenv(key, value)
        for key in [k for k in os.environ if k.startswith("COVERAGE_")]:
            patch.delenv(key)
        processor.start()
    old_run = processor.runs
    processor.wait_for_event("worker_started", count=2)
    shutil.copy(done_video, processor.watch_dir / "done.mp4")
    for rec in (live_a, live_b):
        rec.write_to(CHUNK + 64 * 1024)
    trickle.start()
    detected = {e["rel_path"]: e for e in processor.wait_for_event("stream_detected",
                                                                    count=3, timeout=30)}
    assert set(detected) == {"done.mp4", live_a.rel_path, live_b.rel_path}
    assert detected[live_a.rel_path]["process"] != detected[live_b.rel_path]["process"]
    ids = {rel: e["stream_id"] for rel, e in detected.items()}
    id_a, id_b, id_done = ids[live_a.rel_path], ids[live_b.rel_path], ids["done.mp4"]
    for stream_id in (id_a, id_b):
        processor.wait_for_event("chunk_uploaded", _of(stream_id, 0), timeout=30)
        processor.wait_for_event("multipart_started", _of(stream_id), timeout=30)
    processor.wait_for_event("stream_completed", _of(id_done), timeout=30)
    wait_for_metadata(client, bucket, "done.mp4", timeout=10, processor=processor)

    # chunk 1 of both live files is on disk: both PUTs go out and get stuck
    for rec in (live_a, live_b):
        rec.write_to(2 * CHUNK + 64 * 1024)
    wait_until(lambda: any(f.kind == "delayed_response" and landed_put.fullmatch(f.path)
                           for f in proxy.injected()),
               30, "A's chunk 1 PUT answered by S3 (answer held)", processor.tail)
    assert unsent_put.entered.wait(30), "B's chunk 1 PUT held\n" + processor.tail()
    assert processor.proc is not None
    old_group = _group(processor.proc.pid)
    processor.kill9()
    unsent_put.released.set()
    proxy.clear_faults()

    # ---- it was the old code that ran ----------------------------------------------
    loaded = _imports(import_log)
    workers = [pid for pid, cmdline in old_group.items() if "multiprocessing.spawn" in cmdline]
    helpers = [pid for pid, cmdline in old_group.items() if "worker.prober" in cmdline]
    assert len(workers) == 2 and helpers, old_group  # and the supervisor, spawn's tracker
    for pid in workers:  # each ran the old worker's main loop
        assert any(p.is_relative_to(old_tree / "worker") and p.name.startswith("process.")
                   for p in loaded.get(pid, ())), (pid, loaded.get(pid))
    for pid, cmdline in old_group.items():
        if "multiprocessing.resource_tracker" in cmdline:
            continue  # spawn's helper: runs no code of the service
        assert loaded.get(pid), f"process {pid} ({cmdline}) loaded no package of the service"
        assert all(_is_under(p, [old_tree]) for p in loaded[pid]), (cmdline, loaded[pid])
    stray = {p for paths in loaded.values() for p in paths if _is_under(p, checkout)}
    assert not stray, f"the old service imported the current checkout: {sorted(stray)[:5]}"

    # ---- the state it left ----------------------------------------------------------
    inspected = subprocess.run(
        [sys.executable, "-c", OLD_MAIN, "inspect", "--json", "--state-dir",
         str(processor.state_dir)],
        cwd=tmp_path, env=_environ(old_env), capture_output=True, text=True, timeout=60)
    assert inspected.returncode == 0, inspected.stderr
    state = json.loads(inspected.stdout)
    streams = {s["rel_path"]: s for w in state["workers"] for s in w["streams"]}
    pending = [i for w in state["workers"] for i in w["pending_intents"]]
    assert {rel: s["stream_id"] for rel, s in streams.items()} == ids
    assert streams["done.mp4"]["status"] == "complete"
    for rec in (live_a, live_b):
        assert streams[rec.rel_path]["status"] == "active"
        assert streams[rec.rel_path]["chunks"] == 1
    assert sorted((i["op"], i["stream_id"], i["index"]) for i in pending) == sorted(
        [("put_chunk", id_a, 1), ("put_chunk", id_b, 1)]), pending
    assert all(w["wal_torn_bytes"] == 0 for w in state["workers"])
    key_a1 = f"streams/{id_a}/chunks/000001"
    assert client.head_object(Bucket=bucket, Key=key_a1)["ContentLength"] == CHUNK
    assert f"streams/{id_b}/chunks/000001" not in list_keys(client, bucket, f"streams/{id_b}/")
    open_uploads = {u["Key"]: u["UploadId"] for u in client.list_multipart_uploads(
        Bucket=bucket).get("Uploads", [])}
    assert set(open_uploads) == {f"streams/{id_a}/{live_a.rel_path}",
                                 f"streams/{id_b}/{live_b.rel_path}"}
    done_meta_key = f"streams/{id_done}/metadata.json"
    done_meta = read_object(client, bucket, done_meta_key)

    # ---- the current code resumes it, the recordings go on, then end ---------------
    proxy.clear()
    processor.start()
    new_run = processor.runs
    assert new_run == old_run + 1
    processor.wait_for_event("worker_started", count=2)
    processor.wait_for_event("chunk_recovered", _of(id_a, 1), timeout=30)
    processor.wait_for_event("chunk_uploaded", _of(id_b, 1), timeout=30)
    trickle.stop()
    assert not trickle.exhausted, f"{trickle.exhausted} stopped growing too early"
    for rec in (live_a, live_b):
        rec.finish()
    docs = {rec.rel_path: wait_for_metadata(client, bucket, rec.rel_path, timeout=60,
                                            processor=processor, predicate=rec.is_whole)
            for rec in (live_a, live_b)}

    # every file is exactly one stream, under the id it had before the upgrade
    everything = list(metadata_documents(client, bucket))
    assert sorted(d["source_path"] for d in everything) == sorted(
        ["done.mp4", live_a.rel_path, live_b.rel_path])
    assert all(d["status"] == "complete" for d in everything)
    assert {k.split("/")[1] for k in list_keys(client, bucket, "streams/")} == {id_a, id_b,
                                                                                 id_done}
    for rec, stream_id in ((live_a, id_a), (live_b, id_b)):
        doc = docs[rec.rel_path]
        assert doc["stream_id"] == stream_id
        assert (processor.watch_dir / rec.rel_path).read_bytes() == rec.data
        check_stream(client, bucket, doc, rec.data)
        assert doc["chunks_reuploaded"] == 0
        assert doc["media"]["video_codec"] == "h264"
    (done_doc,) = [d for d in everything if d["source_path"] == "done.mp4"]
    assert done_doc["stream_id"] == id_done
    check_stream(client, bucket, done_doc, done_video.read_bytes())

    # after the upgrade: the completed stream was left alone, committed chunks were not
    # sent again, the landed intent was recovered without a PUT, the other sent once
    assert read_object(client, bucket, done_meta_key) == done_meta
    writes = [r for r in proxy.requests() if r.method in ("PUT", "POST", "DELETE")
              and r.path.startswith(f"/{bucket}/streams/{id_done}/")]
    assert not writes, [(r.method, r.path) for r in writes]
    assert chunk_puts(proxy, bucket, docs[live_a.rel_path]) == {2: 1}
    assert chunk_puts(proxy, bucket, docs[live_b.rel_path]) == {1: 1, 2: 1}
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # the final objects were assembled in the uploads the old release had opened
    completed = {r.path.removeprefix(f"/{bucket}/"): r.query["uploadId"]
                 for r in proxy.requests() if r.method == "POST" and "uploadId" in r.query}
    assert completed == open_uploads
    new_events = processor.events(new_run)
    assert not [e for e in new_events if e.get("event") == "stream_detected"], \
        "the current code started a stream the old state already had"
    problems = [e for e in new_events if e.get("level") in ("error", "critical")
                or e.get("event") == "<non-json>"]
    assert not problems, problems
