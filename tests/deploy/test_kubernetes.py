"""The fleet deployment (deploy/kubernetes/, contract §11), checked without a cluster.

Core kinds (Namespace, Secret, DaemonSet) are validated against the Kubernetes API
schemas of the ``kubernetes-validate`` package, strictly (an unknown field is an
error). It has no schema for the Prometheus Operator's kinds, so the PodMonitor is
checked against what the DaemonSet exposes, and the PrometheusRule against the
promtool-tested rules of deploy/prometheus/alerts.yml. The retention overlay's JSON
patch is applied here (no kubectl on the test machine) and its result validated too.
Then the DaemonSet is read as the service would read it: its PROCESSOR_* environment
goes through the real option parser, and the mounts, probes, port, security context
and grace period must agree with the options it yields.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shared.settings import Settings
from supervisor.cli import cli, parse_settings

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
NODE = "recorder-17"
IMAGE_USER = 10001  # the Dockerfile's USER


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _resources() -> dict[str, dict[str, Any]]:
    """kind -> resource, from every manifest the kustomization lists (and the Secret)."""
    listed = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"]
    found = {}
    for name in [*listed, "secret.example.yaml"]:
        for doc in _documents(KUBE / name):
            found[doc["kind"]] = doc
    return found


def _apply_json_patch(document: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 ``add`` and ``replace`` on plain paths: all the overlay uses."""
    result = copy.deepcopy(document)
    for op in operations:
        assert op["op"] in ("add", "replace"), op
        *parents, last = [p.replace("~1", "/").replace("~0", "~")
                          for p in op["path"].lstrip("/").split("/")]
        target: Any = result
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            if last == "-":
                target.append(op["value"])
            else:
                assert op["op"] == "replace" and int(last) < len(target), op
                target[int(last)] = op["value"]
        else:
            assert op["op"] == "add" or last in target, op  # replace needs it there
            target[last] = op["value"]
    return result


def _retention_daemonset() -> dict[str, Any]:
    overlay = yaml.safe_load((KUBE / "retention" / "kustomization.yaml").read_text())
    assert overlay["resources"] == [".."]
    (patch,) = overlay["patches"]
    assert patch["target"] == {"kind": "DaemonSet", "name": "video-stream-processor"}
    return _apply_json_patch(_resources()["DaemonSet"], yaml.safe_load(patch["patch"]))


def _container(daemonset: dict[str, Any]) -> dict[str, Any]:
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    return container


def _environment(container: dict[str, Any]) -> dict[str, str]:
    """Literal values, with ``$(NODE_NAME)`` expanded as the kubelet does."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[item["name"]] = NODE
    return env


def _settings(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              mounts: dict[str, Path]) -> Settings:
    """The options the service reads from this environment; container paths are
    mapped onto directories of the test machine."""
    for name in list(os.environ):
        if name.startswith("PROCESSOR_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("PROCESSOR_"):
            monkeypatch.setenv(name, str(mounts.get(value, value)))
    monkeypatch.chdir(tmp_path)
    result = parse_settings([])
    assert isinstance(result, Settings), f"the DaemonSet's environment is refused: {result}"
    return result


@pytest.mark.parametrize("variant", ["fleet", "retention"])
def test_manifests_validate_against_the_kubernetes_schemas(variant: str) -> None:
    version = kubernetes_validate.latest_version()
    resources = _resources()
    if variant == "retention":
        resources["DaemonSet"] = _retention_daemonset()
    for kind in ("Namespace", "Secret", "DaemonSet"):
        kubernetes_validate.validate(resources[kind], version, strict=True)
    for resource in resources.values():
        assert resource["metadata"].get("namespace", "video-stream-processor") == \
            "video-stream-processor"


def test_the_prometheus_rule_holds_the_tested_alert_rules() -> None:
    rule = _resources()["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


def test_the_pod_monitor_scrapes_the_daemonsets_metrics_port() -> None:
    resources = _resources()
    monitor, daemonset = resources["PodMonitor"], resources["DaemonSet"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in _container(daemonset)["ports"]}
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    # the alert rules select job="video-stream-processor"
    assert {"targetLabel": "job", "replacement": "video-stream-processor"} in \
        endpoint["relabelings"]


@pytest.mark.parametrize("variant", ["fleet", "retention"])
def test_the_daemonset_agrees_with_the_service_options(
        variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resources = _resources()
    daemonset = resources["DaemonSet"] if variant == "fleet" else _retention_daemonset()
    pod = daemonset["spec"]["template"]["spec"]
    container = _container(daemonset)
    env = _environment(container)
    known = {f"PROCESSOR_{p.name.upper()}" for p in cli.params if p.name}
    assert {n for n in env if n.startswith("PROCESSOR_")} <= known, "unknown option"

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    local = {path: tmp_path / path.strip("/").replace("/", "-") for path in mounts}
    for path in local.values():
        path.mkdir()
    settings = _settings(env, tmp_path, monkeypatch, {k: v for k, v in local.items()})

    # each host its own prefix, from the node's name (contract §11)
    assert settings.s3_prefix == f"recordings/{NODE}"
    # the recordings: a hostPath, read-only unless retention removes files
    watch = mounts[env["PROCESSOR_WATCH_DIR"]]
    assert "hostPath" in volumes[watch["name"]]
    assert watch.get("readOnly", False) is not settings.removes_files
    assert settings.removes_files is (variant == "retention")
    # the state dir survives the pod: a hostPath, never an emptyDir
    assert "hostPath" in volumes[mounts[env["PROCESSOR_STATE_DIR"]]["name"]]
    # a read-only root filesystem needs a writable /tmp (metrics, the uplink's lock)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    # non-root, nothing added, nothing to escalate to
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False
    if variant == "fleet":
        assert pod["securityContext"]["runAsUser"] == IMAGE_USER
    # probes on the metrics port the service listens on
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports[get["port"]] == settings.metrics_port
    # SIGTERM drains for up to --drain-timeout before the kubelet's SIGKILL
    assert pod["terminationGracePeriodSeconds"] > settings.drain_timeout + 5
    # credentials from the Secret, never literal
    secret = resources["Secret"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        (item,) = [i for i in container["env"] if i["name"] == name]
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    # the probed paths are the service's own
    http = (ROOT / "supervisor" / "http.py").read_text()
    assert '"/healthz"' in http and '"/readyz"' in http
