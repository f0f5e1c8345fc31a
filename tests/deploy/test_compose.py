"""Static checks of the container deployment: Dockerfile, docker-compose.yml, its
local-retention override docker-compose.retention.yml, Prometheus.

Nothing here needs Docker: the files are parsed and compared with the contract
(watch dir read-only, state persisted, drain timeout, metrics port, credentials), and
the override is merged with the base file by Compose's merge rules. Where
`docker compose` is installed, its own merge (`config`) is checked as well.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from shared.settings import parse_duration, parse_min_free

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
RETENTION_FILE = ROOT / "docker-compose.retention.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

DEFAULT_DRAIN_TIMEOUT = 25.0  # seconds, the contract's --drain-timeout default
DEFAULT_METRICS_PORT = 9100
COMPILERS = ("gcc", "g++", "clang", "build-essential", "python3-dev", "libleveldb-dev")
RETENTION_OPTIONS = ("PROCESSOR_DELETE_AFTER", "PROCESSOR_MIN_FREE")  # the override sets them

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}; "$${...}" is an escaped literal.
_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


# --- helpers --------------------------------------------------------------------


def _interpolate(value: str) -> str:
    """Substitute ``${VAR:-default}`` with its default, as compose does without a .env."""
    return _VAR.sub(lambda m: m.group(3) if m.group(2) in (":-", "-") else "", value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, from either the mapping or the list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if val is None else str(val) for key, val in env.items()}


def _volumes(service: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's volumes in compose's long syntax, whichever syntax the file uses."""
    result = []
    for item in service.get("volumes") or []:
        if isinstance(item, dict):
            result.append(item)
            continue
        parts = item.split(":")
        if len(parts) == 1:
            result.append({"type": "volume", "target": parts[0]})
            continue
        source, target = parts[0], parts[1]
        options = parts[2].split(",") if len(parts) > 2 else []
        is_path = source.startswith((".", "/", "~"))
        result.append(
            {
                "type": "bind" if is_path else "volume",
                "source": source,
                "target": target,
                "read_only": "ro" in options,
            }
        )
    return result


def _volume_at(service: dict[str, Any], target: str) -> dict[str, Any]:
    """The volume mounted at ``target``; fail the test when there is none."""
    for volume in _volumes(service):
        if PurePosixPath(volume["target"]) == PurePosixPath(target):
            return volume
    pytest.fail(f"no volume is mounted at {target}")


def _duration(text: str | int | float) -> float:
    """Parse a compose duration such as ``35s`` or ``1m30s`` into seconds."""
    if isinstance(text, int | float):
        return float(text)
    parts = _DURATION_PART.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _strings(node: Any) -> list[str]:
    """Every string in a parsed YAML document, keys included (comments are gone)."""
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in _strings(key) + _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return [node] if isinstance(node, str) else []


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments) pairs, continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each starting with its FROM instruction."""
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _final_stage() -> list[tuple[str, str]]:
    """The instructions of the image's last (runtime) stage."""
    stages = _stages()
    assert stages, "the Dockerfile has no FROM"
    return stages[-1]


def _image_env() -> dict[str, str]:
    """The ENV values of the final stage."""
    env: dict[str, str] = {}
    for keyword, args in _final_stage():
        if keyword == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def _container_env(name: str, compose: dict[str, Any]) -> dict[str, str]:
    """A service's effective environment: image ENV overlaid by compose (defaults)."""
    env = _image_env() if name == "processor" else {}
    env.update({k: _interpolate(v) for k, v in _environment(compose["services"][name]).items()})
    return env


def _merge(base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    """Compose's merge of two YAML nodes: mappings key by key, sequences appended (no
    duplicates), anything else replaced; command, entrypoint and healthcheck.test are
    replaced whole."""
    if path[-1:] in (("command",), ("entrypoint",)) or path[-2:] == ("healthcheck", "test"):
        return override
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value, (*path, key)) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + [item for item in override if item not in base]
    return override


def _merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """One service of ``docker compose -f base -f override``: environment merged by
    variable and volumes by container path (each in its expanded form), the rest by
    ``_merge``."""
    merged = _merge({k: v for k, v in base.items() if k not in ("environment", "volumes")},
                    {k: v for k, v in override.items() if k not in ("environment", "volumes")})
    if "environment" in base or "environment" in override:
        merged["environment"] = {**_environment(base), **_environment(override)}
    if "volumes" in base or "volumes" in override:
        by_target = {PurePosixPath(v["target"]): v for v in _volumes(base)}
        by_target.update({PurePosixPath(v["target"]): v for v in _volumes(override)})
        merged["volumes"] = list(by_target.values())
    return merged


def _merge_files(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Two parsed Compose files merged as ``docker compose -f base -f override`` does."""
    merged = _merge({k: v for k, v in base.items() if k != "services"},
                    {k: v for k, v in override.items() if k != "services"})
    services = dict(base.get("services") or {})
    for name, service in (override.get("services") or {}).items():
        services[name] = _merge_service(services[name], service) if name in services else service
    merged["services"] = services
    return merged


def _image_user() -> str:
    """The final stage's USER."""
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users, "no USER in the final stage"
    return users[-1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml, parsed."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def retention() -> dict[str, Any]:
    """docker-compose.retention.yml, parsed."""
    data = yaml.safe_load(RETENTION_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def merged(compose: dict[str, Any], retention: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml with docker-compose.retention.yml over it."""
    return _merge_files(compose, retention)


@pytest.fixture(scope="module")
def processor(compose: dict[str, Any]) -> dict[str, Any]:
    """The processor service definition."""
    service: dict[str, Any] = compose["services"]["processor"]
    return service


# --- docker-compose.yml ---------------------------------------------------------------


def test_compose_defines_the_four_services_without_version_key(compose: dict[str, Any]) -> None:
    """The stack has minio, minio-init, processor and prometheus, in Compose-spec form."""
    assert {"minio", "minio-init", "processor", "prometheus"} <= set(compose["services"])
    assert "version" not in compose


def test_input_is_a_read_only_bind_of_input_files_at_the_watch_dir(
    compose: dict[str, Any], processor: dict[str, Any]
) -> None:
    """./input_files is bind-mounted read-only exactly where PROCESSOR_WATCH_DIR points."""
    watch_dir = _container_env("processor", compose).get("PROCESSOR_WATCH_DIR")
    assert watch_dir, "PROCESSOR_WATCH_DIR is set neither in the Dockerfile nor in compose"
    volume = _volume_at(processor, watch_dir)
    assert volume["type"] == "bind"
    assert PurePosixPath(volume["source"]) == PurePosixPath("input_files")
    assert volume.get("read_only") is True


def test_state_dir_is_a_declared_named_volume(
    compose: dict[str, Any], processor: dict[str, Any]
) -> None:
    """PROCESSOR_STATE_DIR lives on a named volume declared at the top level."""
    state_dir = _container_env("processor", compose).get("PROCESSOR_STATE_DIR")
    assert state_dir, "PROCESSOR_STATE_DIR is set neither in the Dockerfile nor in compose"
    volume = _volume_at(processor, state_dir)
    assert volume["type"] == "volume"
    assert volume["source"] in (compose.get("volumes") or {})
    assert not volume.get("read_only")


def test_stop_grace_period_exceeds_drain_timeout(
    compose: dict[str, Any], processor: dict[str, Any]
) -> None:
    """Compose waits longer than the drain timeout before it sends SIGKILL."""
    drain = _container_env("processor", compose).get("PROCESSOR_DRAIN_TIMEOUT")
    drain_timeout = float(drain) if drain else DEFAULT_DRAIN_TIMEOUT
    assert "stop_grace_period" in processor, "the default 10 s would cut the drain short"
    assert _duration(processor["stop_grace_period"]) > drain_timeout


@pytest.mark.parametrize("name", ["minio", "processor"])
def test_service_has_a_healthcheck(compose: dict[str, Any], name: str) -> None:
    """MinIO and the processor declare an enabled healthcheck."""
    check = compose["services"][name].get("healthcheck") or {}
    assert check.get("test") and not check.get("disable")
    assert check["test"] != ["NONE"]


def test_processor_healthcheck_probes_healthz(processor: dict[str, Any]) -> None:
    """The processor's healthcheck asks the contract's /healthz endpoint."""
    assert "/healthz" in " ".join(processor["healthcheck"]["test"])


def test_startup_order_waits_for_minio_and_the_bucket(compose: dict[str, Any]) -> None:
    """minio-init waits for a healthy MinIO; the processor for a finished minio-init."""
    services = compose["services"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    processor_deps = services["processor"]["depends_on"]
    assert processor_deps["minio-init"]["condition"] == "service_completed_successfully"
    assert str(services["minio-init"].get("restart", "no")) == "no"


def test_bucket_init_is_idempotent_and_uses_the_processor_bucket(compose: dict[str, Any]) -> None:
    """minio-init creates the processor's bucket with `mc mb --ignore-existing`."""
    init = compose["services"]["minio-init"]
    script = json.dumps([init.get("entrypoint"), init.get("command")])
    assert "mc alias set" in script and "mc mb --ignore-existing" in script
    bucket = _container_env("minio-init", compose)["BUCKET"]
    assert bucket == _container_env("processor", compose)["PROCESSOR_S3_BUCKET"]


def test_processor_reaches_minio_with_its_root_credentials(compose: dict[str, Any]) -> None:
    """The processor's S3 endpoint is the minio service and its AWS keys are MinIO's."""
    minio = _environment(compose["services"]["minio"])
    env = _environment(compose["services"]["processor"])
    assert env["PROCESSOR_S3_ENDPOINT"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]


def test_minio_data_is_a_declared_named_volume(compose: dict[str, Any]) -> None:
    """MinIO's /data lives on a named volume declared at the top level."""
    volume = _volume_at(compose["services"]["minio"], "/data")
    assert volume["type"] == "volume"
    assert volume["source"] in (compose.get("volumes") or {})


def test_prometheus_mounts_its_config_read_only(compose: dict[str, Any]) -> None:
    """Prometheus reads deploy/prometheus/prometheus.yml, mounted read-only, which exists."""
    volume = _volume_at(compose["services"]["prometheus"], "/etc/prometheus/prometheus.yml")
    assert volume["type"] == "bind" and volume.get("read_only") is True
    assert (ROOT / volume["source"]).is_file()


def test_prometheus_scrapes_the_processor_metrics_port(compose: dict[str, Any]) -> None:
    """A scrape target is the processor's service name and metrics port, path /metrics."""
    port = int(
        _container_env("processor", compose).get("PROCESSOR_METRICS_PORT") or DEFAULT_METRICS_PORT
    )
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = [
        job
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        if f"processor:{port}" in static.get("targets", [])
    ]
    assert jobs, f"no scrape job targets processor:{port}"
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs)


@pytest.mark.parametrize("path", [COMPOSE_FILE, RETENTION_FILE], ids=lambda p: p.name)
def test_every_compose_variable_is_documented_in_env_example(path: Path) -> None:
    """Each ${VAR} that a Compose file substitutes has an entry in .env.example."""
    data = yaml.safe_load(path.read_text())
    used = {m.group(1) for text in _strings(data) for m in _VAR.finditer(text)}
    documented = set(re.findall(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert used, f"{path.name} substitutes no variables"
    assert used <= documented, f"undocumented: {sorted(used - documented)}"


def test_no_secret_literals_in_compose(compose: dict[str, Any]) -> None:
    """Credentials in compose are only ${VAR:-default} substitutions, never literals."""
    secretish = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", re.I)
    for name, service in compose["services"].items():
        for key, value in _environment(service).items():
            if secretish.search(key):
                assert _VAR.fullmatch(value), f"{name}.{key} is a literal: {value!r}"


# --- docker-compose.retention.yml (local retention) ---------------------------------------


def test_merge_follows_compose_rules() -> None:
    """The stand-in for `docker compose config`: a volume replaces the one at its target,
    environment merges by variable, cap_add appends, scalars and commands are replaced."""
    base = {"services": {"s": {
        "image": "a", "command": ["x", "y"], "cap_add": ["NET_ADMIN"],
        "environment": ["A=1", "B=2"], "volumes": ["./in:/data/in:ro", "state:/data/state"],
        "healthcheck": {"test": ["CMD", "a"], "interval": "5s"}}}, "volumes": {"state": None}}
    override = {"services": {"s": {
        "image": "b", "command": ["z"], "cap_add": ["LEASE"], "environment": {"B": "3"},
        "volumes": ["./in:/data/in:rw"], "healthcheck": {"test": ["CMD", "b"]}}}}
    service = _merge_files(base, override)["services"]["s"]
    assert service["image"] == "b" and service["command"] == ["z"]
    assert service["cap_add"] == ["NET_ADMIN", "LEASE"]
    assert service["environment"] == {"A": "1", "B": "3"}
    assert service["healthcheck"] == {"test": ["CMD", "b"], "interval": "5s"}
    assert _volume_at(service, "/data/in")["read_only"] is False
    assert _volume_at(service, "/data/state")["source"] == "state"
    assert len(service["volumes"]) == 2


def test_retention_is_off_without_the_override(compose: dict[str, Any]) -> None:
    """The base file (and the image) set no retention option and add no capability."""
    env = _container_env("processor", compose)  # the image's ENV and compose's
    assert not set(RETENTION_OPTIONS) & set(env), "retention must stay off by default"
    assert "cap_add" not in compose["services"]["processor"]


def test_the_retention_override_changes_the_processor_only(retention: dict[str, Any]) -> None:
    """No new service, volume or top-level key: the override only adjusts the processor."""
    assert set(retention) == {"services"}
    assert set(retention["services"]) == {"processor"}


def test_retention_mounts_the_input_read_write_in_place_of_the_read_only_mount(
    compose: dict[str, Any], merged: dict[str, Any]
) -> None:
    """Merged, the watch dir is one bind of ./input_files, read-write; the state volume
    and the other mounts are unchanged."""
    processor = merged["services"]["processor"]
    watch_dir = _container_env("processor", merged)["PROCESSOR_WATCH_DIR"]
    mounts = [v for v in _volumes(processor)
              if PurePosixPath(v["target"]) == PurePosixPath(watch_dir)]
    assert len(mounts) == 1, mounts
    assert mounts[0]["type"] == "bind"
    assert PurePosixPath(mounts[0]["source"]) == PurePosixPath("input_files")
    assert mounts[0].get("read_only") is False
    others = [v for v in _volumes(processor) if v is not mounts[0]]
    base_others = [v for v in _volumes(compose["services"]["processor"])
                   if PurePosixPath(v["target"]) != PurePosixPath(watch_dir)]
    assert others == base_others


def test_retention_adds_cap_lease(merged: dict[str, Any]) -> None:
    """CAP_LEASE, for the read lease on files the processor does not own."""
    caps = {str(cap).upper().removeprefix("CAP_")
            for cap in merged["services"]["processor"].get("cap_add") or []}
    assert "LEASE" in caps
    assert "ALL" not in caps and "SYS_ADMIN" not in caps


def test_retention_options_default_to_valid_values(
    retention: dict[str, Any], merged: dict[str, Any]
) -> None:
    """PROCESSOR_DELETE_AFTER and PROCESSOR_MIN_FREE come from .env with a default that
    parses as the processor parses it (empty: off). PROCESSOR_DELETE_AFTER is
    ${VAR-default}, so that .env can set it empty to use --min-free alone."""
    raw = _environment(retention["services"]["processor"])
    for name, operator in zip(RETENTION_OPTIONS, ("-", ":-"), strict=True):
        match = _VAR.fullmatch(raw.get(name, ""))
        assert match and match.group(1) == name and match.group(2) == operator, raw.get(name)
    env = _container_env("processor", merged)
    assert parse_duration(env["PROCESSOR_DELETE_AFTER"]) >= 0
    if env["PROCESSOR_MIN_FREE"]:
        parse_min_free(env["PROCESSOR_MIN_FREE"])


def test_retention_runs_as_the_image_user_unless_told(
    retention: dict[str, Any], merged: dict[str, Any]
) -> None:
    """`user:` is ${RECORDER_USER:-<the image's USER>}: unchanged unless .env sets the
    recorder's uid:gid."""
    raw = str(retention["services"]["processor"]["user"])
    match = _VAR.fullmatch(raw)
    assert match and match.group(1) == "RECORDER_USER" and match.group(2) == ":-", raw
    assert _interpolate(str(merged["services"]["processor"]["user"])) == _image_user()


def test_env_example_switches_retention_on_with_compose_file() -> None:
    """.env.example names both files in COMPOSE_FILE, commented out (retention off)."""
    text = ENV_EXAMPLE.read_text()
    assert not re.search(r"^\s*COMPOSE_FILE=", text, re.M), "retention must stay off"
    match = re.search(r"^#\s*COMPOSE_FILE=(\S+)\s*$", text, re.M)
    assert match, "no commented COMPOSE_FILE line in .env.example"
    assert match.group(1).split(":") == [COMPOSE_FILE.name, RETENTION_FILE.name]


def test_base_image_defaults_to_python_311_or_312() -> None:
    """BASE_IMAGE defaults to CPython 3.11 or 3.12, the only versions plyvel has wheels for."""
    args = [a for k, a in _dockerfile_instructions() if k == "ARG" and a.startswith("BASE_IMAGE=")]
    assert len(args) == 1, "expected one ARG BASE_IMAGE=<default>"
    assert re.fullmatch(r"BASE_IMAGE=(docker\.io/)?(library/)?python:3\.1[12][\w.-]*", args[0])
    bases = [args.split()[0] for stage in _stages() for keyword, args in stage if keyword == "FROM"]
    assert set(bases) == {"${BASE_IMAGE}"}, "every stage must build from BASE_IMAGE"


def test_image_is_multi_stage_without_compilers_in_the_final_stage() -> None:
    """The runtime stage copies the builder's venv and installs no compiler toolchain."""
    stages = _stages()
    assert len(stages) >= 2
    final = " ".join(args for _, args in _final_stage()).lower()
    assert "--from=builder /opt/venv" in final
    for tool in COMPILERS:
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", final), tool


def test_image_runs_as_a_non_root_user() -> None:
    """The final stage switches to a user other than root."""
    users = [args for keyword, args in _final_stage() if keyword == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_entrypoint_is_tini_running_processor() -> None:
    """tini is PID 1 and runs the `processor` console script, so SIGTERM reaches it."""
    entrypoints = [args for keyword, args in _final_stage() if keyword == "ENTRYPOINT"]
    assert entrypoints
    argv = json.loads(entrypoints[-1])
    assert PurePosixPath(argv[0]).name == "tini"
    assert argv[1:] == ["--", "processor"]
    stop_signals = [args for keyword, args in _final_stage() if keyword == "STOPSIGNAL"]
    assert stop_signals in ([], ["SIGTERM"]), "the supervisor drains on SIGTERM"


def test_image_healthcheck_probes_healthz() -> None:
    """The image's HEALTHCHECK asks /healthz (with Python, as slim images lack curl)."""
    checks = [args for keyword, args in _final_stage() if keyword == "HEALTHCHECK"]
    assert checks and "/healthz" in checks[-1] and "CMD" in checks[-1]


def test_image_exposes_the_metrics_port() -> None:
    """The image EXPOSEs the default metrics port 9100."""
    exposed = {p for k, a in _final_stage() if k == "EXPOSE" for p in a.split()}
    assert {str(DEFAULT_METRICS_PORT), f"{DEFAULT_METRICS_PORT}/tcp"} & exposed


def test_image_sets_watch_and_state_dirs_and_unbuffered_output() -> None:
    """The image points the processor at /data/input and /data/state and unbuffers stdout."""
    env = _image_env()
    assert env.get("PROCESSOR_WATCH_DIR") == "/data/input"
    assert env.get("PROCESSOR_STATE_DIR") == "/data/state"
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_dockerignore_keeps_build_inputs_and_drops_local_state() -> None:
    """.dockerignore excludes VCS, venvs, tests and data but none of what the build COPYs."""
    patterns = [
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
            for p in patterns
            if not p.startswith("!")
        )

    copied = [
        src
        for keyword, args in _stages()[0]
        if keyword == "COPY"
        for src in args.split()[:-1]
        if not src.startswith("--")
    ]
    assert copied, "the builder stage COPYs nothing"
    for src in copied:
        assert not ignored(src.rstrip("/")), f"{src} is excluded from the build context"
    for path in (".git", ".venv", "tests", "state", "input_files", ".env"):
        assert ignored(path), f"{path} would be sent to the Docker daemon"


# --- Grafana ------------------------------------------------------------------------------


def test_grafana_image_is_pinned(compose: dict[str, Any]) -> None:
    """grafana/grafana-oss at an exact version, never a moving tag."""
    image = compose["services"]["grafana"]["image"]
    assert re.fullmatch(r"(docker\.io/)?grafana/grafana-oss:\d+\.\d+\.\d+", image), image


def test_grafana_provisioning_is_mounted_read_only(compose: dict[str, Any]) -> None:
    """deploy/grafana/provisioning is where Grafana reads provisioning, read-only."""
    volume = _volume_at(compose["services"]["grafana"], "/etc/grafana/provisioning")
    assert volume["type"] == "bind" and volume.get("read_only") is True
    assert PurePosixPath(volume["source"]) == PurePosixPath("deploy/grafana/provisioning")
    assert (ROOT / volume["source"]).is_dir()


def test_grafana_data_is_a_declared_named_volume(compose: dict[str, Any]) -> None:
    """Grafana's /var/lib/grafana (users, settings) lives on a declared named volume."""
    volume = _volume_at(compose["services"]["grafana"], "/var/lib/grafana")
    assert volume["type"] == "volume"
    assert volume["source"] in (compose.get("volumes") or {})


def test_grafana_admin_password_comes_from_env_with_a_placeholder(
    compose: dict[str, Any]
) -> None:
    """The admin password is ${VAR:-placeholder}, not Grafana's well-known `admin`."""
    value = _environment(compose["services"]["grafana"])["GF_SECURITY_ADMIN_PASSWORD"]
    match = _VAR.fullmatch(value)
    assert match and match.group(2) == ":-", value
    assert match.group(3) and match.group(3) != "admin"


def test_every_published_port_binds_to_loopback(compose: dict[str, Any]) -> None:
    """Published ports (Grafana's 3000 included) listen on 127.0.0.1 only."""
    ports = {
        name: [str(p) for p in service.get("ports") or []]
        for name, service in compose["services"].items()
    }
    assert "127.0.0.1:3000:3000" in ports["grafana"]
    for name, published in ports.items():
        for port in published:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"
