"""The analyser package's public surface is exactly its ``__all__`` (the webhook's is checked in
tests/webhook/test_mutations.py)."""

from __future__ import annotations

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
