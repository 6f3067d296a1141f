"""The public surface of the analyser and webhook packages is exactly their ``__all__``, and the
docstrings of the analyser, the collector and the kernel say where every module stands."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest

import analyser
import collector
import kernel
import webhook


@pytest.mark.parametrize("package", [analyser, webhook], ids=lambda p: p.__name__)
def test_all_lists_every_public_name_and_only_those(package: ModuleType) -> None:
    # Every name in __all__ resolves (the analyser's on first use), before anything else is
    # counted: then the package's namespace holds them all.
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    } - {"annotations", "importlib", "TYPE_CHECKING"}
    assert sorted(package.__all__) == sorted(public)
    assert package.__all__ == sorted(package.__all__)


def test_the_analysers_dir_lists_its_exports_before_they_are_imported() -> None:
    """``dir(analyser)`` (what completion and ``help`` show) names every export while none of
    them has been imported yet: the lazy imports hide nothing."""
    code = (
        "import analyser; names = dir(analyser); "
        "print(all(n in names for n in analyser.__all__), "
        "any(n in vars(analyser) for n in analyser.__all__))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", "False"]


def test_the_analyser_imports_its_exports_on_first_use() -> None:
    """``import analyser`` alone imports none of the heavy modules (a reader process pays only
    for what it reads with)."""
    code = (
        "import sys, analyser.reading; "
        "print(sorted(m for m in ('analyser.evaluation', 'analyser.identities', "
        "'analyser.policies', 'yaml') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
    assert analyser.Resolver.__module__ == "analyser.identities"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        analyser.nothing  # noqa: B018


@pytest.mark.parametrize("package", [analyser, collector, kernel], ids=lambda p: p.__name__)
def test_the_package_docstring_places_every_module(package: ModuleType) -> None:
    listed = {
        line.split()[0]
        for line in (package.__doc__ or "").splitlines()
        if line[:4] == " " * 4 and line[4] != " "
    }
    # mypyc's runtime for the compiled packets module (setup.py) is no module of ours.
    modules = {
        m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.endswith("__mypyc")
    }
    assert sorted(listed) == sorted(modules)
