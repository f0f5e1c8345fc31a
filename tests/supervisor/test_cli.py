"""Configuration: precedence, ini files, and one-line errors with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import Settings
from supervisor.cli import parse_settings


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with an input dir and no PROCESSOR_* variables."""
    for name in list(os.environ):
        if name.startswith("PROCESSOR_"):
            monkeypatch.delenv(name)
    (tmp_path / "input_files").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def settings(argv: list[str]) -> Settings:
    result = parse_settings(argv)
    assert isinstance(result, Settings), result
    return result


def error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert parse_settings(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_defaults_match_the_contract(workdir: Path) -> None:
    """With no file, variable or flag, every option has the contract's default."""
    s = settings([])
    assert s.watch_dir == (workdir / "input_files").resolve()
    assert s.state_dir == (workdir / "state").resolve()
    assert (s.recursive, s.extensions, s.workers, s.chunk_size) == (True, ("mp4",), 4, 10 << 20)
    assert (s.stream_timeout, s.s3_endpoint, s.s3_bucket, s.s3_prefix) == (
        30.0, None, "video-streams", "streams")
    assert (s.s3_region, s.create_bucket, s.keep_chunks) == ("us-east-1", True, True)
    assert (s.metrics_port, s.metrics_host, s.drain_timeout, s.poll) == (9100, "0.0.0.0", 25.0,
                                                                         False)
    assert (s.log_level, s.log_format) == ("info", "json")


def test_precedence_flag_over_env_over_ini_over_default(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line beats the environment, which beats processor.ini."""
    (workdir / "processor.ini").write_text(
        "[processor]\nworkers = 3\nchunk_size = 6MiB\ns3_bucket = from-ini\nrecursive = false\n")
    monkeypatch.setenv("PROCESSOR_WORKERS", "5")
    monkeypatch.setenv("PROCESSOR_S3_BUCKET", "from-env")
    s = settings(["--workers", "8"])
    assert s.workers == 8                   # flag > env
    assert s.s3_bucket == "from-env"        # env > ini
    assert s.chunk_size == 6 << 20          # ini > default
    assert s.recursive is False             # a boolean from the ini file
    assert s.s3_prefix == "streams"         # default


def test_explicit_config_path_and_env_config(workdir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """--config and PROCESSOR_CONFIG name another ini file."""
    other = workdir / "other.ini"
    other.write_text("[processor]\nworkers = 7\n")
    assert settings(["--config", str(other)]).workers == 7
    monkeypatch.setenv("PROCESSOR_CONFIG", str(other))
    assert settings([]).workers == 7


def test_boolean_flags_from_environment(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Boolean options read true/false from PROCESSOR_* variables."""
    monkeypatch.setenv("PROCESSOR_POLL", "true")
    monkeypatch.setenv("PROCESSOR_KEEP_CHUNKS", "false")
    monkeypatch.setenv("PROCESSOR_TRUST_SETTLED", "false")
    s = settings([])
    assert s.poll is True and s.keep_chunks is False and s.trust_settled is False
    assert settings(["--trust-settled"]).trust_settled is True


def test_sizes_extensions_and_prefix_are_normalised(workdir: Path) -> None:
    """Sizes take units, extensions are lower-cased, the prefix loses its slashes."""
    s = settings(["--chunk-size", "5242880", "--extensions", "MP4, .mov",
                  "--s3-prefix", "/a/b/", "--log-level", "DEBUG"])
    assert s.chunk_size == 5 << 20
    assert s.extensions == ("mp4", "mov")
    assert s.s3_prefix == "a/b"
    assert s.log_level == "debug"


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--workers", "0"], "'--workers'"),
    (["--workers", "65"], "'--workers'"),
    (["--chunk-size", "4MiB"], "'--chunk-size'"),
    (["--chunk-size", "ten"], "'--chunk-size'"),
    (["--stream-timeout", "0"], "'--stream-timeout'"),
    (["--watch-dir", "missing"], "'--watch-dir'"),
    (["--s3-endpoint", "minio:9000"], "'--s3-endpoint'"),
    (["--s3-endpoint", "http://user:pw@minio:9000"], "'--s3-endpoint'"),
    (["--s3-bucket", "Bad_Bucket"], "'--s3-bucket'"),
    (["--s3-prefix", "a/../b"], "'--s3-prefix'"),
    (["--metrics-port", "70000"], "'--metrics-port'"),
    (["--log-format", "xml"], "'--log-format'"),
    (["--extensions", ","], "'--extensions'"),
    (["--config", "nope.ini"], "'--config'"),
    (["--no-such-option"], "--no-such-option"),
])
def test_bad_values_give_one_line_naming_the_option(
        workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> None:
    """Each bad value exits 2 with a single line that names the option."""
    line = error_line(argv, capsys)
    assert line.startswith("processor: error:")
    assert fragment in line


def test_error_says_where_a_bad_value_came_from(
        workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad value from the environment or the ini file names its source."""
    monkeypatch.setenv("PROCESSOR_WORKERS", "many")
    assert "PROCESSOR_WORKERS" in error_line([], capsys)
    monkeypatch.delenv("PROCESSOR_WORKERS")
    (workdir / "processor.ini").write_text("[processor]\ndrain_timeout = -1\n")
    assert "ini file" in error_line([], capsys)


def test_unknown_ini_key_is_an_error(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in processor.ini is reported, not silently ignored."""
    (workdir / "processor.ini").write_text("[processor]\nworkerz = 2\n")
    assert "workerz" in error_line([], capsys)


def test_unwritable_state_dir_is_an_error(workdir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A state dir that cannot be created is reported before anything starts."""
    blocker = workdir / "file"
    blocker.write_text("x")
    assert "'--state-dir'" in error_line(["--state-dir", str(blocker / "state")], capsys)


def test_repository_ini_changes_no_default(workdir: Path) -> None:
    """The shipped processor.ini documents every option and sets none."""
    shipped = Path(__file__).resolve().parents[2] / "processor.ini"
    text = shipped.read_text()
    (workdir / "processor.ini").write_text(text)
    s = settings([])
    assert s.workers == 4 and s.chunk_size == 10 << 20
    from supervisor.cli import cli
    for param in cli.params:
        if param.name and param.name != "config" and not getattr(param, "hidden", False):
            assert f"# {param.name} =" in text, f"{param.name} undocumented in processor.ini"


def test_bad_config_exits_2_before_any_worker(tmp_path: Path) -> None:
    """The real command exits 2 with one stderr line and starts nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCESSOR_")}
    proc = subprocess.run([sys.executable, "-m", "supervisor.cli", "--workers", "100"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "'--workers'" in proc.stderr
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def test_retention_is_off_by_default(workdir: Path) -> None:
    s = settings([])
    assert s.delete_after is None and s.min_free is None and not s.delete_dry_run
    assert not s.retention and not s.removes_files


def test_retention_options_from_flag_environment_and_ini(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(["--delete-after", "15m", "--min-free", "10%"])
    assert s.delete_after == 900 and s.min_free is not None and s.min_free.percent == 10
    assert s.removes_files
    (workdir / "processor.ini").write_text(
        "[processor]\ndelete_after = 7d\nmin_free = 2GiB\ndelete_dry_run = true\n")
    s = settings([])
    assert s.delete_after == 7 * 86400 and s.min_free is not None
    assert s.min_free.bytes == 2 << 30 and s.delete_dry_run and not s.removes_files
    monkeypatch.setenv("PROCESSOR_DELETE_AFTER", "0s")
    assert settings([]).delete_after == 0


@pytest.mark.parametrize("argv, option", [
    (["--delete-after", "soon"], "'--delete-after'"),
    (["--delete-after", "-5s"], "'--delete-after'"),
    (["--delete-after", "5w"], "'--delete-after'"),
    (["--min-free", "lots"], "'--min-free'"),
    (["--min-free", "100%"], "'--min-free'"),
    (["--min-free", "0%"], "'--min-free'"),
    (["--min-free", "0"], "'--min-free'"),
])
def test_bad_retention_values_are_one_line_errors(
        workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], option: str) -> None:
    assert option in error_line(argv, capsys)



def test_the_uplink_is_uncapped_by_default_and_read_from_flag_environment_and_ini(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings([]).bwlimit is None and settings([]).live_first
    assert str(settings(["--bwlimit", "4MiB/s"]).bwlimit) == "4MiB/s"
    (workdir / "processor.ini").write_text(
        "[processor]\nbwlimit = Mon-Fri 08:00,2MiB/s 19:00,off\n")
    table = settings([]).bwlimit
    assert table is not None and len(table.entries) == 10 and not table.constant
    monkeypatch.setenv("PROCESSOR_BWLIMIT", "30Mbit/s")
    assert str(settings([]).bwlimit) == "30Mbit/s"
    monkeypatch.setenv("PROCESSOR_BWLIMIT", "")  # empty (compose's default): no cap
    (workdir / "processor.ini").unlink()
    assert settings([]).bwlimit is None


def test_a_bad_bwlimit_exits_2_saying_why_and_where_it_came_from(
        workdir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(["--bwlimit", "4Mb/s"], capsys)
    assert "'--bwlimit'" in line and "bits or bytes" in line
    monkeypatch.setenv("PROCESSOR_BWLIMIT", "08:00,2MiB/s 25:00,off")
    line = error_line([], capsys)
    assert "not a time of day" in line and "PROCESSOR_BWLIMIT" in line


def test_bucket_policy_options_from_flag_environment_and_ini(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings([]).policy.write() == {} and settings([]).policy.encryption is None
    policy = settings(["--sse", "aws:kms", "--sse-kms-key-id", "alias/cams",
                       "--storage-class", "STANDARD_IA",
                       "--object-tags", "camera=front door,site=lab"]).policy
    assert policy.write() == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "alias/cams",
                              "StorageClass": "STANDARD_IA",
                              "Tagging": "camera=front%20door&site=lab"}
    assert policy.part_copy() == {} and policy.read() == {}  # only SSE-C rides on those
    (workdir / "processor.ini").write_text("[processor]\nobject_tags = a=1&b=x%20y\n")
    assert settings([]).policy.tags == "a=1&b=x%20y"
    key = workdir / "k"
    key.write_bytes(bytes(range(32)))
    monkeypatch.setenv("PROCESSOR_SSE_C_KEY_FILE", str(key))
    policy = settings(["--s3-endpoint", "https://s3.example"]).policy
    assert policy.encryption == "SSE-C" and "SSE-C" not in repr(policy)
    assert bytes(range(32)) not in repr(policy).encode() and "0x" not in repr(policy)
    copy = policy.copy()
    assert copy["SSECustomerKey"] == copy["CopySourceSSECustomerKey"] == bytes(range(32))
    assert copy["TaggingDirective"] == "REPLACE"
    assert set(policy.read()) == {"SSECustomerAlgorithm", "SSECustomerKey"}


@pytest.mark.parametrize("argv,expected", [
    (["--sse", "AES128"], "'--sse'"),
    (["--sse-kms-key-id", "alias/x"], "--sse-kms-key-id needs --sse aws:kms"),
    (["--storage-class", "GLACIER"], "--storage-class: GLACIER objects cannot be copied"),
    (["--storage-class", "standard ia"], "is not a storage class"),
    (["--object-tags", "camera"], "--object-tags: 'camera' is not key=value"),
    (["--object-tags", "a=1,a=2"], "tag 'a' is given twice"),
    (["--object-tags", ",".join(f"k{i}=v" for i in range(11))], "at most 10"),
    (["--sse-c-key-file", "missing.key"], "cannot read 'missing.key'"),
])
def test_bad_bucket_policy_values_are_one_line_errors(
        workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
        expected: str) -> None:
    assert expected in error_line(argv, capsys)


@pytest.mark.parametrize("size", [0, 31, 33, 44])
def test_an_sse_c_key_file_must_hold_exactly_32_bytes(
        workdir: Path, capsys: pytest.CaptureFixture[str], size: int) -> None:
    key = workdir / "bad.key"
    secret = os.urandom(size)
    key.write_bytes(secret)
    line = error_line(["--sse-c-key-file", str(key)], capsys)
    assert f"holds {size} bytes" in line and "exactly 32" in line
    assert secret.hex() not in line if secret else True


def test_sse_c_over_plain_http_is_refused_unless_the_endpoint_is_this_host(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = workdir / "k"
    key.write_bytes(os.urandom(32))
    line = error_line(["--sse-c-key-file", str(key), "--s3-endpoint", "http://minio:9000"],
                      capsys)
    assert "plain http" in line and "https" in line
    line = error_line(["--sse-c-key-file", str(key), "--sse", "AES256"], capsys)
    assert "exclusive" in line
    for local in ("http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000",
                  "https://minio:9000"):
        assert settings(["--sse-c-key-file", str(key), "--s3-endpoint", local]
                        ).policy.encryption == "SSE-C"
    assert settings(["--sse-c-key-file", str(key)]).policy.encryption == "SSE-C"  # AWS: https


def test_sse_c_also_checks_an_endpoint_from_boto3s_environment(
        workdir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    key = workdir / "k"
    key.write_bytes(os.urandom(32))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.lan:9000")
    assert "plain http" in error_line(["--sse-c-key-file", str(key)], capsys)
