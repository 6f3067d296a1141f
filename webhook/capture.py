"""The capture sidecar: tcpdump's command line (the single source of truth) and the container and
volumes the webhook injects.

The webhook passes the full argv as the container's ``args`` and the lab runs the very same argv
inside its simulated pods. Pure: data only, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from kernel.capture import CaptureMode, capture_filter
from kernel.names import CAPTURES_DIRECTORY, CAPTURES_VOLUME, CONTAINER_NAME

DEFAULT_INTERFACE = "any"
# Big enough for the headers of every packet and for whole DNS answers (names → IPs).
DEFAULT_SNAPLEN = 512
# Size-bounded ring: tcpdump -C (millions of bytes per file) and -W (number of files kept).
DEFAULT_ROTATE_MEGABYTES = 10
DEFAULT_ROTATE_FILES = 10
DEFAULT_FILE_NAME = "capture.pcap"


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    mode: CaptureMode = CaptureMode.HANDSHAKE
    directory: str = CAPTURES_DIRECTORY
    interface: str = DEFAULT_INTERFACE
    snaplen: int = DEFAULT_SNAPLEN
    rotate_megabytes: int = DEFAULT_ROTATE_MEGABYTES
    rotate_files: int = DEFAULT_ROTATE_FILES
    file_name: str = DEFAULT_FILE_NAME

    @property
    def max_bytes(self) -> int:
        """The most the ring of capture files can hold on disk."""
        return self.rotate_megabytes * 1_000_000 * self.rotate_files


def tcpdump_argv(options: CaptureOptions) -> list[str]:
    """tcpdump's argv: all interfaces, not promiscuous, numeric, packet-buffered, stays root
    (the sidecar has only NET_RAW; no setuid dance), small snaplen, a size-bounded ring."""
    return [
        "tcpdump",
        "-i",
        options.interface,
        "-p",
        "-n",
        "-U",
        "-Z",
        "root",
        "-s",
        str(options.snaplen),
        "-C",
        str(options.rotate_megabytes),
        "-W",
        str(options.rotate_files),
        "-w",
        f"{options.directory.rstrip('/')}/{options.file_name}",
        capture_filter(options.mode),
    ]


# The sidecar: names users see (ARCHITECTURE.md) and where the downward API lands in it.
PODINFO_VOLUME = "netpol-sniffer-podinfo"
PODINFO_DIRECTORY = "/etc/netpol-sniffer/pod"
# The capture image's entrypoint: writes meta.json, then execs its arguments (tcpdump_argv).
ENTRYPOINT = "/usr/local/bin/netpol-sniffer-capture"
# tcpdump -Z root still calls initgroups(), which needs CAP_SETGID; NET_RAW opens the socket.
CAPABILITIES = ("NET_RAW", "SETGID")

# The entrypoint's inputs. Values from the downward API, so pods made with generateName (no name
# at admission) still get the right meta.json.
ENV_POD_NAME = "NETPOL_SNIFFER_POD_NAME"
ENV_POD_NAMESPACE = "NETPOL_SNIFFER_POD_NAMESPACE"
ENV_POD_UID = "NETPOL_SNIFFER_POD_UID"
ENV_POD_IPS = "NETPOL_SNIFFER_POD_IPS"
ENV_NODE_NAME = "NETPOL_SNIFFER_NODE_NAME"
ENV_CAPTURE_MODE = "NETPOL_SNIFFER_CAPTURE_MODE"
ENV_CAPTURE_DIRECTORY = "NETPOL_SNIFFER_CAPTURE_DIR"
ENV_LABELS_FILE = "NETPOL_SNIFFER_LABELS_FILE"

# The node capture (manifests/node-capture), besides ENV_NODE_NAME and the capture directory and
# mode: the entrypoint writes a node's meta.json and keeps only the pod networks (``all``: every
# packet of the node) by adding them to tcpdump's filter.
ENV_VANTAGE = "NETPOL_SNIFFER_VANTAGE"
NODE_VANTAGE = "node"
ENV_NODE_IPS = "NETPOL_SNIFFER_NODE_IPS"
ENV_POD_NETWORKS = "NETPOL_SNIFFER_POD_NETWORKS"
ALL_NETWORKS = "all"

_FIELD_ENV = (
    (ENV_POD_NAME, "metadata.name"),
    (ENV_POD_NAMESPACE, "metadata.namespace"),
    (ENV_POD_UID, "metadata.uid"),
    (ENV_POD_IPS, "status.podIPs"),
    (ENV_NODE_NAME, "spec.nodeName"),
)


@dataclass(frozen=True, slots=True)
class SidecarResources:
    """Kubernetes quantities for the capture container (already validated)."""

    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str


def volume_size_limit(options: CaptureOptions) -> str:
    """The emptyDir's sizeLimit: the ring's maximum, one more file (tcpdump finishes the packet
    that crosses -C before rotating) and room for meta.json, in whole MiB."""
    spare = options.rotate_megabytes * 1_000_000 + 1_000_000
    mebibytes = -(-(options.max_bytes + spare) // (1 << 20))
    return f"{mebibytes}Mi"


def sidecar_container(
    options: CaptureOptions,
    *,
    image: str,
    image_pull_policy: str,
    resources: SidecarResources,
    native: bool,
) -> dict[str, object]:
    """The capture container as Kubernetes JSON. ``native`` makes it a native sidecar (an init
    container with ``restartPolicy: Always``: starts before the app, does not keep Jobs alive)."""
    env: list[dict[str, object]] = [
        {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}} for name, path in _FIELD_ENV
    ]
    env += [
        {"name": ENV_CAPTURE_MODE, "value": str(options.mode)},
        {"name": ENV_CAPTURE_DIRECTORY, "value": options.directory},
        {"name": ENV_LABELS_FILE, "value": f"{PODINFO_DIRECTORY}/labels"},
    ]
    container: dict[str, object] = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": [ENTRYPOINT],
        "args": tcpdump_argv(options),
        "env": env,
        "resources": {
            "requests": {"cpu": resources.cpu_request, "memory": resources.memory_request},
            "limits": {"cpu": resources.cpu_limit, "memory": resources.memory_limit},
        },
        "securityContext": {
            # Root without privileges: a packet socket needs NET_RAW and Kubernetes cannot give
            # capabilities to a non-root process (no ambient capabilities). runAsNonRoot: false
            # overrides a pod-level runAsNonRoot: true that would stop the container.
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": list(CAPABILITIES)},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CAPTURES_VOLUME, "mountPath": options.directory},
            {"name": PODINFO_VOLUME, "mountPath": PODINFO_DIRECTORY, "readOnly": True},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if native:
        container["restartPolicy"] = "Always"
    return container


def sidecar_volumes(options: CaptureOptions) -> list[dict[str, object]]:
    """The captures emptyDir (bounded above the ring's maximum, so a busy pod is never evicted
    for its captures) and the downward API volume with the pod's labels."""
    return [
        {"name": CAPTURES_VOLUME, "emptyDir": {"sizeLimit": volume_size_limit(options)}},
        {
            "name": PODINFO_VOLUME,
            "downwardAPI": {
                "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
            },
        },
    ]
