"""The argument types and options the subcommands share."""

from __future__ import annotations

import argparse

import pytest

from analyser.peers import ALLOWABLE_SPECIAL
from cli.arguments import (
    CAPTURE_MODES,
    SPECIAL_CLASSES,
    add_capture_mode,
    byte_size,
    positive_int,
    positive_seconds,
    seconds,
)
from kernel.capture import CaptureMode


def test_positive_int() -> None:
    assert positive_int("4") == 4
    for text in ("0", "-1", "1.5", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match="at least 1"):
            positive_int(text)


def test_seconds_allows_zero_but_not_negative() -> None:
    assert seconds("0") == 0.0
    assert seconds("2.5") == 2.5
    for text in ("-1", "soon"):
        with pytest.raises(argparse.ArgumentTypeError, match="≥ 0"):
            seconds(text)


def test_positive_seconds_rejects_zero() -> None:
    assert positive_seconds("0.5") == 0.5
    for text in ("0", "-3", "soon"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive number of seconds"):
            positive_seconds(text)


def test_byte_size_takes_binary_units() -> None:
    assert [byte_size(text) for text in ("1", "512M", "1G", "2GiB", "3 kb", "1T")] == [
        1,
        512 << 20,
        1 << 30,
        2 << 30,
        3 << 10,
        1 << 40,
    ]
    for text in ("0", "-1G", "1.5G", "1P", "big", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="must be a size such as 1G"):
            byte_size(text)


def test_capture_modes_are_the_webhooks() -> None:
    assert tuple(mode.value for mode in CaptureMode) == CAPTURE_MODES
    parser = argparse.ArgumentParser()
    add_capture_mode(parser, help_prefix="mode")
    assert parser.parse_args([]).capture_mode == CaptureMode.HANDSHAKE
    assert parser.parse_args(["--capture-mode", "full"]).capture_mode == CaptureMode.FULL


def test_special_address_classes_are_the_analysers() -> None:
    assert tuple(kind.value for kind in ALLOWABLE_SPECIAL) == SPECIAL_CLASSES


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["analyse", "b", "--out", "o", "--workers", "0"], "--workers: must be a whole number"),
        (
            ["analyse", "b", "--out", "o", "--max-capture-size", "lots"],
            "--max-capture-size: must be a size",
        ),
        (
            ["collect", "--all-labelled", "-o", "b", "--parallel", "0"],
            "--parallel: must be a whole",
        ),
        (
            ["collect", "--all-labelled", "-o", "b", "--duration", "-1"],
            "--duration: must be a number",
        ),
        (
            ["lab", "run", "--manifests", "m", "--traffic", "t", "-o", "b", "--duration", "0"],
            "--duration: must be a positive number",
        ),
        (["demo", "--duration", "0"], "--duration: must be a positive number"),
        (["demo", "--capture-mode", "some"], "--capture-mode: invalid choice"),
    ],
)
def test_subcommands_reject_bad_values(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import ExitStatus, main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == ExitStatus.USAGE
    assert message in capsys.readouterr().err
