"""Compiled templates kept in a bytecode cache (Jinja's FileSystemBytecodeCache, issue 13): read
back instead of compiled, compiled again when the template or the settings changed, and never a
failure of the render when the cache fails."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jinja2
import pytest

from analyser import rendering


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "page.j2").write_text("one {{ x | q }}\n")
    return folder


def _cached_environment(templates: Path, cache: Path, **settings: bool) -> jinja2.Environment:
    """A fresh environment (no template in memory) like rendering's, with the cache."""
    env = rendering._environment(templates)
    for name, value in settings.items():
        setattr(env, name, value)
    env.bytecode_cache = rendering._BytecodeCache(cache, env)
    return env


def _no_compiling(env: jinja2.Environment) -> None:
    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("compiled, not read from the cache")

    env.compile = refuse  # type: ignore[assignment,method-assign]


def _entries(cache: Path) -> dict[str, int]:
    return {entry.name: entry.stat().st_ino for entry in cache.iterdir()}


def test_a_template_is_compiled_once_then_read(templates: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    first = _cached_environment(templates, cache)
    assert first.get_template("page.j2").render(x="a") == 'one "a"\n'
    written = _entries(cache)
    assert len(written) == 1
    second = _cached_environment(templates, cache)
    _no_compiling(second)
    assert second.get_template("page.j2").render(x="b") == 'one "b"\n'
    assert _entries(cache) == written


def test_an_edited_template_is_compiled_again(templates: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    assert _cached_environment(templates, cache).get_template("page.j2").render(x="a") == (
        'one "a"\n'
    )
    written = _entries(cache)
    (templates / "page.j2").write_text("two {{ x | q }}\n")  # Jinja checks the source's checksum
    assert _cached_environment(templates, cache).get_template("page.j2").render(x="a") == (
        'two "a"\n'
    )
    assert _entries(cache).keys() == written.keys() and _entries(cache) != written  # replaced
    # and the new code is what the next run reads
    again = _cached_environment(templates, cache)
    _no_compiling(again)
    assert again.get_template("page.j2").render(x="a") == 'two "a"\n'


def test_other_settings_or_jinja_do_not_read_each_others_entries(
    templates: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jinja keys entries by the template's path alone: code compiled with other syntax settings
    # (or by another Jinja) would render differently, so it goes by another name.
    (templates / "page.j2").write_text("{% if x %}\nyes\n{% endif %}\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    ours = _cached_environment(templates, cache)
    assert ours.get_template("page.j2").render(x=1) == "yes\n"  # trim_blocks
    other = _cached_environment(templates, cache, trim_blocks=False)
    assert other.get_template("page.j2").render(x=1) == "\nyes\n\n"
    assert len(_entries(cache)) == 2
    key = rendering._compiled_by(rendering._environment(templates))
    monkeypatch.setattr(jinja2, "__version__", "0.0")
    assert rendering._compiled_by(rendering._environment(templates)) != key


def test_a_cache_that_fails_is_only_no_cache(templates: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    env = _cached_environment(templates, cache)
    cache.rmdir()  # gone under the run: Jinja's own cache raises writing its entry
    assert env.get_template("page.j2").render(x="a") == 'one "a"\n'


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:40],
        lambda data: data[:-5],
        lambda data: b"garbage",
        lambda data: data[:2] + b"\xff" * 20 + data[22:],
    ],
    ids=["cut short", "last bytes lost", "not an entry", "checksum damaged"],
)
def test_a_damaged_entry_is_compiled_again(
    templates: Path, tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    _cached_environment(templates, cache).get_template("page.j2")
    (entry,) = cache.iterdir()
    entry.write_bytes(damage(entry.read_bytes()))
    env = _cached_environment(templates, cache)
    assert env.get_template("page.j2").render(x="a") == 'one "a"\n'


def test_use_bytecode_cache_sets_and_clears_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rendering._ENV, "bytecode_cache", None)
    rendering.use_bytecode_cache(tmp_path)
    cache = rendering._ENV.bytecode_cache
    assert isinstance(cache, jinja2.FileSystemBytecodeCache)
    assert cache.directory == str(tmp_path)
    rendering.use_bytecode_cache(None)
    assert rendering._ENV.bytecode_cache is None
