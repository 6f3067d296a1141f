"""The captures of the simulated cluster, as a real one takes them: the capture image's own
entrypoint (which writes ``meta.json``) running the very tcpdump argv the webhook injects
(``webhook.capture.tcpdump_argv``), with the environment the kubelet would give it, writing where
a bundle keeps captures. Either as the sidecar inside each pod (:func:`start`, the downward API's
values) or as the node-capture DaemonSet on the node's network (:func:`start_on_node`: every
interface of the node namespace, filtered to the pod networks)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import webhook
from kernel.errors import LabError
from lab import netns
from webhook.capture import (
    ENV_CAPTURE_DIRECTORY,
    ENV_CAPTURE_MODE,
    ENV_LABELS_FILE,
    ENV_NODE_IPS,
    ENV_NODE_NAME,
    ENV_POD_IPS,
    ENV_POD_NAME,
    ENV_POD_NAMESPACE,
    ENV_POD_NETWORKS,
    ENV_POD_UID,
    ENV_VANTAGE,
    NODE_VANTAGE,
    CaptureOptions,
    tcpdump_argv,
)


class Vantage(StrEnum):
    """Where the lab captures: a sidecar in every pod, or one capture on the node."""

    POD = "pod"
    NODE = NODE_VANTAGE


READY_TIMEOUT = 10.0
# The capture image's entrypoint, as the image ships it: writes meta.json, then execs tcpdump.
SIDECAR_ENTRYPOINT = Path(webhook.__file__).parent / "capture-image" / "netpol-sniffer-capture"


@dataclass(frozen=True, slots=True)
class PodInfo:
    """What the downward API tells the sidecar about its pod."""

    name: str
    namespace: str
    uid: str
    ips: tuple[str, ...]
    node: str
    labels: tuple[tuple[str, str], ...]


def labels_file(labels: tuple[tuple[str, str], ...]) -> str:
    """The downward API's labels file: ``key="value"`` lines, sorted, as the kubelet writes it."""
    return "".join(f'{key}="{value}"\n' for key, value in sorted(labels))


def sidecar_environment(
    pod: PodInfo, options: CaptureOptions, *, directory: Path, labels_path: Path
) -> dict[str, str]:
    """The sidecar container's environment for ``pod``: downward API values and settings."""
    return {
        ENV_POD_NAME: pod.name,
        ENV_POD_NAMESPACE: pod.namespace,
        ENV_POD_UID: pod.uid,
        ENV_POD_IPS: ",".join(pod.ips),
        ENV_NODE_NAME: pod.node,
        ENV_CAPTURE_MODE: str(options.mode),
        ENV_CAPTURE_DIRECTORY: str(directory),
        ENV_LABELS_FILE: str(labels_path),
    }


def capture_argv(
    options: CaptureOptions, directory: Path, environment: dict[str, str]
) -> list[str]:
    """The sidecar's command: its entrypoint with its environment, then tcpdump's argv pointed
    at ``directory``."""
    return [
        "env",
        *(f"{key}={value}" for key, value in sorted(environment.items())),
        "sh",
        str(SIDECAR_ENTRYPOINT),
        *tcpdump_argv(replace(options, directory=str(directory))),
    ]


@dataclass
class Capture:
    netns: str
    directory: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """SIGINT lets tcpdump flush and close its file."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


def start(
    netns_name: str, directory: Path, options: CaptureOptions, *, pod: PodInfo, scratch: Path
) -> Capture:
    """Start the sidecar in ``netns_name``; return once tcpdump listens (it says so on stderr).
    ``scratch`` holds what the downward API volume would (the labels file)."""
    labels_path = scratch / f"{pod.namespace}.{pod.name}.labels"
    labels_path.write_text(labels_file(pod.labels))
    environment = sidecar_environment(pod, options, directory=directory, labels_path=labels_path)
    return _started(netns_name, directory, capture_argv(options, directory, environment))


def node_environment(
    node: str,
    addresses: tuple[str, ...],
    networks: tuple[str, ...],
    options: CaptureOptions,
    *,
    directory: Path,
) -> dict[str, str]:
    """The node-capture container's environment (manifests/node-capture/daemonset.yaml): the
    node, its addresses (a hostNetwork pod's podIPs), the pod networks (its ConfigMap)."""
    return {
        ENV_VANTAGE: NODE_VANTAGE,
        ENV_NODE_NAME: node,
        ENV_NODE_IPS: ",".join(addresses),
        ENV_POD_NETWORKS: ",".join(networks),
        ENV_CAPTURE_MODE: str(options.mode),
        ENV_CAPTURE_DIRECTORY: str(directory),
    }


def start_on_node(
    netns_name: str,
    directory: Path,
    options: CaptureOptions,
    *,
    node: str,
    addresses: tuple[str, ...],
    networks: tuple[str, ...],
) -> Capture:
    """Start the node capture on every interface of the node namespace ``netns_name``, kept to
    ``networks``; return once tcpdump listens."""
    environment = node_environment(node, addresses, networks, options, directory=directory)
    return _started(netns_name, directory, capture_argv(options, directory, environment))


def _started(netns_name: str, directory: Path, command: list[str]) -> Capture:
    """Run the capture ``command`` in ``netns_name``; return once tcpdump listens."""
    if not SIDECAR_ENTRYPOINT.is_file():
        raise LabError(f"the capture image's entrypoint {SIDECAR_ENTRYPOINT} is missing")
    argv = netns.in_namespace(netns_name, command)
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    capture = Capture(netns_name, directory, process)
    assert process.stderr is not None
    said = b""
    deadline = time.monotonic() + READY_TIMEOUT
    while b"listening on" not in said:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or process.poll() is not None:
            capture.stop()
            raise LabError(
                f"tcpdump in {netns_name} did not start: "
                f"{said.decode(errors='replace').strip() or 'no output'}"
            )
        ready, _, _ = select.select([process.stderr], [], [], remaining)
        if ready:
            chunk = os.read(process.stderr.fileno(), 4096)
            if not chunk:
                continue
            said += chunk
    return capture
