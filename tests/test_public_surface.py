"""The analyser package's public surface is exactly its ``__all__`` (the webhook's is checked in
tests/webhook/test_mutations.py), and its docstring says where every module stands."""

from __future__ import annotations

import pkgutil
from types import ModuleType

import analyser


def test_analyser_all_lists_every_public_name_and_only_those() -> None:
    public = {
        name
        for name, value in vars(analyser).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert sorted(analyser.__all__) == sorted(public)
    assert analyser.__all__ == sorted(analyser.__all__)


def test_the_package_docstring_places_every_module() -> None:
    listed = {
        line.split()[0] for line in (analyser.__doc__ or "").splitlines() if line[:4] == " " * 4
    }
    modules = {m.name for m in pkgutil.iter_modules(analyser.__path__)} - {"errors"}
    assert sorted(listed) == sorted(modules)
