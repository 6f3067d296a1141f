"""Fixtures for tests against a real control plane (etcd, kube-apiserver, kube-controller-manager).

``control_plane`` is session-scoped and importable by any test under ``tests/e2e/``: it gives the
kubeconfig path (``.kubeconfig``), the server URL (``.server``), an environment for kubectl and
clients (``.env``), and ``.kubectl(...)`` / ``.kubectl_json(...)`` running the kubectl built
with it.
``namespace_factory`` makes namespaces (optionally labelled) that are deleted after the test.
``node`` (marker ``node``) is a whole single-node cluster (``node.py``): kubelet, containerd,
kube-proxy, CoreDNS and kube-router's NetworkPolicy firewall, in a network namespace of its own.
"""

from __future__ import annotations

import atexit
import itertools
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from tests.e2e.controlplane import ControlPlane, ControlPlaneError, NamespaceFactory, build
from tests.e2e.node import SUMMARY_LINES, Built, Node
from tests.e2e.node import build as build_node


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # A CI timeout or `kill` ends the run like Ctrl-C does, so session finalizers still run;
    # a second SIGTERM must not cut that cleanup short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


_build_outcome: list[Path | ControlPlaneError] = []
_node_build_outcome: list[Built | ControlPlaneError] = []


def _build_once(config: pytest.Config) -> Path | ControlPlaneError:
    """Build (or find) the binaries once per run, printing to the terminal, not to a capture."""
    if not _build_outcome:
        capture = config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            try:
                _build_outcome.append(build())
            except ControlPlaneError as error:
                _build_outcome.append(error)
    return _build_outcome[0]


def _build_node_once(config: pytest.Config) -> Built | ControlPlaneError:
    """Build (or find) everything a node runs, once per run, printing to the terminal."""
    if not _node_build_outcome:
        capture = config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            try:
                _node_build_outcome.append(build_node())
            except ControlPlaneError as error:
                _node_build_outcome.append(error)
    return _node_build_outcome[0]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in SUMMARY_LINES:
        terminalreporter.write_line(line)


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build before the first test starts, so a cold build does not count against a test's timeout.
    if any(item.get_closest_marker("e2e") for item in session.items):
        _build_once(session.config)
    if any(item.get_closest_marker("node") for item in session.items):
        _build_node_once(session.config)


@pytest.fixture(scope="session")
def control_plane_binaries(pytestconfig: pytest.Config) -> Path:
    """The directory of the built binaries."""
    outcome = _build_once(pytestconfig)
    if isinstance(outcome, ControlPlaneError):
        pytest.fail(f"cannot build the control plane: {outcome}", pytrace=False)
    return outcome


@pytest.fixture(scope="session")
def control_plane(control_plane_binaries: Path) -> Iterator[ControlPlane]:
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    plane = ControlPlane(bin_dir=control_plane_binaries)
    # Backstop for exits that skip fixture teardown; stop() is idempotent.
    atexit.register(plane.stop)
    failure: ControlPlaneError | None = None
    try:
        plane.start()
    except ControlPlaneError as error:
        failure = error
    if failure is not None:
        pytest.fail(f"cannot start the control plane: {failure}", pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()
        atexit.unregister(plane.stop)
        signal.signal(signal.SIGTERM, previous)


_namespace_numbers = itertools.count(1)


@pytest.fixture
def namespace_factory(control_plane: ControlPlane) -> Iterator[NamespaceFactory]:
    """``make(prefix, labels={...})`` → the name of a new namespace whose default
    ServiceAccount exists (pods are admitted only then); all are deleted after the test."""
    made: list[str] = []

    def make(prefix: str, *, labels: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{next(_namespace_numbers)}"
        control_plane.kubectl("create", "namespace", name)
        made.append(name)
        if labels:
            pairs = [f"{key}={value}" for key, value in labels.items()]
            control_plane.kubectl("label", "namespace", name, *pairs)
        control_plane.wait_for_default_service_account(name)
        return name

    yield make
    for name in made:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def node(pytestconfig: pytest.Config) -> Iterator[Node]:
    """A started single-node cluster; stopped (everything removed) after the module's tests, so
    it does not weigh on the tests that follow."""
    outcome = _build_node_once(pytestconfig)
    if isinstance(outcome, ControlPlaneError):
        pytest.fail(f"cannot build the node: {outcome}", pytrace=False)
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    started = Node(outcome)
    atexit.register(started.stop)
    failure: ControlPlaneError | None = None
    try:
        started.start()
    except ControlPlaneError as error:
        failure = error
    if failure is not None:
        pytest.fail(f"cannot start the node: {failure}", pytrace=False)
    try:
        yield started
    finally:
        started.stop()
        atexit.unregister(started.stop)
        signal.signal(signal.SIGTERM, previous)
