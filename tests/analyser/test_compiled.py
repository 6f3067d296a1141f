"""The modules compiled by mypyc (``setup.py``) are built from their current source."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.analyser.compiled_modules import COMPILED


@pytest.mark.parametrize("module", COMPILED, ids=lambda module: module.__name__)
def test_a_compiled_module_is_not_older_than_its_source(module: ModuleType) -> None:
    """Python imports a compiled module before its source: a stale build would run old code.
    ``make venv`` compiles again whenever a source changes."""
    if not str(module.__file__).endswith(".so"):
        pytest.skip(f"{module.__name__} is not compiled here")
    compiled = Path(str(module.__file__))
    source = compiled.with_name(module.__name__.rpartition(".")[2] + ".py")
    assert compiled.stat().st_mtime >= source.stat().st_mtime, (
        f"{compiled.name} is older than {source.name}: run `make venv` to compile it again"
    )
