"""Several bundles analysed together (``analyse BUNDLE BUNDLE…``): one bundle's capture never
vouches for another bundle's pods, and a bundle speaks only for its own window.

Two copies of the recorded bundle play two capture windows (``monday``, ``tuesday``); merged
untouched they give the clean run's policies. A hostile frontend in one of them forges calls to
paymentservice's admin port, where nothing listens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from analyser.analysing import Analysis
from analyser.bundles import open_bundle
from analyser.periods import DAY
from analyser.windows import analyse_windows
from tests.bundle_builders import handshake
from tests.hostile.hostile_helpers import (
    NAMESPACE,
    add_capture,
    copy_example,
    pod_folder,
    pod_ip,
    policy_files,
    window_start,
)

FRONTEND_POLICY = f"{NAMESPACE}.frontend.yaml"
PAYMENT_POLICY = f"{NAMESPACE}.paymentservice.yaml"
FRONTEND = f"{NAMESPACE}/Deployment/frontend"
PAYMENT = f"{NAMESPACE}/Deployment/paymentservice"
ADMIN_PORT = 9090
COVERED = 6.0  # seconds after the window's start: paymentservice's capture covers it


def run_windows(*bundles: Path) -> Analysis:
    return analyse_windows([open_bundle(bundle) for bundle in bundles], workers=1)


def forge_call(bundle: Path, at: float) -> None:
    """frontend's capture claims it called paymentservice's admin port at ``at``."""
    frontend, payment = pod_ip(bundle, "frontend"), pod_ip(bundle, "paymentservice")
    add_capture(bundle, "frontend", handshake(frontend, 45000, payment, ADMIN_PORT, at))


def forget_capture(bundle: Path, app: str) -> None:
    """The bundle without ``app``'s pod's captures: that window did not capture it."""
    folder = pod_folder(bundle, app)
    shutil.rmtree(folder)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["captures"] = [e for e in manifest["captures"] if e["pod"] != folder.name]
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=2))


def test_two_clean_windows_give_the_clean_policies(
    tmp_path: Path, clean_policies: dict[str, str]
) -> None:
    monday, tuesday = copy_example(tmp_path / "monday"), copy_example(tmp_path / "tuesday")
    assert policy_files(run_windows(monday, tuesday)) == clean_policies


def test_a_window_that_did_not_capture_a_pod_does_not_vouch_for_it(
    tmp_path: Path, clean_policies: dict[str, str]
) -> None:
    """monday did not capture paymentservice, so nothing there could refute frontend's forged
    call (alone, monday would write no paymentservice policy). tuesday captured it and gives
    it its policy: monday's frontend capture must not add an ingress rule to it."""
    monday, tuesday = copy_example(tmp_path / "monday"), copy_example(tmp_path / "tuesday")
    forge_call(monday, window_start(monday) + COVERED)
    forget_capture(monday, "paymentservice")

    analysis = run_windows(monday, tuesday)

    policies = policy_files(analysis)
    assert policies[PAYMENT_POLICY] == clean_policies[PAYMENT_POLICY]
    # frontend's own capture speaks for frontend: its egress gets the call.
    assert policies[FRONTEND_POLICY] != clean_policies[FRONTEND_POLICY]
    assert f"port: {ADMIN_PORT}" in policies[FRONTEND_POLICY]
    [pair] = analysis.unvouched
    assert (pair.client, pair.server, pair.ports_text) == (FRONTEND, PAYMENT, "TCP/9090")
    [admin] = [
        stats
        for port, stats in analysis.graph.edge(FRONTEND, PAYMENT).ports.items()
        if port.port == ADMIN_PORT
    ]
    assert [window.bundle for window in admin.windows] == ["monday"]
    assert not admin.vouched.server


def test_a_forged_call_one_window_s_pod_capture_refutes_stays_refuted_merged(
    tmp_path: Path, clean_policies: dict[str, str]
) -> None:
    """monday captured paymentservice, which did not see frontend's forged call; tuesday has
    no such call: merged, paymentservice's policy is the clean one."""
    monday, tuesday = copy_example(tmp_path / "monday"), copy_example(tmp_path / "tuesday")
    forge_call(monday, window_start(monday) + COVERED)

    analysis = run_windows(tuesday, monday)

    assert policy_files(analysis)[PAYMENT_POLICY] == clean_policies[PAYMENT_POLICY]
    assert analysis.summary()["unvouched_sides"] == 1


def test_a_bundle_speaks_only_for_its_own_window(
    tmp_path: Path, clean_policies: dict[str, str]
) -> None:
    """frontend's capture in monday holds a call dated a day before monday's window (a forged
    timestamp): it would be resolved with monday's snapshot and excused by monday's captures,
    which had not started. Merged, it is dropped, and a warning names the file."""
    monday, tuesday = copy_example(tmp_path / "monday"), copy_example(tmp_path / "tuesday")
    forge_call(monday, window_start(monday) - DAY)

    analysis = run_windows(monday, tuesday)

    assert policy_files(analysis) == clean_policies
    hostile = f"monday/captures/{NAMESPACE}/{pod_folder(monday, 'frontend').name}/hostile.pcap"
    [problem] = [p for p in analysis.problems if p.path == hostile]
    assert "1 flow dated outside this bundle's capture window" in problem.problem
    assert hostile in analysis.files["report.md"]


def test_the_order_the_windows_are_given_in_changes_nothing(tmp_path: Path) -> None:
    monday, tuesday = copy_example(tmp_path / "monday"), copy_example(tmp_path / "tuesday")
    forge_call(monday, window_start(monday) + COVERED)
    forget_capture(monday, "paymentservice")
    assert run_windows(monday, tuesday).files == run_windows(tuesday, monday).files
