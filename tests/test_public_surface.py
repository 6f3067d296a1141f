"""The public surface of the analyser and webhook packages is exactly their ``__all__``, and the
analyser's docstring says where every module stands."""

from __future__ import annotations

import pkgutil
from types import ModuleType

import pytest

import analyser
import webhook


@pytest.mark.parametrize("package", [analyser, webhook], ids=lambda p: p.__name__)
def test_all_lists_every_public_name_and_only_those(package: ModuleType) -> None:
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, ModuleType)
    }
    assert sorted(package.__all__) == sorted(public)
    assert package.__all__ == sorted(package.__all__)


def test_the_package_docstring_places_every_module() -> None:
    listed = {
        line.split()[0] for line in (analyser.__doc__ or "").splitlines() if line[:4] == " " * 4
    }
    modules = {m.name for m in pkgutil.iter_modules(analyser.__path__)} - {"errors"}
    assert sorted(listed) == sorted(modules)
