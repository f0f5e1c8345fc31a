"""The secret access key (and the SSE-C tests' key) never appears in logs, metrics,
metadata or error output.

The last test greps every artefact this pytest session left: the logs of every
processor run, every ``/metrics`` scrape, the stderr of failed starts (all under
the session temp dir), and the objects of every bucket the bad-input and security
suites made (every object of small buckets, every metadata.json of large ones:
the chunks of a big bucket are copies of the test's own random bytes).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.badinput.support import BUCKET_PREFIX, service
from tests.support.bucket import list_keys, read_object, wait_for_metadata
from tests.support.http import http_get
from tests.support.runner import processor_command
from tests.support.s3server import S3Endpoint, free_port
from tests.support.secrets import SSE_C_TEST_KEY, sse_c_forms
from tests.support.videos import make_not_mp4

pytestmark = pytest.mark.timeout(180)


def run_cli(args: list[str], s3: S3Endpoint, cwd: Path, extra_env: dict[str, str]) -> \
        subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROCESSOR_", "AWS_"))}
    env.update(s3.env())
    env.update(extra_env)
    return subprocess.run(processor_command() + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def bad_configs(s3: S3Endpoint) -> dict[str, tuple[list[str], dict[str, str], str]]:
    secret = s3.secret_key
    return {
        "endpoint_scheme": (["--s3-endpoint", "ftp://127.0.0.1:1"], {}, ""),
        "endpoint_with_credentials": (
            ["--s3-endpoint", f"http://AKIDEXAMPLE:{secret}@127.0.0.1:1"], {}, ""),
        "endpoint_env_with_credentials": (
            [], {"PROCESSOR_S3_ENDPOINT": f"https://k:{secret}@s3.example"}, ""),
        "unknown_ini_key": ([], {}, f"[processor]\naws_secret_access_key = {secret}\n"),
        "unknown_flag": (["--aws-secret-access-key", secret], {}, ""),
        "bad_bucket": (["--s3-bucket", "Bad_Bucket!"], {}, ""),
    }


@pytest.mark.parametrize("case", ["endpoint_scheme", "endpoint_with_credentials",
                                  "endpoint_env_with_credentials", "unknown_ini_key",
                                  "unknown_flag", "bad_bucket"])
def test_failing_configuration_never_prints_the_secret(tmp_path: Path, s3: S3Endpoint,
                                                       case: str) -> None:
    args, env, ini = bad_configs(s3)[case]
    (tmp_path / "in").mkdir()
    if ini:
        (tmp_path / "processor.ini").write_text(ini)
    result = run_cli(["--watch-dir", "in", "--state-dir", "state", "--metrics-port", "0",
                      *args], s3, tmp_path, env)
    (tmp_path / f"stderr-{case}.txt").write_text(result.stdout + result.stderr)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("processor: error:") and \
        len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert s3.secret_key not in result.stdout + result.stderr


def test_unreachable_endpoint_logs_and_metrics_hold_no_secret(tmp_path: Path,
                                                              s3: S3Endpoint) -> None:
    """S3 down: retries, errors and /readyz bodies describe the failure, not the key."""
    dead = s3.with_url(f"http://127.0.0.1:{free_port()}")
    with service(tmp_path, dead, workers=1, start=False) as svc:
        svc.watch_dir.mkdir(parents=True)
        make_not_mp4(svc.watch_dir / "stuck.mp4", 1000)
        svc.processor.start()
        svc.processor.wait_for_event("bucket_unavailable", timeout=60)
        status, body = http_get(f"http://127.0.0.1:{svc.metrics_port}/readyz")
        assert status == 503, (status, body)  # unready, and the body says why
        (svc.processor.workdir / "readyz.txt").write_text(body)
        text = svc.metrics_text()
        assert "processor_" in text
        for artefact in (body, text, svc.processor.log_path().read_text(errors="replace")):
            assert s3.secret_key not in artefact


def test_working_run_holds_no_secret(tmp_path: Path, s3: S3Endpoint) -> None:
    with service(tmp_path, s3, workers=1, extra=["--log-level", "debug"]) as svc:
        make_not_mp4(svc.watch_dir / "a.mp4", (5 << 20) + 7)
        wait_for_metadata(svc.client, svc.bucket, "a.mp4", processor=svc.processor)
        text = svc.metrics_text()
        for artefact in (text, svc.processor.log_path().read_text(errors="replace")):
            assert s3.secret_key not in artefact
        for key in svc.object_keys():
            assert s3.secret_key.encode() not in read_object(svc.client, svc.bucket, key)


def test_no_artefact_of_this_session_holds_the_secret(
        tmp_path_factory: pytest.TempPathFactory, s3: S3Endpoint) -> None:
    secret = s3.secret_key.encode()
    forbidden = [secret, *sse_c_forms(SSE_C_TEST_KEY)]  # the SSE-C tests' key too
    scanned = 0
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's, holding every process's directory
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and (
                path.suffix in (".log", ".txt", ".json") or path.name.startswith("run-")):
            data = path.read_bytes()
            for form in forbidden:
                assert form not in data, path
            scanned += 1
    assert scanned > 0
    client: Any = s3.client()
    buckets = [b["Name"] for b in client.list_buckets().get("Buckets", [])
               if b["Name"].startswith(BUCKET_PREFIX + "-")]
    objects = 0
    for bucket in buckets:
        keys = list_keys(client, bucket)
        for key in keys if len(keys) <= 300 else [k for k in keys
                                                  if k.endswith("/metadata.json")]:
            assert secret not in read_object(client, bucket, key), (bucket, key)
            objects += 1
    assert buckets and objects
