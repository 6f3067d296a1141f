"""The lab and demo subcommands as a user runs them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cli.main import ExitStatus, main
from tests.lab.lab_helpers import EXAMPLE, lab_run_argv


def test_lab_without_root_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    status = main(
        lab_run_argv(
            EXAMPLE / "kubernetes-manifests.yaml", EXAMPLE / "traffic.yaml", tmp_path / "bundle"
        )
    )
    assert status == ExitStatus.ERROR
    assert "the lab needs root" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()


def test_a_bad_plan_is_named_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("calls: [{from: default/Deployment/frontend, to: cartservice}]\n")
    status = main(lab_run_argv(EXAMPLE / "kubernetes-manifests.yaml", plan, tmp_path / "bundle"))
    assert status == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert str(plan) in err and "HOST:PORT" in err


@pytest.mark.parametrize(
    ("flags", "root", "reason"),
    [(["--recorded"], True, "as asked"), ([], False, "not root, so the lab cannot run")],
)
def test_demo_without_the_lab_analyses_the_recorded_bundle(
    flags: list[str],
    root: bool,
    reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if not root:
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["demo", *flags, "--out", str(tmp_path)]) == ExitStatus.OK
    captured = capsys.readouterr()
    assert reason in captured.err
    assert "analysing the recorded bundle" in captured.err
    out = captured.out
    assert re.search(r"(\d+)/\1 flows that happened are allowed; nothing allowed beyond", out), out
    assert "emailservice" in out and "8080/TCP" in out
    assert (tmp_path / "policies" / "Kustomization").is_file()
    assert (tmp_path / "policies" / "report.md").is_file()
    assert not (tmp_path / "bundle").exists()


@pytest.mark.lab
def test_demo_runs_the_lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--duration", "3"]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert re.search(r"(\d+)/\1 flows that happened are allowed; nothing allowed beyond", out), out
    assert (tmp_path / "bundle" / "truth.json").is_file()
    assert (tmp_path / "policies" / "default.frontend.yaml").is_file()
    # a second demo into the same folder replaces its own bundle
    assert main(["demo", "--out", str(tmp_path), "--duration", "2"]) == ExitStatus.OK
