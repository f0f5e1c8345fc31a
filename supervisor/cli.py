"""``processor``: the command line, environment and ini file, merged and validated.

Precedence is command line > ``PROCESSOR_*`` environment > ``processor.ini``
(section ``[processor]``) > default: click's own order once the ini file is its
``default_map``. Bad configuration exits 2 with one line naming the option,
before any worker starts.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from click.core import ParameterSource

from shared.bandwidth import Timetable, parse_bwlimit
from shared.object_policy import (
    SSE_MODES,
    ObjectPolicy,
    loopback_endpoint,
    parse_object_tags,
    parse_storage_class,
    read_customer_key,
)
from shared.settings import (
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    S3_MAX_PARTS,
    MinFree,
    Settings,
    parse_duration,
    parse_extensions,
    parse_min_free,
    parse_size,
)
from shared.state.durable import make_dirs

__all__ = ["main", "cli", "parse_settings", "ConfigError", "WORKER_TARGET"]

# What each worker process runs, as ``module:function`` (as uvicorn takes its app): the
# supervisor is handed it and imports nothing of the worker's itself.
WORKER_TARGET = "worker.entry:run_worker"

DEFAULT_CONFIG = "processor.ini"
ENV_PREFIX = "PROCESSOR"
SUBCOMMANDS = ("status", "inspect", "playlist")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ConfigError(click.UsageError):
    """A configuration problem; printed as one line, exit status 2."""


class _Size(click.ParamType):
    name = "size"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            size = value
        else:
            try:
                size = parse_size(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
            self.fail(f"{size} bytes is outside 5MiB..5GiB (S3's part size limits)", param, ctx)
        return size


class _Extensions(click.ParamType):
    name = "list"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_extensions(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _MinFree(click.ParamType):
    name = "size|percent"

    def convert(self, value: Any, param: Any, ctx: Any) -> MinFree:
        if isinstance(value, MinFree):
            return value
        try:
            return parse_min_free(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Bwlimit(click.ParamType):
    name = "rate|timetable"

    def convert(self, value: Any, param: Any, ctx: Any) -> Timetable:
        if isinstance(value, Timetable):
            return value
        try:
            return parse_bwlimit(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _load_ini(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager: read the ini file into click's default_map before other options."""
    explicit = value is not None
    path = Path(value if value is not None else DEFAULT_CONFIG)
    if not path.exists():
        if explicit:
            raise click.BadParameter(f"file {str(path)!r} does not exist", ctx, param)
        return None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise click.BadParameter(f"{path}: {first}", ctx, param) from exc
    if not parser.has_section("processor"):
        return str(path)
    known = {p.name for p in ctx.command.params if p.name and p.name != "config"}
    values = dict(parser.items("processor"))
    for key in values:
        if key not in known:
            raise click.BadParameter(f"{path}: unknown key {key!r} in [processor]", ctx, param)
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return str(path)


def _check_watch_dir(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise click.BadParameter(f"directory {value!r} does not exist", ctx, param)
    if not os.access(path, os.R_OK | os.X_OK):
        raise click.BadParameter(f"directory {value!r} is not readable", ctx, param)
    return path.resolve()


def _check_state_dir(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    path = Path(value)
    try:
        make_dirs(path)  # a state dir that a power cut could take back is no state dir
    except OSError as exc:
        raise click.BadParameter(f"cannot create {value!r}: {exc.strerror}", ctx, param) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise click.BadParameter(f"directory {value!r} is not writable", ctx, param)
    return path.resolve()


def _check_endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter("must be an http:// or https:// URL", ctx, param)
    if parts.username or parts.password:
        raise click.BadParameter("must not contain credentials (use the AWS_* environment)",
                                 ctx, param)
    return value


def _check_bucket(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not _BUCKET.match(value) or ".." in value:
        raise click.BadParameter(f"{value!r} is not a valid S3 bucket name", ctx, param)
    return value


def _check_prefix(ctx: click.Context, param: click.Parameter, value: str) -> str:
    prefix = value.strip("/")
    if any(part in (".", "..") or not part for part in prefix.split("/")) and prefix:
        raise click.BadParameter(f"{value!r} has an empty, '.' or '..' part", ctx, param)
    return prefix


@click.command(context_settings={"auto_envvar_prefix": ENV_PREFIX, "show_default": True,
                                 "help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
              callback=_load_ini, help="ini file with a [processor] section "
                                       "[default: ./processor.ini if present]")
@click.option("--watch-dir", default="./input_files", callback=_check_watch_dir,
              help="Directory to watch for recordings.")
@click.option("--recursive/--no-recursive", default=True, help="Watch subdirectories too.")
@click.option("--extensions", type=_Extensions(), default="mp4",
              help="Comma-separated file extensions, case-insensitive.")
@click.option("--state-dir", default="./state", callback=_check_state_dir,
              help="Checkpoints (one LevelDB and write-ahead log per worker).")
@click.option("--workers", type=click.IntRange(1, 64), default=4, help="Worker processes.")
@click.option("--chunk-size", type=_Size(), default="10MiB",
              help="Chunk size: bytes or e.g. 5MiB/10MB; at least 5MiB.")
@click.option("--stream-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              help="Seconds without change after which a stream is complete.")
@click.option("--s3-endpoint", default=None, callback=_check_endpoint,
              help="S3 endpoint URL, e.g. http://minio:9000 [default: AWS]")
@click.option("--s3-bucket", default="video-streams", callback=_check_bucket)
@click.option("--s3-prefix", default="streams", callback=_check_prefix)
@click.option("--s3-region", default="us-east-1")
@click.option("--create-bucket/--no-create-bucket", default=True,
              help="Create the bucket if it is missing.")
@click.option("--keep-chunks/--no-keep-chunks", default=True,
              help="Keep chunk objects after the final object is assembled.")
@click.option("--trust-settled/--no-trust-settled", default=True,
              help="Verify chunks of a file that had settled before they were read (ctime "
                   "60 s old, local filesystem) by its unchanged state instead of reading "
                   "them again at completion.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=9100,
              help="Port of /metrics, /healthz, /readyz; 0 disables.")
@click.option("--metrics-host", default="0.0.0.0")
@click.option("--drain-timeout", type=click.FloatRange(min=0, min_open=True), default=25.0,
              help="Seconds SIGTERM may take.")
@click.option("--poll/--no-poll", default=False,
              help="Polling observer, for network and bind-mounted filesystems.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"],
                                               case_sensitive=False), default="info")
@click.option("--log-format", type=click.Choice(["json", "console"], case_sensitive=False),
              default="json")
@click.option("--max-parts", type=click.IntRange(1, S3_MAX_PARTS), default=S3_MAX_PARTS,
              help="Parts one multipart upload may have (S3: 10,000; lower for stores "
                   "with a lower limit); past it, assembly goes in two levels.")
@click.option("--delete-after", type=_Duration(), default=None,
              help="Remove a source file this long after it is safely in S3 (e.g. 0s, 15m, "
                   "7d) [default: off]")
@click.option("--min-free", type=_MinFree(), default=None,
              help="Keep this much free on the watch dir's filesystem (e.g. 2GiB, 10%), "
                   "removing the oldest safe files first [default: off]")
@click.option("--delete-dry-run", is_flag=True, default=False,
              help="Log what --delete-after/--min-free would remove; remove nothing.")
@click.option("--bwlimit", type=_Bwlimit(), default=None,
              help="Cap on chunk bodies sent by all workers together: a rate (4MiB/s, "
                   "30Mbit/s) or a timetable in local time (\"Mon-Fri 08:00,2MiB/s "
                   "19:00,off\") [default: no cap]")
@click.option("--live-first/--no-live-first", default=True, hidden=True,
              help="Live streams before backlog (contract §8); off only to measure it.")
@click.option("--recover-from-bucket/--no-recover-from-bucket", default=True,
              help="On a new or lost state dir, find each file's stream again in S3 by "
                   "its path and bytes instead of uploading it again.")
@click.option("--live-playlist/--no-live-playlist", default=True,
              help="Fragmented MP4s: end chunks on fragments and keep an HLS playlist "
                   "(P/playlist.m3u8) playable while they record.")
@click.option("--sse", type=click.Choice(SSE_MODES), default=None,
              help="Server-side encryption of every object [default: the bucket's]")
@click.option("--sse-kms-key-id", default=None,
              help="KMS key for --sse aws:kms [default: the account's S3 key]")
@click.option("--sse-c-key-file", default=None,
              help="File of exactly 32 bytes: encrypt every object with this customer "
                   "key (SSE-C); needs https, or an endpoint on this host")
@click.option("--storage-class", default=None,
              help="Storage class of every object, e.g. STANDARD_IA [default: the bucket's]")
@click.option("--object-tags", default=None,
              help="Tags of every object: key=value,key=value (or S3's key=value&key=value)")
def cli(**options: Any) -> Settings:
    """Ship growing MP4 recordings to S3 in ordered chunks; runs until SIGTERM.

    \b
    Other commands:
      processor status   show the running service's streams (--watch, --json)
      processor inspect  print the checkpoints of a stopped service
      processor playlist print a stream's live playlist with presigned URLs
    """
    options["log_level"] = options["log_level"].lower()
    options["log_format"] = options["log_format"].lower()
    options["s3_endpoint"] = options["s3_endpoint"] or None
    options["policy"] = object_policy(options)
    settings = Settings(**options)
    if settings.removes_files and not os.access(settings.watch_dir, os.W_OK | os.X_OK):
        # access() answers EROFS for a read-only mount too, root or not
        option = "--delete-after" if settings.delete_after is not None else "--min-free"
        raise ConfigError(f"{option} removes files, but the watch dir "
                          f"{str(settings.watch_dir)!r} is read-only or not writable "
                          "by this process (mount it read-write, or use --delete-dry-run)")
    return settings


def object_policy(options: dict[str, Any]) -> ObjectPolicy:
    """Take the bucket-policy options out of ``options`` as one ObjectPolicy; a bad
    value is a one-line ConfigError naming its option (never an SSE-C key's bytes)."""
    sse, kms_key_id = options.pop("sse"), options.pop("sse_kms_key_id")
    key_file, storage_class = options.pop("sse_c_key_file"), options.pop("storage_class")
    tags = options.pop("object_tags")
    try:
        option = "--sse-c-key-file"
        customer_key = read_customer_key(key_file) if key_file else None
        option = "--storage-class"
        storage_class = parse_storage_class(storage_class) if storage_class else None
        option = "--object-tags"
        tags = parse_object_tags(tags) if tags else None
        option = ""  # the combination: its messages name their options
        policy = ObjectPolicy(sse, kms_key_id or None, customer_key, storage_class, tags)
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}" if option else str(exc)) from None
    # boto3 also takes the endpoint from the environment when no option names one
    endpoint = (options["s3_endpoint"] or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))
    if customer_key is not None and endpoint and urlsplit(endpoint).scheme == "http" \
            and not loopback_endpoint(endpoint):
        raise ConfigError("--sse-c-key-file: S3 refuses SSE-C keys over plain http, and "
                          "the key would cross the network in clear; use an https "
                          "--s3-endpoint")
    return policy


def _describe_source(exc: click.BadParameter) -> str:
    if exc.ctx is None or exc.param is None or exc.param.name is None:
        return ""
    source = exc.ctx.get_parameter_source(exc.param.name)
    if source is ParameterSource.ENVIRONMENT:
        return f" (from {ENV_PREFIX}_{exc.param.name.upper()})"
    if source is ParameterSource.DEFAULT_MAP:
        return " (from the ini file)"
    return ""


def parse_settings(argv: list[str]) -> Settings | int:
    """Settings for ``argv``, or an exit status when nothing should run (help, errors)."""
    try:
        result = cli.main(args=argv, prog_name="processor", standalone_mode=False)
    except click.BadParameter as exc:
        click.echo(f"processor: error: {exc.format_message()}{_describe_source(exc)}",
                   err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"processor: error: {exc.format_message()}", err=True)
        return 2
    except click.exceptions.Abort:
        return 1
    if isinstance(result, Settings):
        return result
    return int(result or 0)


def _subcommands() -> dict[str, click.Command]:
    from supervisor.inspection import inspect_state
    from supervisor.playlist_command import playlist
    from supervisor.status import status
    return {"status": status, "inspect": inspect_state, "playlist": playlist}


def main(argv: list[str] | None = None, early_signals: list[int] | None = None) -> int:
    """Run the service (or a subcommand). ``early_signals`` collects signals that
    arrived before the supervisor's handlers exist (see ``supervisor.entry``)."""
    argv = sys.argv[1:] if argv is None else argv
    early_signals = [] if early_signals is None else early_signals
    if argv and argv[0] in SUBCOMMANDS:
        command = _subcommands()[argv[0]]
        return int(command.main(args=argv[1:], prog_name=f"processor {argv[0]}",
                                standalone_mode=True) or 0)
    settings = parse_settings(argv)
    if not isinstance(settings, Settings):
        return settings
    if early_signals:
        return 0  # stopped before anything started: nothing to drain
    # prometheus_client reads this at import: set it before anything imports metrics.
    metrics_dir = tempfile.mkdtemp(prefix="processor-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        from shared.logs import configure_logging
        from supervisor.arbiter import Supervisor

        configure_logging(settings.log_level, settings.log_format, process="supervisor",
                          pid=os.getpid())
        return Supervisor(settings, early_signals, worker_target=WORKER_TARGET).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
