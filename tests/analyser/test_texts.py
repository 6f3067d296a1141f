"""texts: the rules Kubernetes names follow, and inert text (every dangerous character escaped)."""

from __future__ import annotations

import pytest

from analyser.texts import (
    escape_character,
    inert,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_kind,
    is_label_key,
    is_label_value,
)
from tests.analyser.text_payloads import DANGEROUS


@pytest.mark.parametrize("char", DANGEROUS.values(), ids=DANGEROUS.keys())
def test_every_dangerous_character_is_shown_as_its_escape(char: str) -> None:
    text = inert(f"a{char}b")
    assert char not in text
    assert text == f"a{escape_character(char)}b"
    assert text.isprintable() and text.isascii()
    # what Python, YAML's double quotes and a reader all read back as the character
    assert text.encode().decode("unicode_escape") == f"a{char}b"


def test_escapes_are_the_familiar_ones() -> None:
    assert inert("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert inert("\x1b[31mred") == "\\x1b[31mred"
    assert inert("evil\u2028- {}") == "evil\\u2028- {}"
    assert inert("\U000e0041") == "\\U000e0041"


def test_printable_text_comes_back_unchanged() -> None:
    for text in ["frontend-7d9f", "api.example.com", "ä ö ü 日本", "a\\nb", "", "<b>&"]:
        assert inert(text) == text
    assert inert(42) == "42"


@pytest.mark.parametrize(
    "name", ["a", "default", "kube-system", "a1", "1a", "x" * 63], ids=lambda n: n[:12]
)
def test_valid_namespace_names(name: str) -> None:
    assert is_dns1123_label(name) and is_dns1123_subdomain(name)


@pytest.mark.parametrize(
    "name",
    ["", "A", "-a", "a-", "a.b", "a_b", "x" * 64, "a\u2028", "a\n", "é", "a b", "a/b"],
    ids=repr,
)
def test_invalid_namespace_names(name: str) -> None:
    assert not is_dns1123_label(name)


def test_object_names_are_dns_subdomains() -> None:
    assert is_dns1123_subdomain("frontend-7d9f.v2")
    assert is_dns1123_subdomain(".".join(["a" * 63] * 3) + "." + "b" * 61)  # 253
    assert not is_dns1123_subdomain(".".join(["a" * 63] * 4))  # 255
    for bad in ["", "A", "a..b", ".a", "a.", "a_b", "a\u2029b", "a\x1b", "../a"]:
        assert not is_dns1123_subdomain(bad), bad


@pytest.mark.parametrize(
    "key",
    ["app", "app.kubernetes.io/name", "k8s-app", "A_b.C", "example.com/x-Y_z.1", "a" * 63],
)
def test_valid_label_keys(key: str) -> None:
    assert is_label_key(key)


@pytest.mark.parametrize(
    "key",
    ["", "/a", "a/", "a/b/c", "Ex.com/a", "-a", "a-", "a" * 64, "a b", "a\u2028", "a\x85"],
    ids=repr,
)
def test_invalid_label_keys(key: str) -> None:
    assert not is_label_key(key)


def test_label_values() -> None:
    for good in ["", "v1", "A-b_c.d", "x" * 63]:
        assert is_label_value(good), good
    for bad in ["-v", "v-", "a/b", "x" * 64, "a b", "v\u2028", "\u202ev", "<b>"]:
        assert not is_label_value(bad), bad


def test_kinds() -> None:
    for good in ["ReplicaSet", "Deployment", "MyApp2", "My-App"]:
        assert is_kind(good), good
    for bad in ["", "1Pod", "Replica Set", "Pod\u2028", "-Pod", "Pod-", "Rollout/x", "K" * 64]:
        assert not is_kind(bad), bad
