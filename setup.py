"""Build hook: compile ``analyser/packets.py`` with mypyc when this machine can.

Everything else about the package is in ``pyproject.toml``. ``analyser/packets.py`` holds the
loop that runs once per captured packet; compiled by mypyc (part of mypy, from the same typed
Python source) it reads captures about 2.5 times faster (``bench/analyse_throughput.py`` prints
both). The extension is optional: without a C compiler or Python's headers the build warns and
the package runs the same source interpreted, with the same results (``tests/analyser/
test_packets.py`` checks both). ``NETPOL_SNIFFER_COMPILE=0`` skips compiling (the webhook's
image, which reads no captures, does).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILED_MODULES = ["analyser/packets.py"]


def compiled_extensions() -> list[Extension]:
    if os.environ.get("NETPOL_SNIFFER_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify

    # The build environment has no stubs for the project's dependencies: only the compiled
    # module's own types matter here (``make lint`` type-checks everything strictly).
    extensions: list[Extension] = mypycify(
        ["--ignore-missing-imports", *COMPILED_MODULES], opt_level="3"
    )
    for extension in extensions:
        extension.optional = True  # no compiler: warn and install the interpreted source
    return extensions


class AllOrNothing(build_ext):
    """mypyc builds a module as two extensions, the module and its runtime library: an import
    needs both, so when either failed to build, neither is kept (the source runs instead)."""

    def run(self) -> None:
        outputs = [Path(self.get_ext_fullpath(extension.name)) for extension in self.extensions]
        for output in outputs:
            output.unlink(missing_ok=True)  # an earlier build's, maybe of an older source
        super().run()
        if not all(output.exists() for output in outputs):
            for output in outputs:
                output.unlink(missing_ok=True)


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": AllOrNothing})
