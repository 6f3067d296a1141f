"""Text that comes from input: what a Kubernetes name may be, and how any text is made inert
before it is shown.

Captures come from the pods being analysed and a bundle can be tampered with, so every string
they carry (DNS names, object and file names, labels, owner kinds) is hostile until checked.
Two defences, both here so the snapshot loader, the renderer and the command line share them:

- **Names are checked where they enter** (``analyser.snapshot``): a Kubernetes object name, a
  namespace, a label or an owner's kind that the API server would never have stored is refused
  with the rules below, instead of being carried into an output.
- **Every text is inert where it leaves**: :func:`inert` shows each character that is not
  printable as its escape (``\\n``, ``\\x1b``, ``\\u2028``, ``\\u202e``), so a line separator
  cannot end a YAML comment or start a Markdown row, a terminal escape cannot reach the
  terminal, a bidi override cannot reorder what an admin reads, and the admin sees the attack.
  "Printable" is Python's :meth:`str.isprintable`: every character except the control (Cc),
  format (Cf: bidi controls, zero-width characters), surrogate, private-use and unassigned
  ones and the separators (line, paragraph and spaces other than the ASCII space). The output
  formats add their own escaping on top (``analyser.rendering``).

Pure: standard library only, no I/O.
"""

from __future__ import annotations

import re

# -- Kubernetes names (k8s.io/apimachinery/pkg/util/validation) --------------------------------

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# A kind is a CamelCase identifier; a custom resource's may hold a dash (its lower case must be a
# DNS-1035 label).
_KIND = re.compile(r"[A-Za-z]([-A-Za-z0-9]*[A-Za-z0-9])?")
LABEL_MAX = 63
SUBDOMAIN_MAX = 253


def is_dns1123_label(text: str) -> bool:
    """A namespace name (and a Service or port name): ``[a-z0-9]`` and inner ``-``, ≤ 63."""
    return len(text) <= LABEL_MAX and _DNS1123_LABEL.fullmatch(text) is not None


def is_dns1123_subdomain(text: str) -> bool:
    """The name of most objects (Pods, Deployments, Nodes, NetworkPolicies): DNS-1123 labels
    joined by dots, ≤ 253."""
    return len(text) <= SUBDOMAIN_MAX and _DNS1123_SUBDOMAIN.fullmatch(text) is not None


def is_label_key(text: str) -> bool:
    """A label key: an optional DNS-1123 subdomain prefix and ``/``, then a name of at most 63
    letters, digits, ``-``, ``_`` and ``.`` that starts and ends with a letter or digit."""
    prefix, slash, name = text.rpartition("/")
    if slash and not is_dns1123_subdomain(prefix):
        return False
    return len(name) <= LABEL_MAX and _QUALIFIED_NAME.fullmatch(name) is not None


def is_label_value(text: str) -> bool:
    """A label value: empty, or like a label key's name part."""
    return text == "" or (len(text) <= LABEL_MAX and _QUALIFIED_NAME.fullmatch(text) is not None)


def is_kind(text: str) -> bool:
    """An object kind (``Deployment``, a custom resource's ``MyApp``), ≤ 63."""
    return len(text) <= LABEL_MAX and _KIND.fullmatch(text) is not None


# -- inert text --------------------------------------------------------------------------------

# Escapes that YAML's double-quoted scalars, Python and a reader all understand alike.
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_character(char: str) -> str:
    """One character as its escape: ``\\n``, ``\\x1b``, ``\\u2028``, ``\\U000e0001``."""
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def inert(value: object) -> str:
    """``str(value)`` with every character that is not printable shown as its escape: one line,
    safe in a terminal and in a YAML comment. Printable text comes back unchanged (backslashes
    too: the output formats that give them a meaning escape them)."""
    text = str(value)
    if text.isprintable():  # the common case, in C
        return text
    return "".join(char if char.isprintable() else escape_character(char) for char in text)
