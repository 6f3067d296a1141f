"""Several bundles (capture windows) analysed as one (analyser.windows): each bundle's flows
resolved with its own snapshot, one merged graph that says which window saw which edge, output
independent of the order the bundles are given in, one cluster only, CronJobs the windows miss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analyser.analysing import PolicyOptions, analyse
from analyser.bundles import Bundle, open_bundle
from analyser.graphs import EdgeWindow
from analyser.periods import DAY
from analyser.rendering import baseline_path
from analyser.windows import analyse_windows, observe_windows
from cli.main import main
from kernel.bundles import Manifest, entries_for_layout, write_manifest
from kernel.errors import BundleError
from tests.bundle_builders import CART_POD, T0, make_bundle
from tests.hostile.hostile_helpers import without_comments

FRONTEND = "web/Deployment/frontend"
CART = "shop/Deployment/cart"
ORDERS = "shop/Deployment/orders"


def rewrite_manifest(root: Path) -> None:
    manifest = open_bundle(root, check_sums=False).manifest
    assert manifest is not None
    write_manifest(
        root,
        Manifest(
            producer=manifest.producer,
            capture_mode=manifest.capture_mode,
            window=manifest.window,
            captures=tuple(entries_for_layout(root)),
        ),
    )


def cart_became_orders(root: Path) -> Path:
    """The bundle of a day on which the cart's address, Service and traffic belonged to another
    workload: Deployment shop/orders (its pod, labels and Service renamed)."""
    snapshot = root / "snapshot.json"
    snapshot.write_text(snapshot.read_text().replace("cart", "orders"))
    folder = root / "captures" / "shop" / CART_POD
    meta = folder / "meta.json"
    meta.write_text(meta.read_text().replace("cart", "orders"))
    folder.rename(folder.with_name(CART_POD.replace("cart", "orders")))
    rewrite_manifest(root)
    return root


def two_days(tmp_path: Path) -> list[Bundle]:
    monday = make_bundle(tmp_path / "monday")
    tuesday = cart_became_orders(make_bundle(tmp_path / "tuesday", start=T0 + DAY))
    return [open_bundle(monday), open_bundle(tuesday)]


def test_an_address_means_the_pod_it_belonged_to_in_that_bundle(tmp_path: Path) -> None:
    analysis = analyse_windows(two_days(tmp_path), workers=1)
    graph = analysis.graph
    (to_cart,) = graph.edge(FRONTEND, CART).ports.values()
    (to_orders,) = graph.edge(FRONTEND, ORDERS).ports.values()
    assert [w.bundle for w in to_cart.windows] == ["monday"]
    assert [w.bundle for w in to_orders.windows] == ["tuesday"]
    assert to_orders.windows == (EdgeWindow("tuesday", 1, T0 + DAY + 2, T0 + DAY + 2.0045),)
    assert {a.window for a in graph.flows_on_edge(FRONTEND, ORDERS)} == {"tuesday"}
    assert {
        "shop.cart.yaml",
        "shop.orders.yaml",
        "web.frontend.yaml",
    } <= set(analysis.policy_files)
    frontend = analysis.files["web.frontend.yaml"]
    assert '"app": "cart"' in frontend and '"app": "orders"' in frontend


def test_each_bundle_alone_gives_what_its_window_saw(tmp_path: Path) -> None:
    monday, tuesday = two_days(tmp_path)
    merged = analyse_windows([monday, tuesday], workers=1)
    alone = analyse(monday, workers=1)
    # The same rules; the comments above them differ: with several windows they name them.
    assert without_comments(alone.files["shop.cart.yaml"]).replace(
        alone.window.start_text + "/" + alone.window.end_text,  # type: ignore[union-attr]
        "WINDOW",
    ) == without_comments(merged.files["shop.cart.yaml"]).replace(
        merged.window.start_text + "/" + merged.window.end_text,  # type: ignore[union-attr]
        "WINDOW",
    )
    assert "; in monday (1)" not in alone.files["shop.cart.yaml"]
    comments = [line.strip() for line in merged.files["web.frontend.yaml"].split("\n")]
    to_orders = comments.index(f"# to {ORDERS}") + 1
    assert comments[to_orders].startswith("# TCP/8080: 1 flow")
    assert comments[to_orders].endswith("; in tuesday (1)")


def test_the_output_does_not_depend_on_the_order_bundles_are_given_in(tmp_path: Path) -> None:
    monday, tuesday = two_days(tmp_path)
    forward = analyse_windows([monday, tuesday], workers=1)
    backward = analyse_windows([tuesday, monday], workers=1)
    assert forward.files == backward.files
    assert forward.summary() == backward.summary()


def test_a_baseline_covers_the_namespaces_of_every_window(tmp_path: Path) -> None:
    # Both days' policies are made under the one baseline, and the safety check counts it: each
    # day's flows are still allowed (conclude raises UnsafePolicies otherwise).
    monday, tuesday = two_days(tmp_path)
    analysis = analyse_windows([monday, tuesday], PolicyOptions(baseline=True), workers=1)
    assert analysis.baseline is not None
    assert baseline_path(analysis.baseline) in analysis.files
    assert {"shop.cart.yaml", "shop.orders.yaml"} <= set(analysis.policy_files)
    assert (
        analyse_windows([tuesday, monday], PolicyOptions(baseline=True), workers=1).files
        == analysis.files
    )


def test_the_summary_and_report_name_the_windows(tmp_path: Path) -> None:
    analysis = analyse_windows(two_days(tmp_path), workers=1)
    summary = analysis.summary()
    assert summary["bundle"] == "monday, tuesday"
    assert summary["windows"] == [
        {"bundle": "monday", "start": "2026-01-01T10:00:00Z", "end": "2026-01-01T10:01:00Z"},
        {"bundle": "tuesday", "start": "2026-01-02T10:00:00Z", "end": "2026-01-02T10:01:00Z"},
    ]
    assert summary["window"] == {"start": "2026-01-01T10:00:00Z", "end": "2026-01-02T10:01:00Z"}
    report = analysis.files["report.md"]
    assert "## Capture windows" in report and "| monday | 2026-01-01T10:00:00Z |" in report
    assert f"| {FRONTEND} | {ORDERS} | TCP/8080 | tuesday (1, 2026-01-02T10:00:02Z to " in report
    # Files are named with their bundle's label.
    assert all(r.path.startswith(("monday/", "tuesday/")) for r in analysis.traffic.reports)
    one = analyse(open_bundle(tmp_path / "monday"), workers=1)
    assert "## Capture windows" not in one.files["report.md"]
    assert one.summary()["windows"] == [
        {"bundle": "monday", "start": "2026-01-01T10:00:00Z", "end": "2026-01-01T10:01:00Z"}
    ]


def test_same_named_bundles_get_labels_with_their_window(tmp_path: Path) -> None:
    first = make_bundle(tmp_path / "a" / "bundle")
    second = make_bundle(tmp_path / "b" / "bundle", start=T0 + DAY)
    found = observe_windows([open_bundle(second), open_bundle(first)], workers=1)
    assert [w.label for w in found.observation.windows] == [
        "bundle@2026-01-01T10:00:00Z",
        "bundle@2026-01-02T10:00:00Z",
    ]


def test_a_bundle_given_twice_is_an_error(tmp_path: Path) -> None:
    bundle = open_bundle(make_bundle(tmp_path / "b"))
    with pytest.raises(BundleError, match="given more than once"):
        analyse_windows([bundle, bundle], workers=1)


def test_bundles_of_different_clusters_are_refused(tmp_path: Path) -> None:
    monday = make_bundle(tmp_path / "monday")
    other = make_bundle(tmp_path / "other", start=T0 + DAY)
    snapshot = other / "snapshot.json"
    snapshot.write_text(snapshot.read_text().replace('"uid-kube-system"', '"uid-another"'))
    with pytest.raises(BundleError, match="different clusters"):
        analyse_windows([open_bundle(monday), open_bundle(other)], workers=1)


def add_cronjob(root: Path, schedule: str) -> Path:
    snapshot = json.loads((root / "snapshot.json").read_text())
    snapshot["items"].append(
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "report", "namespace": "shop", "uid": "uid-report"},
            "spec": {
                "schedule": schedule,
                "jobTemplate": {"spec": {"template": {"metadata": {"labels": {"app": "report"}}}}},
            },
        }
    )
    (root / "snapshot.json").write_text(json.dumps(snapshot))
    return root


def test_a_cronjob_that_runs_less_often_than_the_windows_cover_is_warned_about(
    tmp_path: Path,
) -> None:
    weekly = add_cronjob(make_bundle(tmp_path / "weekly"), "0 3 * * 0")
    analysis = analyse(open_bundle(weekly), workers=1)
    (item,) = analysis.uncovered_cronjobs
    assert (item.cronjob, item.period, item.covered) == ("shop/report", 7 * DAY, 60)
    assert analysis.summary()["uncovered_cronjobs"] == [item.as_json()]
    assert "## CronJobs the capture windows may have missed" in analysis.files["report.md"]
    often = add_cronjob(make_bundle(tmp_path / "often"), "* * * * *")
    assert analyse(open_bundle(often), workers=1).uncovered_cronjobs == ()


def test_analyse_takes_several_bundles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monday = make_bundle(tmp_path / "monday")
    tuesday = add_cronjob(make_bundle(tmp_path / "tuesday", start=T0 + DAY), "0 3 * * 0")
    out = tmp_path / "out"
    status = main(["analyse", str(tuesday), str(monday), "-o", str(out), "--workers", "1"])
    captured = capsys.readouterr()
    assert status == 0
    assert "of 2 capture windows written to" in captured.out
    assert "warning: CronJob shop/report runs at most 7 d apart" in captured.err
    assert (out / "shop.cart.yaml").is_file()


def test_verify_checks_the_flows_of_every_bundle_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monday = make_bundle(tmp_path / "monday")
    tuesday = cart_became_orders(make_bundle(tmp_path / "tuesday", start=T0 + DAY))
    both, tuesday_only = tmp_path / "both", tmp_path / "tuesday-only"
    assert main(["analyse", str(monday), str(tuesday), "-o", str(both), "--workers", "1"]) == 0
    assert main(["analyse", str(tuesday), "-o", str(tuesday_only), "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["verify", str(tuesday), str(monday), str(both), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["bundle"] == f"{tuesday}, {monday}"
    assert [w["bundle"] for w in document["windows"]] == ["monday", "tuesday"]
    # tuesday's policies alone miss monday's frontend → cart.
    assert main(["verify", str(monday), str(tuesday), str(tuesday_only)]) == 3
    denied = capsys.readouterr().out
    assert "DENIED" in denied and CART in denied


def test_diff_takes_the_workloads_of_every_snapshot_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monday = make_bundle(tmp_path / "monday")
    tuesday = cart_became_orders(make_bundle(tmp_path / "tuesday", start=T0 + DAY))
    out = tmp_path / "out"
    assert main(["analyse", str(monday), str(tuesday), "-o", str(out), "--workers", "1"]) == 0
    capsys.readouterr()
    args = ["diff", str(out), str(out), "--json"]
    assert main([*args, "--snapshot", str(monday), "--snapshot", str(tuesday)]) == 0
    workloads = json.loads(capsys.readouterr().out)["workloads"]
    assert {CART, ORDERS, FRONTEND} <= set(workloads)


def test_the_steps_after_the_reading_are_told_per_window_then_once(tmp_path: Path) -> None:
    # what a progress display shows once the captures are read (cli.progress)
    told: list[str] = []
    read: list[int] = []
    days = two_days(tmp_path)
    analysis = analyse_windows(days, workers=1, on_progress=read.append, on_step=told.append)
    flows = [len(seen.flows) for seen in observe_windows(days, workers=1).observations]
    assert flows[0] > 1  # no window drops any: each conversation is a flow
    assert told == [
        f"orienting {flows[0]} conversations",
        f"building the workload graph of {flows[0]} flows",
        f"orienting {flows[1]} conversations",
        f"building the workload graph of {flows[1]} flows",
        "merging 2 capture windows",
        "making the policies, their review, the report and the pictures",
    ]
    assert sum(read) == sum(path.stat().st_size for day in days for path in day.captures)
    # being told changes nothing
    assert analysis.files == analyse_windows(days, workers=1).files
