"""Where the command line keeps what it can rebuild: the compiled report and policy templates.

A run compiles about ten Jinja templates, a fixed cost of tens of milliseconds whatever the
capture; Jinja's bytecode cache keeps the compiled code between runs in
``$XDG_CACHE_HOME/netpol-sniffer/templates`` (``~/.cache/netpol-sniffer/templates`` without it).
That is code the next run executes, so the directory must be this user's alone: the folders made
here are 0700, and a ``netpol-sniffer`` or ``templates`` folder that another user owns, that its
group or others may write to, or that cannot be written, means no cache. No cache is never an
error: the run compiles in memory as it always did, silently, with the same output.
``NETPOL_SNIFFER_TEMPLATE_CACHE=0`` turns the cache off (a run that writes nothing outside its
output folder).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

TEMPLATE_CACHE_VARIABLE = "NETPOL_SNIFFER_TEMPLATE_CACHE"


def template_cache(environ: Mapping[str, str] | None = None) -> Path | None:
    """The private directory to keep compiled templates in, made if missing; None when the
    environment turns it off, names no home, or the directory is not safe or cannot be made."""
    environ = os.environ if environ is None else environ
    if environ.get(TEMPLATE_CACHE_VARIABLE) == "0":
        return None
    # The XDG base directory rules: a relative path in the variable is to be ignored.
    base = environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = environ.get("HOME", "")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    ours = Path(base, "netpol-sniffer")
    directory = ours / "templates"
    try:
        # each with its mode: os.makedirs gives the parents it makes the umask's (Python 3.7+)
        for folder in (Path(base), ours, directory):
            folder.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return None
    if not all(_private(folder) for folder in (ours, directory)):
        return None
    return directory


def _private(folder: Path) -> bool:
    """A directory this user owns and may write to, that no one else may write to."""
    try:
        status = folder.stat()
    except OSError:
        return False
    return (
        stat.S_ISDIR(status.st_mode)
        and status.st_uid == os.geteuid()
        and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        and os.access(folder, os.W_OK | os.X_OK)
    )
