"""Collecting from a cluster into a bundle: the only module that talks to the API server and the
only ``kubernetes`` import. kubernetes' and websocket's exceptions become ``CollectError`` /
``AccessDenied`` here, the latter naming the verb and resource the caller lacks.

The cluster is injectable (:class:`Cluster`: list, get, watch, patch, exec), like httpx's
``MockTransport``: :class:`KubernetesCluster` is the real one; tests pass recorded or local ones.

``collect`` runs in three steps:

1. **Watch** pods in all namespaces for the window and append every pod IP change to
   ``pod-ips.jsonl`` (an expired watch is resumed by listing again and diffing).
2. **Snapshot**: list the snapshot kinds in *all* namespaces, so every peer (kube-system's DNS,
   a database in another namespace) resolves; ``apiVersion``/``kind`` are set on each item and
   ``managedFields`` dropped, as ``kubectl get -o json`` prints them.
3. **Pull** each opted-in pod's captures through the exec API (``analyser.pulling``) in a bounded
   pool, then write ``bundle.json``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import ws_client
from kubernetes.watch.watch import iter_resp_lines
from websocket import ABNF, WebSocketBadStatusException, WebSocketException

from analyser.pulling import Frame, PodPuller, PullReport, PullTarget
from analyser.snapshot import load_capture_meta
from kernel.bundles import (
    CAPTURE_META,
    CAPTURES,
    MANIFEST,
    POD_IPS,
    SNAPSHOT_FILE,
    Manifest,
    SkippedCapture,
    Window,
    entries_for_layout,
    write_json,
    write_manifest,
)
from kernel.capture import CaptureMode, capture_filter
from kernel.errors import AccessDenied, BundleError, CollectError, ExecFailed, SnapshotError
from kernel.names import CAPTURE_ENABLED, CAPTURE_LABEL, CAPTURES_DIRECTORY, CAPTURES_VOLUME
from kernel.names import CONTAINER_NAME as SIDECAR_CONTAINER

log = logging.getLogger(__name__)

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
# Files being fetched, per NAMESPACE/POD; outside captures/ so no reader sees half a file.
PARTIALS = ".partial"

DEFAULT_PARALLEL = 4
DEFAULT_DURATION_S = 0.0
# A stream that delivers nothing for this long is treated as broken (and resumed).
DEFAULT_IDLE_TIMEOUT_S = 60.0
# Offered in this order, as kubectl does. The API server translates v5 to SPDY towards the
# kubelet itself (1.30+) and proxies v4 to the kubelet's own websocket endpoint.
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
DEFAULT_LIST_PAGE_SIZE = 500  # kubectl's --chunk-size
_WATCH_CHUNK_S = 300  # the longest single watch request; the API server may end it sooner
_REQUEST_TIMEOUT_S = 60.0

KubeObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Kind:
    """A resource kind the collector reads: where it lives in the API."""

    kind: str
    api_version: str  # "v1" or "group/version"
    plural: str
    namespaced: bool

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def resource(self) -> str:
        """As RBAC names it: ``deployments.apps``, ``pods``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if namespace is not None and self.namespaced:
            prefix += f"/namespaces/{quote(namespace, safe='')}"
        path = f"{prefix}/{self.plural}"
        return f"{path}/{quote(name, safe='')}" if name is not None else path


NAMESPACES = Kind("Namespace", "v1", "namespaces", namespaced=False)
NODES = Kind("Node", "v1", "nodes", namespaced=False)
PODS = Kind("Pod", "v1", "pods", namespaced=True)
SERVICES = Kind("Service", "v1", "services", namespaced=True)
ENDPOINT_SLICES = Kind("EndpointSlice", "discovery.k8s.io/v1", "endpointslices", namespaced=True)
DEPLOYMENTS = Kind("Deployment", "apps/v1", "deployments", namespaced=True)
REPLICA_SETS = Kind("ReplicaSet", "apps/v1", "replicasets", namespaced=True)
STATEFUL_SETS = Kind("StatefulSet", "apps/v1", "statefulsets", namespaced=True)
DAEMON_SETS = Kind("DaemonSet", "apps/v1", "daemonsets", namespaced=True)
JOBS = Kind("Job", "batch/v1", "jobs", namespaced=True)
CRON_JOBS = Kind("CronJob", "batch/v1", "cronjobs", namespaced=True)
NETWORK_POLICIES = Kind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", namespaced=True)
# In ARCHITECTURE.md's order; snapshot.json lists items in this order.
SNAPSHOT_KINDS = (
    NAMESPACES,
    NODES,
    PODS,
    SERVICES,
    ENDPOINT_SLICES,
    DEPLOYMENTS,
    REPLICA_SETS,
    STATEFUL_SETS,
    DAEMON_SETS,
    JOBS,
    CRON_JOBS,
    NETWORK_POLICIES,
)
# What a rollout restart can roll; the rest is listed for the user.
ROLLABLE_KINDS = {kind.kind: kind for kind in (DEPLOYMENTS, STATEFUL_SETS, DAEMON_SETS)}


class Cluster(Protocol):
    """What collect and uninstall-sidecars need from a cluster. Objects are plain JSON dicts."""

    def list(
        self, kind: Kind, *, namespace: str | None = None, label_selector: str | None = None
    ) -> KubeObject:
        """A List (``items``, ``metadata.resourceVersion``), cluster-wide without namespace."""
        ...

    def get(self, kind: Kind, name: str, *, namespace: str | None = None) -> KubeObject: ...

    def watch(
        self, kind: Kind, *, resource_version: str, timeout_seconds: int
    ) -> Iterator[KubeObject]:
        """Watch events ``{"type", "object"}`` cluster-wide; an expired resourceVersion comes as
        an ``ERROR`` event whose object is a Status with ``code`` 410."""
        ...

    def patch(
        self, kind: Kind, name: str, patch: Mapping[str, Any], *, namespace: str | None = None
    ) -> None:
        """A JSON merge patch."""
        ...

    def exec(
        self, *, namespace: str, pod: str, container: str, command: Sequence[str]
    ) -> AbstractContextManager[Iterable[Frame]]: ...


# --- the real cluster -------------------------------------------------------------------------


def _scope(namespace: str | None) -> str:
    return f"in namespace {namespace}" if namespace else "cluster-wide"


def _server_message(body: bytes | str | None) -> str:
    """The ``message`` of a Status body, or the body itself, shortened."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return ""
    try:
        status = json.loads(body)
    except ValueError:
        return body.strip()[:300]
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return str(status["message"])
    return body.strip()[:300]


def translate_status(
    status: int,
    body: bytes | str | None,
    *,
    verb: str,
    resource: str,
    namespace: str | None,
    name: str | None = None,
) -> CollectError:
    """An HTTP status from the API server → the error users see, naming what was attempted."""
    what = f"{verb} {resource}" + (f" {name}" if name else "") + f" {_scope(namespace)}"
    detail = _server_message(body)
    suffix = f" (API server: {detail})" if detail else ""
    if status == 403:
        return AccessDenied(
            f"cannot {what}: needs '{verb}' on '{resource}' {_scope(namespace)}{suffix}; "
            "see manifests/collector-rbac/"
        )
    if status == 401:
        return CollectError(
            f"cannot {what}: the API server rejected the credentials; "
            f"check --kubeconfig/--context{suffix}"
        )
    if status == 404:
        return CollectError(f"cannot {what}: not found{suffix}")
    return CollectError(f"cannot {what}: HTTP {status}{suffix}")


def load_configuration(
    kubeconfig: str | None = None, context: str | None = None
) -> k8s_client.Configuration:
    """The user's kubeconfig (``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``) and context,
    or the in-cluster service account when there is no kubeconfig at all."""
    configuration = k8s_client.Configuration()
    default_path = Path(os.path.expanduser(k8s_config.KUBE_CONFIG_DEFAULT_LOCATION))
    use_kubeconfig = bool(kubeconfig or context or os.environ.get("KUBECONFIG"))
    try:
        if use_kubeconfig or default_path.exists():
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    except (k8s_config.ConfigException, OSError, ValueError) as error:
        where = kubeconfig or os.environ.get("KUBECONFIG") or str(default_path)
        raise CollectError(
            f"no usable cluster access ({where}, context {context or 'current'}): {error}; "
            "pass --kubeconfig/--context, or run in a pod with a service account"
        ) from error
    return configuration


class KubernetesCluster:
    """:class:`Cluster` over the kubernetes client. JSON stays JSON (no model round trips)."""

    def __init__(
        self,
        configuration: k8s_client.Configuration,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        exec_protocols: Sequence[str] = EXEC_PROTOCOLS,
        list_page_size: int = DEFAULT_LIST_PAGE_SIZE,
    ) -> None:
        self.configuration = configuration
        self.api = k8s_client.ApiClient(configuration)
        self.idle_timeout = idle_timeout
        self.exec_protocols = tuple(exec_protocols)
        self.list_page_size = list_page_size

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
        timeout: float | tuple[float, float] = _REQUEST_TIMEOUT_S,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json"
        serialized = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=dict(body) if body is not None else None,
            auth_settings=["BearerToken"],
        )
        method, url, headers, request_body, _ = serialized
        try:
            return self.api.call_api(
                method, url, header_params=headers, body=request_body, _request_timeout=timeout
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            reason = getattr(error, "reason", None) or error
            raise CollectError(
                f"cannot reach the API server at {self.configuration.host}: {reason}"
            ) from error

    def _json(
        self,
        method: str,
        kind: Kind,
        *,
        verb: str,
        namespace: str | None,
        name: str | None = None,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
    ) -> KubeObject:
        response = self._request(method, kind.path(namespace, name), query=query, body=body)
        response.read()
        if not 200 <= response.status <= 299:
            raise translate_status(
                response.status,
                response.data,
                verb=verb,
                resource=kind.resource,
                namespace=namespace,
                name=name,
            )
        document: KubeObject = json.loads(response.data)
        return document

    def list(
        self, kind: Kind, *, namespace: str | None = None, label_selector: str | None = None
    ) -> KubeObject:
        """In pages of ``list_page_size`` (as kubectl does), so a big cluster is never one
        response; the pages form one consistent list at the first page's resourceVersion."""
        query = [("labelSelector", label_selector)] if label_selector else []
        query.append(("limit", str(self.list_page_size)))
        items: list[KubeObject] = []
        token = ""
        while True:
            page = self._json(
                "GET",
                kind,
                verb="list",
                namespace=namespace,
                query=query + ([("continue", token)] if token else []),
            )
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                page["items"] = items
                return page

    def get(self, kind: Kind, name: str, *, namespace: str | None = None) -> KubeObject:
        return self._json("GET", kind, verb="get", namespace=namespace, name=name)

    def patch(
        self, kind: Kind, name: str, patch: Mapping[str, Any], *, namespace: str | None = None
    ) -> None:
        self._json("PATCH", kind, verb="patch", namespace=namespace, name=name, body=patch)

    def watch(
        self, kind: Kind, *, resource_version: str, timeout_seconds: int
    ) -> Iterator[KubeObject]:
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        response = self._request(
            "GET", kind.path(), query=query, timeout=(_REQUEST_TIMEOUT_S, timeout_seconds + 30)
        )
        try:
            if response.status == 410:
                yield {"type": "ERROR", "object": {"kind": "Status", "code": 410}}
                return
            if not 200 <= response.status <= 299:
                response.read()
                raise translate_status(
                    response.status,
                    response.data,
                    verb="watch",
                    resource=kind.resource,
                    namespace=None,
                )
            try:
                for line in iter_resp_lines(response.response):  # type: ignore[no-untyped-call]
                    yield json.loads(line)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                # a watch that breaks is resumed by the caller from the last resourceVersion
                log.info("watch of %s broke: %s", kind.resource, error)
        finally:
            response.response.release_conn()

    @contextmanager
    def exec(
        self, *, namespace: str, pod: str, container: str, command: Sequence[str]
    ) -> Iterator[Iterator[Frame]]:
        """Open an exec websocket (v5/v4 channel protocol, binary frames) and yield its frames.

        The websocket is opened by the client's own ``create_websocket`` (TLS, client
        certificates, proxies, the ``v5``/``v4`` subprotocols), but frames are read one at a
        time here: ``WSClient.update`` reads every frame already available into one growing
        buffer, which for a file streaming faster than it is read means the whole file in
        memory (and quadratic copying). ``kubernetes.stream.stream`` also swaps ``call_api`` on
        a shared ApiClient, so it cannot run from several threads.
        """
        path = PODS.path(namespace, pod) + "/exec"
        _, url, headers, _, _ = self.api.param_serialize(
            method="GET", resource_path=path, header_params={}, auth_settings=["BearerToken"]
        )
        query: list[tuple[str, Any]] = [
            ("container", container),
            ("stdin", "false"),
            ("stdout", "true"),
            ("stderr", "true"),
            ("tty", "false"),
            ("command", list(command)),
        ]
        websocket_url = ws_client.get_websocket_url(url, query)  # type: ignore[no-untyped-call]
        headers = {**headers, "sec-websocket-protocol": ",".join(self.exec_protocols)}
        try:
            websocket = ws_client.create_websocket(  # type: ignore[no-untyped-call]
                self.configuration, websocket_url, headers
            )
        except WebSocketBadStatusException as error:
            raise translate_status(
                error.status_code,
                error.resp_body,
                verb="create",
                resource="pods/exec",
                namespace=namespace,
                name=pod,
            ) from error
        except (WebSocketException, OSError) as error:
            raise ExecFailed(f"{namespace}/{pod}: cannot open an exec stream: {error}") from error
        try:
            websocket.settimeout(self.idle_timeout)
            yield self._frames(websocket)
        finally:
            websocket.close()

    def _frames(self, websocket: Any) -> Iterator[Frame]:
        """Frames as they arrive, one at a time. A broken or silent stream (no frame for
        ``idle_timeout`` seconds) just ends: with no Status seen the caller knows it was cut."""
        while True:
            try:
                # pings are answered inside; only data frames and the close frame come out
                opcode, frame = websocket.recv_data_frame(False)
            except (WebSocketException, OSError) as error:
                log.info("exec stream broke: %s", error)
                return
            if opcode == ABNF.OPCODE_CLOSE:
                return
            if not frame.data:
                continue
            data = frame.data if isinstance(frame.data, bytes) else frame.data.encode()
            channel = data[0]
            if channel == ws_client.CLOSE_CHANNEL:  # v5: the server closed one of its channels
                continue
            if len(data) > 1:
                yield channel, data[1:]


def connect(kubeconfig: str | None = None, context: str | None = None) -> KubernetesCluster:
    return KubernetesCluster(load_configuration(kubeconfig, context))


# --- pod IP history ---------------------------------------------------------------------------


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pod_ips(pod: KubeObject) -> list[str]:
    status = pod.get("status") or {}
    ips = [entry["ip"] for entry in status.get("podIPs") or [] if entry.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return ips


def controller_of(obj: KubeObject) -> dict[str, str] | None:
    for reference in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("controller"):
            return {"kind": reference["kind"], "name": reference["name"]}
    return None


@dataclass
class PodIPHistory:
    """Turns pod lists and watch events into ``pod-ips.jsonl`` lines: one per change of a pod's
    IPs (first seen with IPs, or given its first IPs: ``ADDED``; changed: ``MODIFIED``; gone:
    ``DELETED`` with the IPs it released). A pod first seen in a list is dated by its
    ``status.startTime`` (its IPs are that old at most); everything else by when the change
    was observed."""

    sink: TextIO
    clock: Callable[[], datetime.datetime] = utc_now
    known: dict[str, tuple[tuple[str, ...], KubeObject]] = field(default_factory=dict)
    lines: int = 0

    def _write(self, event: str, pod: KubeObject, ips: Sequence[str], moment: str) -> None:
        metadata = pod.get("metadata") or {}
        line = {
            "time": moment,
            "event": event,
            "namespace": metadata.get("namespace"),
            "pod": metadata.get("name"),
            "uid": metadata.get("uid"),
            "ips": list(ips),
            "labels": metadata.get("labels") or {},
            "owner": controller_of(pod),
        }
        self.sink.write(json.dumps(line, sort_keys=True) + "\n")
        self.lines += 1

    def observe(self, event: str, pod: KubeObject, *, from_list: bool = False) -> None:
        uid = (pod.get("metadata") or {}).get("uid", "")
        now = rfc3339(self.clock())
        previous = self.known.get(uid)
        if event == "DELETED":
            self.known.pop(uid, None)
            if previous is not None and previous[0]:
                self._write("DELETED", pod, previous[0], now)
            return
        ips = tuple(pod_ips(pod))
        self.known[uid] = (ips, pod)
        if not (previous and previous[0]):
            if ips:
                started = (pod.get("status") or {}).get("startTime")
                self._write("ADDED", pod, ips, started if from_list and started else now)
        elif ips != previous[0]:
            self._write("MODIFIED", pod, ips, now)

    def resync(self, pods: Iterable[KubeObject]) -> None:
        """A fresh list (start, or after the watch expired): report what changed meanwhile."""
        seen = set()
        for pod in pods:
            seen.add((pod.get("metadata") or {}).get("uid", ""))
            self.observe("MODIFIED", pod, from_list=True)
        for uid in sorted(set(self.known) - seen):
            self.observe("DELETED", self.known[uid][1])


def record_pod_ips(
    cluster: Cluster, history: PodIPHistory, *, duration: float, progress: Callable[[], None]
) -> None:
    """List pods, then watch them until ``duration`` seconds have passed, resuming on expiry."""
    deadline = time.monotonic() + duration
    listed = cluster.list(PODS)
    history.resync(listed.get("items") or [])
    resource_version = (listed.get("metadata") or {}).get("resourceVersion", "")
    while (remaining := deadline - time.monotonic()) >= 1:
        timeout = int(min(remaining, _WATCH_CHUNK_S))
        events = cluster.watch(PODS, resource_version=resource_version, timeout_seconds=timeout)
        quiet = True
        for event in events:
            quiet = False
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") != 410:
                    raise CollectError(f"watching pods failed: {_server_message(json.dumps(obj))}")
                log.info("pod watch expired; listing again")
                listed = cluster.list(PODS)
                history.resync(listed.get("items") or [])
                resource_version = (listed.get("metadata") or {}).get("resourceVersion", "")
                break
            resource_version = (obj.get("metadata") or {}).get("resourceVersion", resource_version)
            if kind in {"ADDED", "MODIFIED", "DELETED"}:
                history.observe(str(kind), obj)
            progress()
            if time.monotonic() >= deadline:
                break
        if quiet:  # a watch that ends at once, again and again, must not spin
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


# --- snapshot ---------------------------------------------------------------------------------


def snapshot_item(kind: Kind, item: KubeObject) -> KubeObject:
    """An item as ``kubectl get -o json`` prints it inside a List."""
    cleaned: KubeObject = {"apiVersion": kind.api_version, "kind": kind.kind}
    cleaned.update((key, value) for key, value in item.items() if key not in cleaned)
    metadata: KubeObject = dict(cleaned.get("metadata") or {})
    metadata.pop("managedFields", None)
    cleaned["metadata"] = metadata
    return cleaned


def _item_key(item: KubeObject) -> tuple[str, str]:
    metadata = item.get("metadata") or {}
    return (metadata.get("namespace", ""), metadata.get("name", ""))


def take_snapshot(cluster: Cluster) -> KubeObject:
    """A v1 List of every snapshot kind in all namespaces, in a stable order."""
    items = []
    for kind in SNAPSHOT_KINDS:
        listed = cluster.list(kind).get("items") or []
        items += [snapshot_item(kind, item) for item in sorted(listed, key=_item_key)]
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}


# --- which pods to pull -----------------------------------------------------------------------


def resolve_namespaces(
    cluster: Cluster, namespaces: Sequence[str], *, all_labelled: bool
) -> list[str]:
    """The namespaces to pull from; each must carry the opt-in label."""
    selector = f"{CAPTURE_LABEL}={CAPTURE_ENABLED}"
    if all_labelled:
        listed = cluster.list(NAMESPACES, label_selector=selector)
        names = sorted(item["metadata"]["name"] for item in listed.get("items") or [])
        if not names:
            raise CollectError(f"no namespace is opted in (label {selector})")
        return names
    for name in namespaces:
        labels = cluster.get(NAMESPACES, name)["metadata"].get("labels") or {}
        if labels.get(CAPTURE_LABEL) != CAPTURE_ENABLED:
            raise CollectError(
                f"namespace {name} is not opted in: it lacks the label {selector} "
                f"(kubectl label namespace {name} {selector}, then restart its workloads)"
            )
    return sorted(set(namespaces))


def _sidecar(pod: KubeObject) -> KubeObject | None:
    spec = pod.get("spec") or {}
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if container.get("name") == SIDECAR_CONTAINER:
            found: KubeObject = container
            return found
    return None


def _sidecar_state(pod: KubeObject) -> KubeObject:
    status = pod.get("status") or {}
    for entry in (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    ):
        if entry.get("name") == SIDECAR_CONTAINER:
            state: KubeObject = entry.get("state") or {}
            return state
    return {}


def pull_target(pod: KubeObject) -> PullTarget | str:
    """Where to pull this pod's captures from, or why it cannot be pulled."""
    metadata = pod["metadata"]
    sidecar = _sidecar(pod)
    if sidecar is None:
        return (
            f"no {SIDECAR_CONTAINER} sidecar (created before its namespace was opted in, "
            "opted out, or not injectable)"
        )
    phase = (pod.get("status") or {}).get("phase", "Unknown")
    state = _sidecar_state(pod)
    if "running" not in state:
        if phase in {"Succeeded", "Failed"}:
            return f"pod has ended (phase {phase}); its sidecar no longer runs"
        for condition in ("waiting", "terminated"):
            if condition in state:
                reason = state[condition].get("reason") or "no reason given"
                return f"sidecar not running: {condition} ({reason})"
        return f"sidecar not running yet (pod phase {phase})"
    directory = CAPTURES_DIRECTORY
    for mount in sidecar.get("volumeMounts") or []:
        if mount.get("name") == CAPTURES_VOLUME:
            directory = mount["mountPath"]
    return PullTarget(
        namespace=metadata["namespace"],
        pod=metadata["name"],
        container=SIDECAR_CONTAINER,
        directory=directory,
    )


def capture_mode(pod: KubeObject) -> str | None:
    """The sidecar's capture mode, read back from its tcpdump filter."""
    sidecar = _sidecar(pod)
    if sidecar is None:
        return None
    argv = (sidecar.get("command") or []) + (sidecar.get("args") or [])
    for mode in CaptureMode:
        if argv and argv[-1] == capture_filter(mode):
            return mode.value
    return None


# --- the bundle -------------------------------------------------------------------------------


def remove_empty_directories(root: Path) -> None:
    if not root.is_dir():
        return
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
    if not any(root.iterdir()):
        root.rmdir()


def window_start(bundle: Path, earlier: Iterable[str]) -> float:
    """When the captures begin: the earliest of ``earlier`` (RFC 3339) and the sidecars' start
    times in their ``meta.json`` files (a capture holds packets from then on)."""
    moments = [datetime.datetime.fromisoformat(moment) for moment in earlier]
    for meta in sorted((bundle / CAPTURES).glob(f"*/*/{CAPTURE_META}")):
        try:
            started = load_capture_meta(meta).start_time
        except SnapshotError as error:
            log.warning("%s", error)
            continue
        if started is not None:
            moments.append(datetime.datetime.fromtimestamp(started, datetime.UTC))
    return min(moments).timestamp()


def read_previous_bundle(bundle: Path) -> KubeObject | None:
    path = bundle / MANIFEST
    if not path.exists():
        return None
    try:
        previous: KubeObject = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BundleError(f"{path}: cannot read the previous bundle.json: {error}") from error
    if previous.get("producer") != "collect":
        raise BundleError(
            f"{path}: this bundle was made by {previous.get('producer')!r}; collect into a new "
            "directory"
        )
    return previous


@dataclass(frozen=True, slots=True)
class CollectOptions:
    out: Path
    namespaces: tuple[str, ...] = ()
    all_labelled: bool = False
    duration: float = DEFAULT_DURATION_S
    parallel: int = DEFAULT_PARALLEL


@dataclass(frozen=True, slots=True)
class CollectResult:
    namespaces: tuple[str, ...]
    pods_pulled: int
    files_fetched: int
    bytes_fetched: int
    ip_changes: int
    skipped: tuple[SkippedCapture, ...]


def pull_all(
    cluster: Cluster,
    targets: Sequence[PullTarget],
    bundle: Path,
    *,
    parallel: int,
    on_done: Callable[[PullReport | SkippedCapture], None],
) -> list[PullReport | SkippedCapture]:
    """Pull every target in a bounded pool; a pod that fails is reported, the rest go on.
    Missing RBAC stops everything (every other pod would fail the same way). ``on_done`` runs
    in the calling thread, in completion order; the result is in ``targets`` order."""

    def pull_one(target: PullTarget) -> PullReport | SkippedCapture:
        destination = bundle / CAPTURES / target.namespace / target.pod
        partials = bundle / PARTIALS / target.namespace / target.pod
        try:
            return PodPuller(cluster.exec, target, destination, partial_directory=partials).pull()
        except AccessDenied:
            raise
        except CollectError as error:
            return SkippedCapture(target.namespace, target.pod, str(error))

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {pool.submit(pull_one, target): index for index, target in enumerate(targets)}
        outcomes: dict[int, PullReport | SkippedCapture] = {}
        try:
            for future in as_completed(futures):
                outcomes[futures[future]] = future.result()
                on_done(outcomes[futures[future]])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [outcomes[index] for index in range(len(targets))]


def collect(
    cluster: Cluster,
    options: CollectOptions,
    *,
    on_watch_event: Callable[[], None] = lambda: None,
    on_pull_start: Callable[[int], None] = lambda pods: None,
    on_pod_done: Callable[[PullReport | SkippedCapture], None] = lambda outcome: None,
) -> CollectResult:
    """Watch, snapshot, pull, write ``bundle.json``; a second run into the same bundle fetches
    only what is missing."""
    bundle = options.out
    previous = read_previous_bundle(bundle)
    namespaces = resolve_namespaces(cluster, options.namespaces, all_labelled=options.all_labelled)
    # captures/ exists from the start, so readers never look for captures in .partial/
    (bundle / CAPTURES).mkdir(parents=True, exist_ok=True)
    start = rfc3339(utc_now())
    with (bundle / POD_IPS).open("a") as sink:
        history = PodIPHistory(sink)
        record_pod_ips(cluster, history, duration=options.duration, progress=on_watch_event)
    snapshot = take_snapshot(cluster)
    write_json(bundle / SNAPSHOT_FILE, snapshot)

    pods = [
        item
        for item in snapshot["items"]
        if item["kind"] == "Pod" and item["metadata"]["namespace"] in namespaces
    ]
    targets: list[PullTarget] = []
    skipped: list[SkippedCapture] = []
    for pod in pods:
        target = pull_target(pod)
        if isinstance(target, PullTarget):
            targets.append(target)
        else:
            metadata = pod["metadata"]
            skipped.append(SkippedCapture(metadata["namespace"], metadata["name"], target))
    on_pull_start(len(targets))
    outcomes = pull_all(cluster, targets, bundle, parallel=options.parallel, on_done=on_pod_done)
    remove_empty_directories(bundle / PARTIALS)
    reports = [outcome for outcome in outcomes if isinstance(outcome, PullReport)]
    skipped += [outcome for outcome in outcomes if isinstance(outcome, SkippedCapture)]
    for report in reports:
        skipped += [
            SkippedCapture(report.target.namespace, report.target.pod, reason, file=name)
            for name, reason in report.failures
        ]
    modes = sorted({mode for pod in pods if (mode := capture_mode(pod)) is not None})
    earlier = [(previous or {}).get("window", {}).get("start", start), start]
    write_manifest(
        bundle,
        Manifest(
            producer="collect",
            capture_mode=modes[0] if len(modes) == 1 else ("mixed" if modes else None),
            window=Window(window_start(bundle, earlier), utc_now().timestamp()),
            captures=tuple(entries_for_layout(bundle)),
            namespaces=tuple(namespaces),
            skipped=tuple(skipped),
        ),
    )
    return CollectResult(
        namespaces=tuple(namespaces),
        pods_pulled=len(reports),
        files_fetched=sum(len(report.fetched) for report in reports),
        bytes_fetched=sum(report.bytes_fetched for report in reports),
        ip_changes=history.lines,
        skipped=tuple(skipped),
    )


# --- uninstall-sidecars -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UninstallPlan:
    """What removing the sidecars from one namespace takes."""

    namespace: str
    unlabel: bool  # the opt-in label is still there
    restarts: tuple[tuple[str, str], ...]  # (kind, name) of workloads to roll
    manual: tuple[tuple[str, str], ...]  # (pod, what the user must do)


def _workload_of(cluster: Cluster, pod: KubeObject) -> tuple[str, str] | str:
    """The rollable workload owning ``pod``, or what the user must do instead."""
    namespace = pod["metadata"]["namespace"]
    owner = controller_of(pod)
    if owner is None:
        return "a bare pod: delete it and create it again"
    if owner["kind"] == "ReplicaSet":
        replica_set = cluster.get(REPLICA_SETS, owner["name"], namespace=namespace)
        parent = controller_of(replica_set)
        if parent is None or parent["kind"] != "Deployment":
            return f"owned by ReplicaSet {owner['name']} without a Deployment: delete the pod"
        owner = parent
    if owner["kind"] in ROLLABLE_KINDS:
        return (owner["kind"], owner["name"])
    if owner["kind"] == "Job":
        return f"a pod of Job {owner['name']}: it ends on its own; later Jobs come without it"
    return f"owned by {owner['kind']} {owner['name']}: restart that owner"


def plan_uninstall(cluster: Cluster, namespace: str) -> UninstallPlan:
    labels = cluster.get(NAMESPACES, namespace)["metadata"].get("labels") or {}
    restarts: set[tuple[str, str]] = set()
    manual: list[tuple[str, str]] = []
    for pod in cluster.list(PODS, namespace=namespace).get("items") or []:
        if _sidecar(pod) is None:
            continue
        workload = _workload_of(cluster, pod)
        if isinstance(workload, tuple):
            restarts.add(workload)
        else:
            manual.append((pod["metadata"]["name"], workload))
    return UninstallPlan(
        namespace=namespace,
        unlabel=CAPTURE_LABEL in labels,
        restarts=tuple(sorted(restarts)),
        manual=tuple(sorted(manual)),
    )


def apply_uninstall(
    cluster: Cluster, plan: UninstallPlan, *, now: datetime.datetime | None = None
) -> None:
    """Unlabel first (so restarted pods are not injected again), then roll the workloads."""
    if plan.unlabel:
        cluster.patch(NAMESPACES, plan.namespace, {"metadata": {"labels": {CAPTURE_LABEL: None}}})
    stamp = (now or utc_now()).astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    restart = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
    for kind, name in plan.restarts:
        cluster.patch(ROLLABLE_KINDS[kind], name, restart, namespace=plan.namespace)
