"""The node capture (manifests/node-capture): the DaemonSet runs the sidecar's own tcpdump
command line on every node's network, in a namespace of its own at Pod Security ``privileged``;
the capture image's entrypoint writes the node's meta.json and keeps the pod networks only."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from analyser.snapshot import parse_node_capture_meta
from kernel.capture import CaptureMode, capture_filter
from kernel.names import (
    CAPTURES_DIRECTORY,
    CAPTURES_VOLUME,
    CONTAINER_NAME,
    NODE_CAPTURE_NAMESPACE,
    NODE_CAPTURE_SELECTOR,
)
from tests.kubectl import kubectl
from tests.webhook.test_capture_sidecar import ENTRYPOINT, SHELL
from webhook.capture import (
    ALL_NETWORKS,
    CAPABILITIES,
    ENV_CAPTURE_DIRECTORY,
    ENV_CAPTURE_MODE,
    ENV_NODE_IPS,
    ENV_NODE_NAME,
    ENV_POD_NETWORKS,
    ENV_VANTAGE,
    NODE_VANTAGE,
    CaptureOptions,
    tcpdump_argv,
    volume_size_limit,
)
from webhook.capture import (
    ENTRYPOINT as IMAGE_ENTRYPOINT,
)

FOLDER = Path(__file__).resolve().parents[2] / "manifests" / "node-capture"


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((FOLDER / name).read_text()) if doc]


@pytest.fixture(scope="module")
def daemonset() -> dict[str, Any]:
    (found,) = documents("daemonset.yaml")
    return found


def container(daemonset: dict[str, Any]) -> dict[str, Any]:
    (found,) = daemonset["spec"]["template"]["spec"]["containers"]
    return found  # type: ignore[no-any-return]


def test_it_runs_the_sidecars_tcpdump_command_line(daemonset: dict[str, Any]) -> None:
    found = container(daemonset)
    assert found["name"] == CONTAINER_NAME
    assert found["command"] == [IMAGE_ENTRYPOINT]
    assert found["args"] == tcpdump_argv(CaptureOptions())
    env = {entry["name"]: entry for entry in found["env"]}
    assert env[ENV_VANTAGE]["value"] == NODE_VANTAGE
    assert env[ENV_NODE_NAME]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env[ENV_NODE_IPS]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIPs"
    assert env[ENV_CAPTURE_DIRECTORY]["value"] == CAPTURES_DIRECTORY
    mode = CaptureMode(env[ENV_CAPTURE_MODE]["value"])
    assert found["args"][-1] == capture_filter(mode)
    assert found["envFrom"] == [{"configMapRef": {"name": "netpol-sniffer-node-capture"}}]


def test_it_runs_on_every_nodes_network_without_privileges(daemonset: dict[str, Any]) -> None:
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["automountServiceAccountToken"] is False
    security = container(daemonset)["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": list(CAPABILITIES)}
    assert security["readOnlyRootFilesystem"] is True
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container(daemonset)["resources"]
    assert resources["limits"].keys() == resources["requests"].keys() == {"cpu", "memory"}


def test_its_captures_volume_holds_the_ring(daemonset: dict[str, Any]) -> None:
    (volume,) = daemonset["spec"]["template"]["spec"]["volumes"]
    assert volume["name"] == CAPTURES_VOLUME
    assert volume["emptyDir"]["sizeLimit"] == volume_size_limit(CaptureOptions())
    assert container(daemonset)["volumeMounts"] == [
        {"name": CAPTURES_VOLUME, "mountPath": CAPTURES_DIRECTORY}
    ]


def test_collect_finds_its_pods_by_their_labels(daemonset: dict[str, Any]) -> None:
    labels = dict(pair.split("=") for pair in NODE_CAPTURE_SELECTOR.split(","))
    assert daemonset["metadata"]["namespace"] == NODE_CAPTURE_NAMESPACE
    assert daemonset["spec"]["selector"]["matchLabels"] == labels
    assert daemonset["spec"]["template"]["metadata"]["labels"] == labels


def test_its_namespace_is_the_only_privileged_one(daemonset: dict[str, Any]) -> None:
    (namespace,) = documents("namespace.yaml")
    assert namespace["metadata"]["name"] == NODE_CAPTURE_NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


@pytest.mark.kubectl
def test_kustomize_renders_it_with_its_configmap() -> None:
    result = subprocess.run(
        [kubectl(), "kustomize", str(FOLDER)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    objects = {doc["kind"]: doc for doc in yaml.safe_load_all(result.stdout) if doc}
    assert objects.keys() == {"Namespace", "ConfigMap", "DaemonSet"}
    config = objects["ConfigMap"]
    assert config["metadata"]["namespace"] == NODE_CAPTURE_NAMESPACE
    assert config["data"] == {ENV_POD_NETWORKS: ""}
    (rendered,) = objects["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    assert rendered["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]


# -- the entrypoint, as the node capture runs it ------------------------------------------------


def node_env(tmp_path: Path, networks: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        ENV_VANTAGE: NODE_VANTAGE,
        ENV_NODE_NAME: "node-a",
        ENV_NODE_IPS: "192.168.49.2,fd00::2",
        ENV_POD_NETWORKS: networks,
        ENV_CAPTURE_MODE: "handshake",
        ENV_CAPTURE_DIRECTORY: str(tmp_path / "captures"),
    }


def run_node_entrypoint(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHELL, str(ENTRYPOINT), *argv], env=env, capture_output=True, text=True, timeout=30
    )


def test_the_filter_keeps_the_pod_networks_and_meta_json_names_the_node(tmp_path: Path) -> None:
    argv = tcpdump_argv(CaptureOptions())
    env = node_env(tmp_path, "10.244.0.0/16, fd00:10:244::/56")
    done = run_node_entrypoint(env, "printf", "%s\\n", *argv)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert printed[:-1] == argv[:-1]
    assert printed[-1] == (f"( {argv[-1]} ) and ( net 10.244.0.0/16 or net fd00:10:244::/56 )")
    source = tmp_path / "captures" / "meta.json"
    meta = parse_node_capture_meta(json.loads(source.read_text()), source=str(source))
    assert (meta.node, meta.ips) == ("node-a", ("192.168.49.2", "fd00::2"))
    assert meta.pod_networks == ("10.244.0.0/16", "fd00:10:244::/56")
    assert meta.start_time is not None


def test_the_filter_compiles(tmp_path: Path) -> None:
    """tcpdump itself accepts the filter the entrypoint makes (-d: compile, print, exit)."""
    for mode in CaptureMode:
        argv = ["tcpdump", "-d", "-y", "LINUX_SLL2", "-i", "any", capture_filter(mode)]
        done = run_node_entrypoint(node_env(tmp_path, "10.244.0.0/16,fd00::/56"), *argv)
        assert done.returncode == 0, done.stderr


def test_all_keeps_the_filter_as_it_is(tmp_path: Path) -> None:
    done = run_node_entrypoint(node_env(tmp_path, ALL_NETWORKS), "printf", "%s\\n", "a b")
    assert done.returncode == 0 and done.stdout == "a b\n"
    assert json.loads((tmp_path / "captures" / "meta.json").read_text())["pod_networks"] == []


@pytest.mark.parametrize(
    ("networks", "says"),
    [
        ("", "NETPOL_SNIFFER_POD_NETWORKS is not set"),
        ("10.244.0.0", "has no prefix length"),
        ("10.244.0.0/16,10.0.0.0/8 or host 1.2.3.4", "is not a network"),
        ("10.244.0.0/1x", "is not a network"),
    ],
)
def test_pod_networks_must_be_given_as_networks(tmp_path: Path, networks: str, says: str) -> None:
    done = run_node_entrypoint(node_env(tmp_path, networks), "true")
    assert done.returncode == 64 and says in done.stderr
    assert not (tmp_path / "captures" / "meta.json").exists()


def test_an_unknown_vantage_is_refused(tmp_path: Path) -> None:
    env = {**node_env(tmp_path, "10.244.0.0/16"), ENV_VANTAGE: "nodes"}
    done = run_node_entrypoint(env, "true")
    assert done.returncode == 64
    assert "NETPOL_SNIFFER_VANTAGE is 'nodes': expected pod" in done.stderr
    assert not (tmp_path / "captures" / "meta.json").exists()
