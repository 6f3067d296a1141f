"""Documents: JSON and YAML text → plain values, with work bounded by the size of the text.

The snapshot, ``pod-ips.jsonl``, the ``meta.json`` files and ``bundle.json`` come from the
cluster and the capture pipeline, where a hostile workload may have had a hand in them; reading
them must cost in proportion to their size and fail with one line saying where and why:

- YAML aliases (``*name``, also in merge keys ``<<: *name``) are refused: each one stands for a
  whole node again, so nested aliases make a 128 KB file stand for gigabytes once it is walked as
  a tree (the "billion laughs"). ``kubectl`` never writes them. Where people write YAML by hand
  (policy files ``verify`` and ``diff`` read), a caller may allow them with a budget instead:
  every alias costs the nodes it stands for, all of them expanded, and past the budget (or in
  the node it names: a recursive structure, or nesting past :data:`MAX_DEPTH` once expanded)
  the text is refused, before anything is walked.
- Nesting deeper than :data:`MAX_DEPTH` lists and objects is refused: a Kubernetes object is about
  ten levels deep, and 100,000 nested ``[`` would otherwise end in a ``RecursionError``.
- Whatever else the parsers raise on bad text (a timestamp with month 13, an integer of 5,000
  digits) is the same :class:`DocumentError`, never a traceback.

YAML is scanned and parsed by libyaml when PyYAML has it (fifty times faster than the Python
parser) and composed by PyYAML's Python composer, which is where aliases and depth are checked.
Callers name the file and turn :class:`DocumentError` into their own error
(``SnapshotError``, ``BundleError``).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

# For text this program wrote itself (rendered policies read back), where no budget is needed:
# libyaml's safe loader when PyYAML was built with it (fifty times faster), else the Python one.
RENDERED_TEXT_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Lists and objects nested in one another, at most (a Kubernetes object: about 10; a
# CustomResourceDefinition's schema: about 40).
MAX_DEPTH = 100


class DocumentError(ValueError):
    """Text that is not a JSON or YAML document this tool accepts: the message says why, and the
    line when it is known."""


def _too_deep(line: int | None = None) -> DocumentError:
    where = f"line {line}: " if line is not None else ""
    return DocumentError(f"{where}nested more than {MAX_DEPTH} lists and objects deep")


def check_depth(value: object) -> None:
    """Raise :class:`DocumentError` when ``value`` nests lists and dicts deeper than
    :data:`MAX_DEPTH` (checked without recursion)."""
    if not isinstance(value, dict | list):
        return
    pending: list[tuple[dict[Any, Any] | list[Any], int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise _too_deep()
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


# -- JSON --------------------------------------------------------------------------------------


def _json_error(error: ValueError) -> DocumentError:
    if isinstance(error, json.JSONDecodeError):
        return DocumentError(
            f"not valid JSON: line {error.lineno} column {error.colno}: {error.msg}"
        )
    return DocumentError(f"not valid JSON: {error}")


def json_value(text: str) -> Any:
    """One JSON document; :class:`DocumentError` when it is not JSON or nests too deep."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as error:
        raise _json_error(error) from None
    check_depth(value)
    return value


def json_values(text: str) -> list[Any]:
    """One JSON document, or several one after the other (``kubectl get pods -o json >> f``
    appended to a ``kubectl get svc -o json > f``); raises like :func:`json_value`."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return values
        try:
            value, position = decoder.raw_decode(text, position)
        except RecursionError:
            raise _too_deep() from None
        except ValueError as error:
            raise _json_error(error) from None
        check_depth(value)
        values.append(value)


# -- YAML --------------------------------------------------------------------------------------


class _BoundedComposer(Composer):
    """PyYAML's composer, refusing nesting deeper than :data:`MAX_DEPTH` and aliases, or, with
    an ``alias_nodes`` budget, aliases that stand for more nodes in all (or that nest too deep
    once expanded, or sit in the node they name)."""

    depth = 0

    def __init__(self, alias_nodes: int) -> None:
        Composer.__init__(self)
        self.alias_nodes = alias_nodes  # nodes all the aliases may stand for; 0: no alias
        self.expanded = 0  # nodes the aliases seen so far stand for
        self.open_anchors: set[str] = set()  # anchors of the collections being composed
        self.measured: dict[int, tuple[int, int]] = {}  # id(node) → (nodes, depth), expanded

    def compose_document(self) -> Node | None:
        try:
            return super().compose_document()
        finally:
            self.measured.clear()  # the document's nodes may go: their ids may come again

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[attr-defined]
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            self._spend(str(event.anchor), line)
            return super().compose_node(parent, index)
        if not isinstance(event, SequenceStartEvent | MappingStartEvent):
            return super().compose_node(parent, index)
        if self.depth >= MAX_DEPTH:
            raise _too_deep(line)
        anchor = event.anchor
        self.depth += 1
        if anchor is not None:
            self.open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1
            self.open_anchors.discard(anchor)

    def _spend(self, anchor: str, line: int) -> None:
        """Account for an alias of ``anchor`` at ``line``, or refuse it."""
        if not self.alias_nodes:
            raise DocumentError(
                f"line {line}: a YAML alias (*{anchor}): aliases are not accepted (kubectl "
                "never writes them, and nested ones blow a small file up into gigabytes)"
            )
        if anchor in self.open_anchors:
            raise DocumentError(
                f"line {line}: the YAML alias *{anchor} is inside the node it names: a "
                "structure that contains itself has no end"
            )
        node = self.anchors.get(anchor)
        if node is None:
            return  # the composer says it is undefined
        nodes, depth = self._measure(node)
        self.expanded += nodes
        if self.expanded > self.alias_nodes:
            raise DocumentError(
                f"line {line}: the YAML alias *{anchor}: the aliases stand for more than "
                f"{self.alias_nodes:,} nodes in all, expanded"
            )
        if self.depth + depth > MAX_DEPTH:
            raise _too_deep(line)

    def _measure(self, node: Node) -> tuple[int, int]:
        """How many nodes ``node`` stands for, aliases in it expanded, and how many lists and
        objects deep it goes; each node walked once (without recursion)."""
        measured = self.measured
        pending: list[tuple[Node, bool]] = [(node, False)]
        while pending:
            item, children_done = pending.pop()
            if id(item) in measured:
                continue
            children = _children(item)
            if not children_done:
                pending.append((item, True))
                pending.extend((child, False) for child in children if id(child) not in measured)
                continue
            if not isinstance(item, SequenceNode | MappingNode):
                measured[id(item)] = (1, 0)
                continue
            found = [measured[id(child)] for child in children]
            measured[id(item)] = (
                1 + sum(nodes for nodes, _ in found),
                1 + max((depth for _, depth in found), default=0),
            )
        return measured[id(node)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [child for pair in node.value for child in pair]
    return []


try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml

    class _Loader(_BoundedComposer, Reader, Scanner, Parser, SafeConstructor, Resolver):
        def __init__(self, text: str, alias_nodes: int = 0) -> None:
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            _BoundedComposer.__init__(self, alias_nodes)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

else:

    class _Loader(_BoundedComposer, CParser, SafeConstructor, Resolver):  # type: ignore[no-redef]
        def __init__(self, text: str, alias_nodes: int = 0) -> None:
            CParser.__init__(self, text)
            _BoundedComposer.__init__(self, alias_nodes)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)


def yaml_values(text: str, *, alias_nodes: int = 0) -> list[Any]:
    """The documents of a YAML stream (an empty document is None); :class:`DocumentError` when
    the text is not YAML, nests too deep or holds an alias. With ``alias_nodes``, aliases are
    allowed as long as all of them together stand for at most that many nodes, expanded, and
    none is inside the node it names."""
    loader = _Loader(text, alias_nodes)
    try:
        documents = []
        while loader.check_data():  # type: ignore[no-untyped-call]
            documents.append(loader.get_data())
        return documents
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        raise DocumentError(
            f"not valid YAML: {where}{error.problem or error.context or error}"
        ) from None
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError) as error:
        if isinstance(error, DocumentError):
            raise
        # A scalar the constructor cannot make (a timestamp with month 13, too many digits).
        raise DocumentError(f"not valid YAML: {error}") from None
    finally:
        loader.dispose()
