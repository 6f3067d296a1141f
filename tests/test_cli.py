"""The CLI shell: registry, help, error boundary."""

from __future__ import annotations

import argparse
import importlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from cli import main as cli_main
from cli.main import COMMANDS, ExitStatus, build_parser, echo, load_command, main, say


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == ExitStatus.OK
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_no_arguments_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == ExitStatus.USAGE


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == ExitStatus.USAGE
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_a_misspelt_command_gets_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "bundle"]) == ExitStatus.USAGE
    assert "unknown command 'analyze'; did you mean 'analyse'?" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["analyse", "--help"], ["--version"]])
def test_a_reader_that_stops_reading_gets_no_traceback(argv: list[str]) -> None:
    """``netpol-sniffer ... | head``: the pipe closes before the command writes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # before the first write
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_and_a_matching_summary(name: str) -> None:
    module = importlib.import_module(COMMANDS[name][0])
    expected_summary = COMMANDS[name][1]
    assert getattr(module, "SUMMARY", None) == expected_summary
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", name, "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"netpol-sniffer {name}" in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_action_of_a_command_says_what_it_does(name: str) -> None:
    """``lab run --help`` and the like: an action's help opens with a description, not only the
    usage line and the options."""
    parser = build_parser(name, load_command(name))
    actions = [
        action
        for action in parser._actions  # argparse offers no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction)
    ]
    for action in actions:
        for sub_name, sub_parser in action.choices.items():
            assert sub_parser.description, f"{name} {sub_name} has no description"


def test_analyse_help_does_not_import_the_webhook_or_kubernetes() -> None:
    code = (
        "import sys; from cli.main import main\n"
        "try:\n    main(['analyse', '--help'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('fastapi', 'uvicorn', 'kubernetes') if m in sys.modules]\n"
        "print('heavy imports: ' + ','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    # the help text comes first; the last line is the marker (empty: nothing heavy was imported)
    assert result.stdout.strip().splitlines()[-1] == "heavy imports:"


HOSTILE = "pod\x1b[2J\nnetpol-sniffer analyse: fake line\u2028\u202e\x85"
SHOWN = "pod\\x1b[2J\\nnetpol-sniffer analyse: fake line\\u2028\\u202e\\x85"


def test_every_terminal_line_shows_input_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    say("analyse", f"warning: {HOSTILE}")
    echo(f"result: {HOSTILE}")
    captured = capsys.readouterr()
    assert captured.err == f"netpol-sniffer analyse: warning: {SHOWN}\n"
    assert captured.out == f"result: {SHOWN}\n"


def test_log_lines_show_input_escaped() -> None:
    formatter = cli_main._InertFormatter("%(levelname)s: %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "pulled %s", (HOSTILE,), None)
    assert formatter.format(record) == f"INFO: pulled {SHOWN}"


def test_an_error_message_holding_input_is_one_escaped_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle\x1b[31m\nx"
    assert main(["analyse", str(bundle), "--out", str(tmp_path / "out")]) == ExitStatus.ERROR
    (line,) = capsys.readouterr().err.splitlines()
    assert line.isprintable() and "bundle\\x1b[31m\\nx" in line
