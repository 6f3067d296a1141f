"""Build hook: compile ``analyser/packets.py`` and ``analyser/orienting.py`` with mypyc when this
machine can.

Everything else about the package is in ``pyproject.toml``. ``analyser/packets.py`` holds the
loop that runs once per captured packet, ``analyser/orienting.py`` the one that runs once per
connection; compiled by mypyc (part of mypy, from the same typed Python source) they read
captures about 2 times faster (``bench/analyse_throughput.py`` prints both). The extensions are
optional: without a C compiler or Python's headers the build warns and the package runs the same
source interpreted, with the same results (``tests/analyser/test_packets.py`` and
``test_orienting.py`` check both). ``NETPOL_SNIFFER_COMPILE=0`` skips compiling (the webhook's
image, which reads no captures, does).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

COMPILED_MODULES = ["analyser/packets.py", "analyser/orienting.py"]


def compiled_extensions() -> list[Extension]:
    if os.environ.get("NETPOL_SNIFFER_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify

    # The build environment has no stubs for the project's dependencies: only the compiled
    # module's own types matter here (``make lint`` type-checks everything strictly).
    extensions: list[Extension] = mypycify(
        ["--ignore-missing-imports", *COMPILED_MODULES],
        opt_level="3",
        # Their shared runtime library, in the package (``analyser/compiled__mypyc…so``): named
        # after the modules' hash, it would land outside any package, where imports miss it.
        group_name="analyser.compiled",
    )
    for extension in extensions:
        extension.optional = True  # no compiler: warn and install the interpreted source
    return extensions


class AllOrNothing(build_ext):
    """mypyc builds an extension per module and one for their shared runtime library: an import
    needs them all, so when one failed to build, none is kept (the sources run instead)."""

    def run(self) -> None:
        outputs = [Path(self.get_ext_fullpath(extension.name)) for extension in self.extensions]
        for output in outputs:
            output.unlink(missing_ok=True)  # an earlier build's, maybe of an older source
        super().run()
        if not all(output.exists() for output in outputs):
            for output in outputs:
                output.unlink(missing_ok=True)


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": AllOrNothing})
