"""DNS name selectors as Cilium writes them (``matchName``, ``matchPattern``): which names one
matches, and how the names a workload was seen to use become the fewest selectors that allow no
more than they justify.

Pure: standard library only. The policies are written with them (``analyser.cilium``), and
Cilium's semantics are evaluated with them (``analyser.ciliumsemantics``).

Matching follows Cilium's ``pkg/fqdn/matchpattern``: names compare without case and without the
final dot; in a pattern, ``*`` stands for any run of the characters of a label (letters, digits,
``-`` and ``_``; never a dot), so ``*.cdn.example`` matches ``a1.cdn.example`` but neither
``cdn.example`` nor ``x.a1.cdn.example``; a pattern of stars alone matches every name, and a
leading ``**.`` one or more whole labels.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

# A name or a pattern as the CRD admits them (``^([-a-zA-Z0-9_]+[.]?)+$``, with ``*`` for a
# pattern), at most 255 characters.
_NAME = re.compile(r"(?:[-a-zA-Z0-9_]+\.?)+")
_PATTERN = re.compile(r"(?:[-a-zA-Z0-9_*]+\.?)+")
MAX_LENGTH = 255
_LABEL_CHARACTERS = "[-a-zA-Z0-9_]"

# More distinct names than this under one parent (``a1.cdn.example`` ... ``a40.cdn.example``)
# become one ``matchPattern: "*.cdn.example"``: the next shard would not be on a list of those seen.
MAX_NAMES_PER_SUFFIX = 10
# A pattern's fixed part keeps at least this many labels: never ``*.com`` or ``*.example``.
MIN_SUFFIX_LABELS = 2


@dataclass(frozen=True, order=True, slots=True)
class FqdnSelector:
    """One ``matchName`` (``pattern`` False) or ``matchPattern`` (``pattern`` True) entry;
    ``folded``: how many names seen a pattern stands for (for its comment)."""

    text: str
    pattern: bool = False
    folded: int = 0

    def __str__(self) -> str:
        return f"{'matchPattern' if self.pattern else 'matchName'}: {self.text}"

    def matches(self, name: str) -> bool:
        """Whether this selector matches the DNS name ``name`` (Cilium's rules)."""
        return _compiled(self.text, self.pattern).fullmatch(_canonical(name)) is not None

    def example(self) -> str:
        """A name it matches: itself, or a pattern with each ``*`` (``**.``) standing for one
        label ``x``."""
        if not self.pattern:
            return _canonical(self.text)
        if re.fullmatch(r"\*+", self.text):
            return "x"
        return re.sub(r"\*+", "x", _canonical(self.text))


def _canonical(name: str) -> str:
    return name.strip().lower().rstrip(".")


@functools.lru_cache(maxsize=4096)
def _compiled(text: str, pattern: bool) -> re.Pattern[str]:
    canonical = _canonical(text)
    if not pattern:
        return re.compile(re.escape(canonical))
    if re.fullmatch(r"\*+", canonical):
        # Every name (Cilium: one or more labels).
        return re.compile(rf"{_LABEL_CHARACTERS}+(?:\.{_LABEL_CHARACTERS}+)*")
    multilevel = ""
    if re.match(r"\*\*+\.", canonical):
        multilevel = rf"{_LABEL_CHARACTERS}+(?:\.{_LABEL_CHARACTERS}+)*\."
        canonical = canonical.split(".", 1)[1]
    parts = (re.escape(piece) for piece in canonical.split("*"))
    return re.compile(multilevel + f"{_LABEL_CHARACTERS}*".join(parts))


def valid_name(text: str) -> bool:
    """Whether ``text`` may be a ``matchName`` (the CRD's pattern and length)."""
    return len(text) <= MAX_LENGTH and _NAME.fullmatch(text) is not None


def valid_pattern(text: str) -> bool:
    """Whether ``text`` may be a ``matchPattern`` (the CRD's pattern and length)."""
    return len(text) <= MAX_LENGTH and _PATTERN.fullmatch(text) is not None


def selectors_for(
    names: Iterable[str], *, max_per_suffix: int = MAX_NAMES_PER_SUFFIX
) -> tuple[FqdnSelector, ...]:
    """The selectors allowing ``names`` (valid DNS names, as the decoder keeps them), sorted: a
    ``matchName`` each, but where more than ``max_per_suffix`` of them are one label in front
    of one suffix of at least :data:`MIN_SUFFIX_LABELS` labels, one ``*.SUFFIX`` pattern for
    those. A pattern is never broader than that: one label, in front of a suffix all those
    names share; a name of any other shape keeps its own ``matchName``."""
    unique = sorted({_canonical(name) for name in names if valid_name(name)})
    under: dict[str, list[str]] = defaultdict(list)
    for name in unique:
        label, _, suffix = name.partition(".")
        if label and suffix.count(".") + 1 >= MIN_SUFFIX_LABELS:
            under[suffix].append(name)
    folded = {suffix: found for suffix, found in under.items() if len(found) > max_per_suffix}
    covered = {name for found in folded.values() for name in found}
    selectors = [FqdnSelector(name) for name in unique if name not in covered]
    selectors += [
        FqdnSelector(f"*.{suffix}", pattern=True, folded=len(found))
        for suffix, found in folded.items()
    ]
    return tuple(sorted(selectors, key=lambda s: (s.text.lstrip("*."), s.pattern, s.text)))
