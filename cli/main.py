"""Entry point and error boundary of ``netpol-sniffer``.

Subcommands are listed in ``COMMANDS`` and imported only when they run, so ``--help`` of one never
loads another's heavy libraries. Exceptions become a message and an exit status here, and only
here; ``--debug`` re-raises them with a traceback.

Every line the commands write to the terminal goes through :func:`say` (stderr), :func:`echo`
(stdout) or the logging format set here, and so through ``texts.inert``: names, file names and
messages that come from input reach the terminal escaped (``\x1b``, ``\u2028``), one line each,
never as escape sequences or line breaks of their own.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from enum import IntEnum
from types import ModuleType

from analyser.texts import inert
from kernel.errors import NetpolSnifferError

PROG = "netpol-sniffer"


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # unusable input, a failed operation
    USAGE = 2  # bad command line (argparse's own code)
    DENIED = 3  # verify: at least one observed flow is denied
    INTERRUPTED = 130  # Ctrl-C


# name → (module, one-line summary). The summary is repeated here so the top-level --help needs
# no imports; a test checks it matches the module's SUMMARY.
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("cli.collect", "pull captures and a cluster snapshot into a bundle"),
    "analyse": ("cli.analyse", "turn a bundle into NetworkPolicies, a graph and a report"),
    "verify": ("cli.verify", "prove policies allow every observed flow, show the rest"),
    "diff": ("cli.diff", "what changes between two policy folders, per workload pair"),
    "lab": ("cli.lab", "run the pipeline on a simulated cluster of network namespaces"),
    "demo": ("cli.demo", "lab + analyse on microservices-demo, with a summary"),
    "uninstall-sidecars": (
        "cli.uninstall_sidecars",
        "unlabel namespaces and roll their workloads so the sidecars go away",
    ),
}


def _top_level_help() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: {PROG} [--debug] COMMAND [ARGS...]",
        "",
        "Least-privilege Kubernetes NetworkPolicies from the traffic an application really makes.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", f"Run '{PROG} COMMAND --help' for a command's options."]
    return "\n".join(lines)


def say(command: str, message: str) -> None:
    """A line on stderr in the command's voice: ``netpol-sniffer COMMAND: MESSAGE`` (inert)."""
    print(f"{PROG} {command}: {inert(message)}", file=sys.stderr)


def echo(line: str) -> None:
    """A line on stdout (inert): a command's result."""
    print(inert(line))


class _InertFormatter(logging.Formatter):
    """Log lines made inert like :func:`say`'s (a traceback under ``--debug`` stays as it is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return inert(super().formatMessage(record))


def load_command(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name][0])


def build_parser(name: str, module: ModuleType) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} {name}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    module.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_in
    if debug:
        args_in.remove("--debug")
    try:
        return _run(args_in, debug=debug)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (`netpol-sniffer analyse --help | head`): not an error worth a
        # traceback. Later writes (and the flush at exit) go nowhere instead of raising again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitStatus.OK


def _run(args_in: list[str], *, debug: bool) -> int:
    if not args_in or args_in[0] in {"-h", "--help", "help"}:
        print(_top_level_help())
        return ExitStatus.OK if args_in else ExitStatus.USAGE
    if args_in[0] == "--version":
        from importlib.metadata import version

        print(f"{PROG} {version('netpol-sniffer')}")
        return ExitStatus.OK
    name, rest = args_in[0], args_in[1:]
    if name not in COMMANDS:
        import difflib  # here: only a mistyped command needs it, not every run's start

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(
            f"{PROG}: unknown command {inert(name)!r}{hint}\n\n{_top_level_help()}",
            file=sys.stderr,
        )
        return ExitStatus.USAGE
    handler = logging.StreamHandler()
    handler.setFormatter(_InertFormatter(f"{PROG}: %(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, handlers=[handler])
    module = load_command(name)
    args = build_parser(name, module).parse_args(rest)
    args.debug = debug
    try:
        return int(module.run(args))
    except NetpolSnifferError as error:
        if debug:
            raise
        say(name, f"error: {error}")
        return ExitStatus.ERROR


if __name__ == "__main__":
    sys.exit(main())
