"""JSON and YAML text → values with bounded work: aliases refused, nesting capped, and whatever
the parsers raise on bad text turned into one DocumentError line."""

from __future__ import annotations

import datetime as dt

import pytest

from analyser.documents import (
    MAX_DEPTH,
    DocumentError,
    check_depth,
    json_value,
    json_values,
    yaml_values,
)


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each level a list of ``width`` aliases of the level before, so the
    last stands for ``width ** levels`` leaves in a few hundred bytes."""
    lines = ['l0: &l0 ["lol"]']
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def nested(depth: int, *, opening: str = "[", closing: str = "]") -> str:
    return opening * depth + closing * depth


def test_yaml_documents_load_as_plain_values() -> None:
    text = "a: 1\nb: [x, {c: 2026-01-01T00:00:00Z}]\n---\n---\nkind: List\n"
    assert yaml_values(text) == [
        {"a": 1, "b": ["x", {"c": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}]},
        None,
        {"kind": "List"},
    ]


def test_an_alias_is_refused_with_its_line_before_anything_is_expanded() -> None:
    with pytest.raises(DocumentError, match=r"^line 2: a YAML alias \(\*l0\)"):
        yaml_values(alias_bomb())
    with pytest.raises(DocumentError, match=r"^line 3: a YAML alias \(\*base\)"):
        yaml_values("base: &base {app: web}\npod:\n  <<: *base\n")


def test_an_anchor_without_alias_is_harmless() -> None:
    assert yaml_values("a: &x [1]\n") == [{"a": [1]}]


def test_with_a_budget_aliases_cost_the_nodes_they_stand_for_expanded() -> None:
    """``[1, 2]`` is three nodes: two aliases of it cost six; the billion laughs is refused at
    the alias that passes the budget, its line named."""
    text = "a: &x [1, 2]\nb: *x\nc: {<<: {k: *x}}\n"
    assert yaml_values(text, alias_nodes=6) == [{"a": [1, 2], "b": [1, 2], "c": {"k": [1, 2]}}]
    with pytest.raises(DocumentError, match=r"^line 3: the YAML alias \*x: the aliases stand"):
        yaml_values(text, alias_nodes=5)
    with pytest.raises(DocumentError, match=r"^line 4: the YAML alias \*l2: .* 1,000 nodes"):
        yaml_values(alias_bomb(), alias_nodes=1000)


@pytest.mark.parametrize(
    "text",
    [
        nested(MAX_DEPTH + 1),
        nested(100_000),
        nested(100_000, opening="{a: ", closing="}"),
        "".join(f"{'  ' * level}k:\n" for level in range(MAX_DEPTH + 1)),
    ],
    ids=["flow", "flow-100k", "flow-mapping-100k", "block"],
)
def test_deep_yaml_is_one_error_line(text: str) -> None:
    with pytest.raises(DocumentError) as caught:
        yaml_values(text)
    assert "\n" not in str(caught.value)
    # Past libyaml's own limit (1,000 levels) its scanner stops first.
    assert "nested more than" in str(caught.value) or "nesting depth" in str(caught.value)


def test_yaml_as_deep_as_allowed_loads() -> None:
    check_depth(yaml_values(nested(MAX_DEPTH))[0])  # raises when too deep


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [1\n", "not valid YAML: line 2 column 1: did not find expected ',' or ']'"),
        ("a: 2026-13-45\n", "not valid YAML: month must be in 1..12"),
        ("a: " + "1" * 5000 + "\n", "not valid YAML: Exceeds the limit"),
        ("{[1]: 2}\n", "not valid YAML: line 1 column 2: found unhashable key"),
        ("a: !!python/name:os.system\n", "not valid YAML: line 1 column 4: could not determine"),
    ],
)
def test_bad_yaml_is_one_error_line(text: str, message: str) -> None:
    with pytest.raises(DocumentError) as caught:
        yaml_values(text)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 100_000])
def test_deep_json_is_one_error_line(depth: int) -> None:
    for text in (nested(depth), '{"a": ' * depth + "1" + "}" * depth):
        with pytest.raises(DocumentError, match=f"nested more than {MAX_DEPTH} lists and objects"):
            json_value(text)
    with pytest.raises(DocumentError, match=r"^nested more than"):
        json_values("{}\n\n" + nested(100_000))
    with pytest.raises(DocumentError, match="nested more than"):
        json_values("{}\n\n" + nested(MAX_DEPTH + 1))


def test_json_as_deep_as_allowed_loads() -> None:
    assert json_value(nested(MAX_DEPTH)) is not None
    assert json_values("{}\n[]\n") == [{}, []]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": [1, 2', "not valid JSON: line 1 column 12: Expecting ',' delimiter"),
        ("1" * 5000, "not valid JSON: Exceeds the limit"),
    ],
)
def test_bad_json_is_one_error_line(text: str, message: str) -> None:
    for parse in (json_value, json_values):
        with pytest.raises(DocumentError) as caught:
            parse(text)
        assert str(caught.value).startswith(message)
