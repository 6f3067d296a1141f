"""The webhook's configuration: a frozen value object with ``DEFAULT_*`` values, validated once at
start.

Sources, later ones winning: the defaults, a YAML or JSON config file (flat camelCase keys, see
``docs/webhook.md``), environment variables ``NETPOL_SNIFFER_<KEY_IN_SNAKE_CASE>`` (lists are
comma-separated). Pure: the caller reads the file and passes its text and the environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kernel.capture import CaptureMode
from kernel.errors import ConfigError
from webhook.capture import CaptureOptions, SidecarResources
from webhook.quantities import parse_quantity

DEFAULT_CAPTURE_IMAGE = "netpol-sniffer-capture:0.1.0"
DEFAULT_IMAGE_PULL_POLICY = "IfNotPresent"
DEFAULT_NATIVE_SIDECAR = True
DEFAULT_CAPTURE = CaptureOptions()
DEFAULT_RESOURCES = SidecarResources(
    cpu_request="10m", memory_request="16Mi", cpu_limit="200m", memory_limit="64Mi"
)
DEFAULT_OWN_NAMESPACE = "netpol-sniffer"
DEFAULT_EXCLUDED_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
DEFAULT_POD_SECURITY_NAMESPACES: frozenset[str] = frozenset()
# See ServingLimits and docs/webhook.md ("Under load") for what they bound and how they were chosen.
DEFAULT_MAX_IN_FLIGHT = 16
DEFAULT_MAX_WAIT_MILLISECONDS = 50
DEFAULT_LISTEN_BACKLOG = 128
DEFAULT_MAX_CONNECTIONS = 64
AUTO_WORKERS = "auto"

ENV_PREFIX = "NETPOL_SNIFFER_"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
SNAPLEN_RANGE = (96, 262_144)
ROTATE_MEGABYTES_RANGE = (1, 1_000)
ROTATE_FILES_RANGE = (1, 1_000)
WORKERS_RANGE = (1, 64)
MAX_IN_FLIGHT_RANGE = (1, 10_000)
# The API server waits at most timeoutSeconds (1-30 s) for an answer.
MAX_WAIT_MILLISECONDS_RANGE = (1, 30_000)
LISTEN_BACKLOG_RANGE = (1, 65_535)
# At least one per worker (webhook.shedding.worker_limits shares it like maxInFlight).
MAX_CONNECTIONS_RANGE = (1, 100_000)
# The integer settings' bounds, checked where the value is read so an error names its origin.
_RANGES: dict[str, tuple[int, int]] = {
    "snaplen": SNAPLEN_RANGE,
    "rotateMegabytes": ROTATE_MEGABYTES_RANGE,
    "rotateFiles": ROTATE_FILES_RANGE,
    "workers": WORKERS_RANGE,
    "maxInFlight": MAX_IN_FLIGHT_RANGE,
    "maxWaitMilliseconds": MAX_WAIT_MILLISECONDS_RANGE,
    "listenBacklog": LISTEN_BACKLOG_RANGE,
    "maxConnections": MAX_CONNECTIONS_RANGE,
}
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class ServingLimits:
    """How much a replica takes on before it answers at once, without a sidecar.

    A request is shed (allowed unmodified, with a warning) when its worker holds its share of
    ``max_in_flight`` (half of it after a shed; webhook.shedding), or when it waited longer than
    ``max_wait_seconds`` between arriving and its turn. The kernel queues at most
    ``listen_backlog`` connections not yet accepted; a worker holding its share of
    ``max_connections`` open closes a new one at once, before its TLS handshake.
    """

    # None: one worker per whole CPU of the container's CPU limit (webhook.workers).
    workers: int | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_wait_seconds: float = DEFAULT_MAX_WAIT_MILLISECONDS / 1000
    listen_backlog: int = DEFAULT_LISTEN_BACKLOG
    max_connections: int = DEFAULT_MAX_CONNECTIONS


DEFAULT_SERVING = ServingLimits()


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """What the webhook injects, where it refuses to, and how much load a worker takes on."""

    capture: CaptureOptions = DEFAULT_CAPTURE
    capture_image: str = DEFAULT_CAPTURE_IMAGE
    image_pull_policy: str = DEFAULT_IMAGE_PULL_POLICY
    # False: a plain container, for clusters older than 1.29 (no native sidecars).
    native_sidecar: bool = DEFAULT_NATIVE_SIDECAR
    resources: SidecarResources = DEFAULT_RESOURCES
    # The webhook's own namespace is never injected (its pods must start without it).
    own_namespace: str = DEFAULT_OWN_NAMESPACE
    excluded_namespaces: frozenset[str] = DEFAULT_EXCLUDED_NAMESPACES
    # Namespaces that enforce Pod Security baseline or restricted: a sidecar with NET_RAW would be
    # rejected there. AdmissionReview carries no namespace labels, so they are listed here.
    pod_security_namespaces: frozenset[str] = field(default=DEFAULT_POD_SECURITY_NAMESPACES)
    serving: ServingLimits = DEFAULT_SERVING


# config key → kind of value; the order is the documented one.
_KEYS: dict[str, str] = {
    "captureImage": "string",
    "imagePullPolicy": "string",
    "nativeSidecar": "boolean",
    "captureMode": "string",
    "snaplen": "integer",
    "rotateMegabytes": "integer",
    "rotateFiles": "integer",
    "cpuRequest": "quantity",
    "memoryRequest": "quantity",
    "cpuLimit": "quantity",
    "memoryLimit": "quantity",
    "ownNamespace": "string",
    "excludedNamespaces": "list",
    "podSecurityNamespaces": "list",
    "workers": "workers",
    "maxInFlight": "integer",
    "maxWaitMilliseconds": "integer",
    "listenBacklog": "integer",
    "maxConnections": "integer",
}


_RESOURCE_KEYS = ("cpuRequest", "memoryRequest", "cpuLimit", "memoryLimit")

# The keys of a config file, in the documented order.
SETTING_KEYS = tuple(_KEYS)


def env_name(key: str) -> str:
    """``rotateMegabytes`` → ``NETPOL_SNIFFER_ROTATE_MEGABYTES``."""
    return ENV_PREFIX + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()


def parse_config_text(text: str, *, source: str) -> dict[str, object]:
    """A config file's text (YAML, so JSON too) as a mapping; empty text is an empty config."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not YAML or JSON: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: must be a mapping of settings, got {type(data).__name__}")
    return {str(key): value for key, value in data.items()}


def environment_config(environ: Mapping[str, str]) -> dict[str, object]:
    """The settings given as environment variables, as raw strings keyed like the file."""
    return {key: environ[env_name(key)] for key in _KEYS if env_name(key) in environ}


def build_settings(
    file_config: Mapping[str, object],
    environ_config: Mapping[str, object],
    *,
    source: str = "config",
) -> WebhookSettings:
    """Validated settings from a config file's mapping and the environment's (which wins).

    Raises ConfigError naming where the value came from (the file and key, or the environment
    variable), the value and what is allowed.
    """
    unknown = sorted(set(file_config) - set(_KEYS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}"
        )
    values: dict[str, Any] = {}
    origins = {key: f"{source}: {key}" for key in _KEYS}
    for key, kind in _KEYS.items():
        if key in environ_config:
            origins[key], raw = f"environment variable {env_name(key)}", environ_config[key]
        elif key in file_config:
            raw = file_config[key]
        else:
            continue
        values[key] = _coerce(key, raw, kind, origins[key])
    return _settings(values, origins)


def _coerce(key: str, raw: object, kind: str, where: str) -> object:
    # Environment values are strings; the file may already hold typed values.
    if kind == "boolean":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        raise ConfigError(f"{where}: must be true or false, got {raw!r}")
    if kind == "workers" and isinstance(raw, str) and raw.strip() == AUTO_WORKERS:
        return None
    if kind in ("integer", "workers"):
        low, high = _RANGES[key]
        expected = f"an integer between {low} and {high}"
        if kind == "workers":
            expected = f"{AUTO_WORKERS} or {expected}"
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and raw.strip().isdigit():
            value = int(raw)
        else:
            raise ConfigError(f"{where}: must be {expected}, got {raw!r}")
        if not low <= value <= high:
            raise ConfigError(f"{where}: must be {expected}, got {raw!r}")
        return value
    if kind == "list":
        if isinstance(raw, str):
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
            return tuple(raw)
        raise ConfigError(f"{where}: must be a list of names, got {raw!r}")
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ConfigError(f"{where}: must be a string, got {raw!r}")
    text = str(raw).strip()
    if kind == "quantity":
        try:
            parse_quantity(text)
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
    elif not text:
        raise ConfigError(f"{where}: must not be empty, got {raw!r}")
    return text


def _namespaces(names: tuple[str, ...], where: str) -> frozenset[str]:
    for name in names:
        if not _DNS_LABEL.fullmatch(name):
            raise ConfigError(
                f"{where}: {name!r} is not a namespace name (a DNS label: lower-case letters, "
                "digits and '-', at most 63)"
            )
    return frozenset(names)


def _settings(values: Mapping[str, Any], origins: Mapping[str, str]) -> WebhookSettings:
    mode_text = values.get("captureMode", str(DEFAULT_CAPTURE.mode))
    try:
        mode = CaptureMode(mode_text)
    except ValueError:
        choices = ", ".join(m.value for m in CaptureMode)
        raise ConfigError(
            f"{origins['captureMode']}: must be one of {choices}, got {mode_text!r}"
        ) from None
    capture = CaptureOptions(
        mode=mode,
        snaplen=values.get("snaplen", DEFAULT_CAPTURE.snaplen),
        rotate_megabytes=values.get("rotateMegabytes", DEFAULT_CAPTURE.rotate_megabytes),
        rotate_files=values.get("rotateFiles", DEFAULT_CAPTURE.rotate_files),
    )
    pull_policy = values.get("imagePullPolicy", DEFAULT_IMAGE_PULL_POLICY)
    if pull_policy not in PULL_POLICIES:
        raise ConfigError(
            f"{origins['imagePullPolicy']}: must be one of {', '.join(PULL_POLICIES)}, "
            f"got {pull_policy!r}"
        )
    resources = SidecarResources(
        cpu_request=values.get("cpuRequest", DEFAULT_RESOURCES.cpu_request),
        memory_request=values.get("memoryRequest", DEFAULT_RESOURCES.memory_request),
        cpu_limit=values.get("cpuLimit", DEFAULT_RESOURCES.cpu_limit),
        memory_limit=values.get("memoryLimit", DEFAULT_RESOURCES.memory_limit),
    )
    problem = resources_problem(resources)
    if problem:
        # Only a request above its limit gets here: each quantity was checked as it was read.
        given = [origins[key] for key in _RESOURCE_KEYS if key in values]
        raise ConfigError(f"{problem} (from {'; '.join(given) or 'the defaults'})")
    serving = ServingLimits(
        workers=values.get("workers", DEFAULT_SERVING.workers),
        max_in_flight=values.get("maxInFlight", DEFAULT_SERVING.max_in_flight),
        max_wait_seconds=values.get("maxWaitMilliseconds", DEFAULT_MAX_WAIT_MILLISECONDS) / 1000,
        listen_backlog=values.get("listenBacklog", DEFAULT_SERVING.listen_backlog),
        max_connections=values.get("maxConnections", DEFAULT_SERVING.max_connections),
    )
    own_namespace = values.get("ownNamespace", DEFAULT_OWN_NAMESPACE)
    _namespaces((own_namespace,), origins["ownNamespace"])
    return WebhookSettings(
        capture=capture,
        capture_image=values.get("captureImage", DEFAULT_CAPTURE_IMAGE),
        image_pull_policy=pull_policy,
        native_sidecar=values.get("nativeSidecar", DEFAULT_NATIVE_SIDECAR),
        resources=resources,
        own_namespace=own_namespace,
        excluded_namespaces=_namespaces(
            values.get("excludedNamespaces", tuple(sorted(DEFAULT_EXCLUDED_NAMESPACES))),
            origins["excludedNamespaces"],
        ),
        pod_security_namespaces=_namespaces(
            values.get("podSecurityNamespaces", ()), origins["podSecurityNamespaces"]
        ),
        serving=serving,
    )


def resources_problem(resources: SidecarResources) -> str | None:
    """Why these quantities cannot go into a pod spec, or None. Requests may not exceed limits."""
    for resource in ("cpu", "memory"):
        request_text = getattr(resources, f"{resource}_request")
        limit_text = getattr(resources, f"{resource}_limit")
        try:
            request, limit = parse_quantity(request_text), parse_quantity(limit_text)
        except ValueError as error:
            return f"{resource}: {error}"
        if request > limit:
            return f"{resource} request {request_text} is above its limit {limit_text}"
    return None
