"""A recording the service may not read (mode 000) until an operator fixes it.

The tests run as root, for whom mode 000 stops nothing, so the processor runs as
``nobody`` (``setpriv``) with a working dir under /tmp it can use, through an
interpreter it may execute (see ``support.unprivileged_command``); where that is
impossible the module is skipped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.badinput.support import (
    NOBODY_UID,
    NOGROUP_GID,
    Service,
    keep_artefacts,
    service,
    unprivileged_command,
)
from tests.support.bucket import check_stream, metadata_documents, wait_for_metadata
from tests.support.runner import wait_until
from tests.support.s3server import S3Endpoint

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def unprivileged(tmp_path_factory: pytest.TempPathFactory,
                 s3: S3Endpoint) -> Iterator[Service]:
    """A processor running as nobody (the pytest temp dir is root-only, hence /tmp)."""
    argv = unprivileged_command()
    if argv is None:
        pytest.skip("cannot run the processor as nobody here (needs root, setpriv, the "
                    "nobody user and an interpreter nobody can execute)")
    workdir = Path(tempfile.mkdtemp(prefix="vsp-unprivileged-", dir="/tmp"))
    try:
        workdir.chmod(0o755)
        (workdir / "in").mkdir(mode=0o755)
        (workdir / "state").mkdir()
        os.chown(workdir / "state", NOBODY_UID, NOGROUP_GID)
        with service(workdir, s3, workers=1, argv=argv) as svc:
            yield svc
    finally:
        keep_artefacts(workdir, tmp_path_factory.mktemp("unprivileged-artefacts"))
        shutil.rmtree(workdir, ignore_errors=True)


def test_processor_really_runs_unprivileged(unprivileged: Service) -> None:
    for event in unprivileged.events("worker_started"):
        assert os.stat(f"/proc/{event['pid']}").st_uid == NOBODY_UID


def test_unreadable_file_is_reported_then_shipped_once_fixed(unprivileged: Service) -> None:
    svc = unprivileged
    data = os.urandom((5 << 20) + 4321)
    path = svc.watch_dir / "locked.mp4"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o000)  # never readable
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    events = wait_until(lambda: svc.events("source_unreadable", rel_path="locked.mp4"), 60,
                        "source_unreadable", svc.processor.tail)
    assert "Permission denied" in events[0]["error"]
    assert not has_metadata(svc, "locked.mp4")
    path.chmod(0o644)  # the operator fixes it
    doc = wait_for_metadata(svc.client, svc.bucket, "locked.mp4", processor=svc.processor)
    check_stream(svc.client, svc.bucket, doc, data)
    assert len(svc.events("source_unreadable", rel_path="locked.mp4")) == 1  # logged once
    assert not svc.events("stream_failed")


def test_unreadable_file_is_counted_in_metrics(unprivileged: Service) -> None:
    svc = unprivileged
    path = svc.watch_dir / "locked-too.mp4"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o000)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(1000))
    try:
        wait_until(lambda: svc.events("source_unreadable", rel_path="locked-too.mp4"), 60,
                   "source_unreadable", svc.processor.tail)
        text = svc.metrics_text()
        counted = [line for line in text.splitlines()
                   if not line.startswith("#") and ("source" in line or "unreadable" in line)
                   and 'status="source_' not in line and float(line.rsplit(" ", 1)[1]) > 0]
        assert counted, "no metric counts unreadable sources"
    finally:
        path.chmod(0o644)


def has_metadata(svc: Service, rel: str) -> bool:
    """Whether metadata.json for ``rel`` exists right now (no waiting)."""
    return any(d["source_path"] == rel for d in metadata_documents(svc.client, svc.bucket))
