"""The modules ``setup.py`` compiles with mypyc, and each one's source run by the interpreter even
where ``make venv`` compiled it: both must give the same results."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from analyser import orienting, packets

COMPILED = (packets, orienting)


def interpreted(module: ModuleType) -> ModuleType:
    """``module``'s source, run by the interpreter under a name of its own."""
    source = Path(module.__file__ or "").with_name(module.__name__.rpartition(".")[2] + ".py")
    name = module.__name__.replace(".", "_") + "_interpreted"
    spec = importlib.util.spec_from_file_location(name, source)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded  # dataclasses look their module up there
    spec.loader.exec_module(loaded)
    return loaded
