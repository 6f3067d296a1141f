"""The compiled templates' cache: where it is, when it is refused, and that analyse uses it
(issue 13). Every test points XDG_CACHE_HOME or HOME at a folder of its own."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cli.caches import TEMPLATE_CACHE_VARIABLE, template_cache
from tests.bundle_builders import make_bundle


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_made_private_under_xdg_cache_home(tmp_path: Path) -> None:
    base = tmp_path / "cache"
    directory = template_cache({"XDG_CACHE_HOME": str(base), "HOME": str(tmp_path / "home")})
    assert directory == base / "netpol-sniffer" / "templates"
    for folder in (base, base / "netpol-sniffer", directory):
        assert _mode(folder) == 0o700, folder
    assert not (tmp_path / "home").exists()


def test_under_home_without_xdg_cache_home(tmp_path: Path) -> None:
    (tmp_path / ".cache").mkdir(mode=0o755)  # an existing ~/.cache keeps its mode
    expected = tmp_path / ".cache" / "netpol-sniffer" / "templates"
    assert template_cache({"HOME": str(tmp_path)}) == expected
    # the XDG rules: a relative path in XDG_CACHE_HOME is ignored, and so is an empty one
    assert template_cache({"HOME": str(tmp_path), "XDG_CACHE_HOME": "relative"}) == expected
    assert template_cache({"HOME": str(tmp_path), "XDG_CACHE_HOME": ""}) == expected
    assert _mode(tmp_path / ".cache") == 0o755
    assert _mode(expected) == 0o700


@pytest.mark.parametrize("environ", [{}, {"HOME": ""}, {"HOME": "relative/home"}])
def test_no_home_is_no_cache(
    environ: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may appear here either
    assert template_cache(environ) is None
    assert list(tmp_path.iterdir()) == []


def test_turned_off_by_the_environment(tmp_path: Path) -> None:
    assert template_cache({"XDG_CACHE_HOME": str(tmp_path), TEMPLATE_CACHE_VARIABLE: "0"}) is None
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_made_is_no_cache(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    assert template_cache({"XDG_CACHE_HOME": str(tmp_path / "file")}) is None
    assert template_cache({"XDG_CACHE_HOME": str(tmp_path / "file" / "below")}) is None
    (tmp_path / "cache" / "netpol-sniffer").mkdir(parents=True)
    (tmp_path / "cache" / "netpol-sniffer" / "templates").write_text("not a folder")
    assert template_cache({"XDG_CACHE_HOME": str(tmp_path / "cache")}) is None


@pytest.mark.parametrize("folder", ["netpol-sniffer", "netpol-sniffer/templates"])
@pytest.mark.parametrize("bits", [0o020, 0o002])
def test_a_folder_others_may_write_to_is_no_cache(tmp_path: Path, folder: str, bits: int) -> None:
    (tmp_path / "netpol-sniffer" / "templates").mkdir(parents=True, mode=0o700)
    (tmp_path / folder).chmod(0o700 | bits)
    assert template_cache({"XDG_CACHE_HOME": str(tmp_path)}) is None
    (tmp_path / folder).chmod(0o755)  # readable by others is fine: the templates are public
    assert template_cache({"XDG_CACHE_HOME": str(tmp_path)}) is not None


def test_a_folder_of_another_user_is_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert template_cache({"XDG_CACHE_HOME": str(tmp_path)}) is not None
    owner = (tmp_path / "netpol-sniffer" / "templates").stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    assert template_cache({"XDG_CACHE_HOME": str(tmp_path)}) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only folder")
def test_a_read_only_home_is_no_cache(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o500)
    try:
        assert template_cache({"HOME": str(home)}) is None
    finally:
        home.chmod(0o700)
    assert list(home.iterdir()) == []


# -- analyse with the cache ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle"))


def _analyse(bundle: Path, out: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "analyse", str(bundle), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **environ},
    )
    assert result.returncode == 0, result.stderr
    return result


def _entries(directory: Path) -> dict[str, tuple[int, int]]:
    """Each cache entry's inode and modification time: Jinja replaces a file it writes."""
    return {
        entry.name: (entry.stat().st_ino, entry.stat().st_mtime_ns) for entry in directory.iterdir()
    }


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_analyse_keeps_compiled_templates_and_reads_them_on_the_next_run(
    bundle: Path, tmp_path: Path
) -> None:
    base = tmp_path / "cache"
    first = _analyse(bundle, tmp_path / "first", XDG_CACHE_HOME=str(base))
    directory = base / "netpol-sniffer" / "templates"
    written = _entries(directory)
    # one entry per template a run uses: policies, Kustomization, graph, report.md and .html, ...
    assert len(written) >= 5
    assert all(_mode(directory / name) == 0o600 for name in written)
    second = _analyse(bundle, tmp_path / "second", XDG_CACHE_HOME=str(base))
    assert _entries(directory) == written  # read, not compiled and written again
    uncached = _analyse(
        bundle,
        tmp_path / "uncached",
        XDG_CACHE_HOME=str(tmp_path / "off"),
        **{TEMPLATE_CACHE_VARIABLE: "0"},
    )
    assert not (tmp_path / "off").exists()
    assert (
        _files(tmp_path / "first") == _files(tmp_path / "second") == _files(tmp_path / "uncached")
    )
    assert first.stdout.replace("first", "X") == uncached.stdout.replace("uncached", "X")
    assert first.stderr == second.stderr == uncached.stderr


def test_analyse_without_a_usable_cache_is_as_before(bundle: Path, tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe"
    (unsafe / "netpol-sniffer" / "templates").mkdir(parents=True)
    (unsafe / "netpol-sniffer").chmod(0o777)
    (tmp_path / "file").write_text("")
    runs = [
        _analyse(bundle, tmp_path / "unsafe-out", XDG_CACHE_HOME=str(unsafe)),
        _analyse(bundle, tmp_path / "file-out", XDG_CACHE_HOME=str(tmp_path / "file")),
        _analyse(bundle, tmp_path / "nohome-out", XDG_CACHE_HOME="", HOME=""),
        _analyse(bundle, tmp_path / "off-out", **{TEMPLATE_CACHE_VARIABLE: "0"}),
    ]
    assert list((unsafe / "netpol-sniffer" / "templates").iterdir()) == []
    assert len({run.stderr for run in runs}) == 1  # not a word about the cache
    outputs = [_files(tmp_path / name) for name in ("unsafe-out", "file-out", "nohome-out")]
    assert all(files == _files(tmp_path / "off-out") for files in outputs)
