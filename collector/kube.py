"""The real cluster: the collector's :class:`~collector.kinds.Cluster` over the kubernetes
client (the only ``kubernetes`` and ``websocket`` import). The client's and websocket's
exceptions become ``CollectError`` / ``AccessDenied`` here, the latter naming the verb and
resource the caller lacks."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import ws_client
from kubernetes.watch.watch import iter_resp_lines
from websocket import ABNF, WebSocketBadStatusException, WebSocketException

from collector.kinds import PODS, Kind, KubeObject
from collector.pulling import Frame
from kernel.errors import AccessDenied, CollectError, ExecFailed, NotFound

log = logging.getLogger(__name__)

# A stream that delivers nothing for this long is treated as broken (and resumed).
DEFAULT_IDLE_TIMEOUT_S = 60.0
# Offered in this order, as kubectl does. The API server translates v5 to SPDY towards the
# kubelet itself (1.30+) and proxies v4 to the kubelet's own websocket endpoint.
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
DEFAULT_LIST_PAGE_SIZE = 500  # kubectl's --chunk-size
_REQUEST_TIMEOUT_S = 60.0


def _scope(namespace: str | None) -> str:
    return f"in namespace {namespace}" if namespace else "cluster-wide"


def server_message(body: bytes | str | None) -> str:
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
    detail = server_message(body)
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
        return NotFound(f"cannot {what}: not found{suffix}")
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
        if not (use_kubeconfig or default_path.exists()):
            raise CollectError(
                f"no usable cluster access: no kubeconfig ($KUBECONFIG is not set and "
                f"{default_path} does not exist) and not in a pod (no service account): pass "
                "--kubeconfig FILE (and --context NAME), or run in a pod with a service account"
            ) from error
        where = kubeconfig or os.environ.get("KUBECONFIG") or str(default_path)
        which = f"context {context}" if context else "its current context"
        raise CollectError(
            f"no usable cluster access: {where}, {which}: {error}; pass --kubeconfig/--context"
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
            # which of the offered protocols the API server chose (--debug shows it); the
            # protocols were offered as a header, so the client did not parse the answer
            chosen = (websocket.getheaders() or {}).get("sec-websocket-protocol", "none")
            log.debug("exec %s/%s: protocol %s", namespace, pod, chosen)
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
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # urllib3 warns on every retry of a failed connection; when all fail, the error says so
        # once, naming the server. --debug keeps them.
        logging.getLogger("urllib3").setLevel(logging.ERROR)
    return KubernetesCluster(load_configuration(kubeconfig, context))
