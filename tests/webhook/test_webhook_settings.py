"""Settings: defaults, config file, environment, and clear errors for bad values."""

from __future__ import annotations

from decimal import Decimal

import pytest

from kernel.capture import CaptureMode
from kernel.errors import ConfigError
from webhook.capture import volume_size_limit
from webhook.quantities import parse_quantity
from webhook.settings import (
    DEFAULT_EXCLUDED_NAMESPACES,
    SETTING_KEYS,
    ServingLimits,
    WebhookSettings,
    build_settings,
    env_name,
    environment_config,
    parse_config_text,
)


def test_no_config_gives_the_defaults() -> None:
    assert build_settings({}, {}) == WebhookSettings()
    assert WebhookSettings().excluded_namespaces == DEFAULT_EXCLUDED_NAMESPACES


def test_file_then_environment() -> None:
    file_config = parse_config_text(
        "captureMode: full\nsnaplen: 256\nnativeSidecar: false\n"
        "podSecurityNamespaces: [payments, vault]\ncpuLimit: 500m\n",
        source="config.yaml",
    )
    environ = {
        "NETPOL_SNIFFER_SNAPLEN": "1024",
        "NETPOL_SNIFFER_POD_SECURITY_NAMESPACES": "ledger, audit",
        "NETPOL_SNIFFER_CAPTURE_IMAGE": "capture:2",
        "UNRELATED": "x",
    }
    settings = build_settings(file_config, environment_config(environ), source="config.yaml")
    assert settings.capture.mode is CaptureMode.FULL
    assert settings.capture.snaplen == 1024
    assert settings.native_sidecar is False
    assert settings.pod_security_namespaces == {"ledger", "audit"}
    assert settings.capture_image == "capture:2"
    assert settings.resources.cpu_limit == "500m"


def test_json_config_is_accepted() -> None:
    config = parse_config_text('{"rotateFiles": 3, "ownNamespace": "sniffer"}', source="c.json")
    settings = build_settings(config, {})
    assert settings.capture.rotate_files == 3
    assert settings.own_namespace == "sniffer"


def test_env_names() -> None:
    assert env_name("rotateMegabytes") == "NETPOL_SNIFFER_ROTATE_MEGABYTES"
    assert env_name("snaplen") == "NETPOL_SNIFFER_SNAPLEN"


@pytest.mark.parametrize(
    ("file_config", "environ", "message"),
    [
        ({"snaplenn": 5}, {}, "config.yaml: unknown setting(s) snaplenn; known: captureImage"),
        ({"captureMode": "all"}, {}, "captureMode: must be one of handshake, full, got 'all'"),
        ({"snaplen": 10}, {}, "snaplen: must be an integer between 96 and 262144, got 10"),
        ({"snaplen": "big"}, {}, "config.yaml: snaplen: must be an integer between 96 and 262144"),
        ({}, {"nativeSidecar": "maybe"}, "NETPOL_SNIFFER_NATIVE_SIDECAR: must be true or false"),
        ({"memoryLimit": "64MB"}, {}, "memoryLimit: '64MB' is not a Kubernetes quantity"),
        ({"cpuRequest": "1", "cpuLimit": "500m"}, {}, "cpu request 1 is above its limit 500m"),
        ({"imagePullPolicy": "Sometimes"}, {}, "config.yaml: imagePullPolicy: must be one of"),
        ({"excludedNamespaces": ["Kube_System"]}, {}, "'Kube_System' is not a namespace name"),
        ({"captureImage": ""}, {}, "captureImage: must not be empty"),
        ({"podSecurityNamespaces": "a"}, {}, None),
    ],
)
def test_bad_values_are_named(
    file_config: dict[str, object], environ: dict[str, object], message: str | None
) -> None:
    if message is None:  # a string is a comma-separated list: valid
        build_settings(file_config, environ, source="config.yaml")
        return
    with pytest.raises(ConfigError) as caught:
        build_settings(file_config, environ, source="config.yaml")
    assert message in str(caught.value)


# Each setting given as an environment variable, with a value it does not allow, and what the
# error must say besides the variable's name and the value: what is allowed.
BAD_ENVIRONMENT = {
    "NETPOL_SNIFFER_SNAPLEN": ("10", "must be an integer between 96 and 262144"),
    "NETPOL_SNIFFER_ROTATE_MEGABYTES": ("0", "must be an integer between 1 and 1000"),
    "NETPOL_SNIFFER_ROTATE_FILES": ("many", "must be an integer between 1 and 1000"),
    "NETPOL_SNIFFER_WORKERS": ("65", "must be auto or an integer between 1 and 64"),
    "NETPOL_SNIFFER_MAX_IN_FLIGHT": ("-1", "must be an integer between 1 and 10000"),
    "NETPOL_SNIFFER_MAX_WAIT_MILLISECONDS": ("0", "must be an integer between 1 and 30000"),
    "NETPOL_SNIFFER_LISTEN_BACKLOG": ("70000", "must be an integer between 1 and 65535"),
    "NETPOL_SNIFFER_MAX_CONNECTIONS": ("0", "must be an integer between 1 and 100000"),
    "NETPOL_SNIFFER_CAPTURE_MODE": ("all", "must be one of handshake, full"),
    "NETPOL_SNIFFER_IMAGE_PULL_POLICY": ("Sometimes", "must be one of Always, IfNotPresent"),
    "NETPOL_SNIFFER_NATIVE_SIDECAR": ("maybe", "must be true or false"),
    "NETPOL_SNIFFER_CAPTURE_IMAGE": (" ", "must not be empty"),
    "NETPOL_SNIFFER_CPU_REQUEST": ("10 m", "is not a Kubernetes quantity (like 100m"),
    "NETPOL_SNIFFER_MEMORY_REQUEST": ("0", "must be more than zero"),
    "NETPOL_SNIFFER_CPU_LIMIT": ("1.2.3", "is not a Kubernetes quantity (like 100m"),
    "NETPOL_SNIFFER_MEMORY_LIMIT": ("64MB", "is not a Kubernetes quantity (like 100m"),
    "NETPOL_SNIFFER_OWN_NAMESPACE": ("Sniffer", "is not a namespace name (a DNS label"),
    "NETPOL_SNIFFER_EXCLUDED_NAMESPACES": ("a,B_c", "is not a namespace name (a DNS label"),
    "NETPOL_SNIFFER_POD_SECURITY_NAMESPACES": ("x.y", "is not a namespace name (a DNS label"),
}


def test_every_setting_has_a_bad_environment_case() -> None:
    assert set(BAD_ENVIRONMENT) == {env_name(key) for key in SETTING_KEYS}


@pytest.mark.parametrize("variable", sorted(BAD_ENVIRONMENT))
def test_bad_environment_value_names_the_variable_the_value_and_what_is_allowed(
    variable: str,
) -> None:
    value, allowed = BAD_ENVIRONMENT[variable]
    with pytest.raises(ConfigError) as caught:
        build_settings({}, environment_config({variable: value}), source="config.yaml")
    message = str(caught.value)
    assert message.startswith(f"environment variable {variable}: ")
    assert allowed in message
    offending = value.split(",")[-1]  # in a list, the name that is wrong
    assert repr(offending) in message
    assert "config.yaml" not in message


def test_request_above_limit_names_where_both_came_from() -> None:
    environ = environment_config({"NETPOL_SNIFFER_CPU_LIMIT": "500m"})
    with pytest.raises(ConfigError) as caught:
        build_settings({"cpuRequest": "1"}, environ, source="config.yaml")
    assert str(caught.value) == (
        "cpu request 1 is above its limit 500m "
        "(from config.yaml: cpuRequest; environment variable NETPOL_SNIFFER_CPU_LIMIT)"
    )


def test_config_text_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: must be a mapping"):
        parse_config_text("- a\n- b\n", source="c.yaml")
    with pytest.raises(ConfigError, match=r"c\.yaml: not YAML or JSON"):
        parse_config_text("a: [", source="c.yaml")
    assert parse_config_text("", source="c.yaml") == {}


@pytest.mark.parametrize(
    ("text", "amount"),
    [("10m", "0.010"), ("64Mi", 64 * 2**20), ("1.5", "1.5"), ("1e3", 1000), ("2k", 2000)],
)
def test_quantities(text: str, amount: object) -> None:
    assert parse_quantity(text) == Decimal(str(amount))


@pytest.mark.parametrize("text", ["", "-1", "0", "64MB", "1.2.3", "m", "10 m"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_volume_size_limit_is_above_the_ring() -> None:
    for settings in (
        WebhookSettings(),
        build_settings({"rotateMegabytes": 1, "rotateFiles": 1}, {}),
    ):
        limit = parse_quantity(volume_size_limit(settings.capture))
        assert limit > settings.capture.max_bytes + settings.capture.rotate_megabytes * 1_000_000


def test_serving_limits_from_file_and_environment() -> None:
    file_config = parse_config_text(
        "workers: 4\nmaxInFlight: 32\nmaxWaitMilliseconds: 20\nlistenBacklog: 64\n"
        "maxConnections: 40\n",
        source="config.yaml",
    )
    settings = build_settings(file_config, environment_config({"NETPOL_SNIFFER_WORKERS": "auto"}))
    assert settings.serving == ServingLimits(
        workers=None, max_in_flight=32, max_wait_seconds=0.02, listen_backlog=64, max_connections=40
    )
    environ = environment_config(
        {"NETPOL_SNIFFER_MAX_IN_FLIGHT": "8", "NETPOL_SNIFFER_WORKERS": "2"}
    )
    assert build_settings({}, environ).serving == ServingLimits(workers=2, max_in_flight=8)
    assert WebhookSettings().serving == ServingLimits()


@pytest.mark.parametrize(
    ("file_config", "environ", "message"),
    [
        ({"workers": "many"}, {}, "config.yaml: workers: must be auto or an integer between 1"),
        ({"workers": 0}, {}, "workers: must be auto or an integer between 1 and 64, got 0"),
        ({}, {"workers": "-2"}, "NETPOL_SNIFFER_WORKERS: must be auto or an integer"),
        ({"maxInFlight": 0}, {}, "maxInFlight: must be an integer between 1 and 10000, got 0"),
        ({"maxInFlight": True}, {}, "maxInFlight: must be an integer between 1 and 10000, got"),
        ({}, {"maxWaitMilliseconds": "0.5"}, "NETPOL_SNIFFER_MAX_WAIT_MILLISECONDS: must be an"),
        ({"maxWaitMilliseconds": 60_000}, {}, "maxWaitMilliseconds: must be an integer between 1"),
        ({"listenBacklog": 70_000}, {}, "listenBacklog: must be an integer between 1 and 65535"),
        ({}, {"maxConnections": "x"}, "NETPOL_SNIFFER_MAX_CONNECTIONS: must be an integer between"),
    ],
)
def test_bad_serving_limits_are_named(
    file_config: dict[str, object], environ: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_settings(file_config, environ, source="config.yaml")
    assert message in str(caught.value)
