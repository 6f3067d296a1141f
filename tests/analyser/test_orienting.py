"""orienting as compiled by mypyc and as interpreted: the same conversations and flows from the
same captures, whatever they hold. What the orientation decides is in test_flows."""

from __future__ import annotations

import pickle
import random
import socket
import struct
from types import ModuleType
from typing import Any

import pytest

from analyser import orienting
from analyser.flows import (
    ROLE_ACCEPTOR,
    ROLE_CLOSER,
    ROLE_DISOWNER,
    ROLE_OPENER,
    CaptureConversations,
    Endpoint,
    Protocol,
)
from analyser.packets import Counts, Tally, fold_tally
from tests.analyser.compiled_modules import interpreted

IMPLEMENTATIONS = {"imported": orienting, "interpreted": interpreted(orienting)}
_ROLES = (0, ROLE_OPENER, ROLE_ACCEPTOR, ROLE_CLOSER, ROLE_DISOWNER, ROLE_OPENER | ROLE_CLOSER)
_ADDRESSES = ("10.0.0.9", "10.0.0.10", "10.0.1.2", "fd00::1", "fd00::2")


def _captures(seed: int) -> list[CaptureConversations]:
    """Three files of two vantage points (one ring of two files), each a tally of random keys
    folded as reading folds it: both directions or one, any handshake roles, TCP, UDP and SCTP,
    few addresses (so a pair has many conversations), some keys in more than one file."""
    chooser = random.Random(seed)
    keys: list[tuple[int, str, str, int, int]] = []
    for _ in range(300):
        family = chooser.choice((4, 4, 6))
        ips = [ip for ip in _ADDRESSES if (":" in ip) == (family == 6)]
        source, destination = chooser.choice(ips), chooser.choice(ips)
        port = chooser.choice((53, 80, 443, 5432, 8080, 40000))
        other = chooser.randrange(1, 65536)
        protocol = chooser.choice((6, 6, 17, 132))
        ports = (port, other) if chooser.random() < 0.5 else (other, port)
        keys.append((protocol, source, destination, *ports))
    seen = []
    for number, (capture, vantage) in enumerate(
        (("a/0.pcap", "a"), ("a/1.pcap", "a"), ("b/0.pcap", "b"))
    ):
        tally: Tally = {}
        for protocol, source, destination, source_port, destination_port in chooser.sample(
            keys, 200
        ):
            for forward in (True, False) if chooser.random() < 0.7 else (True,):
                ends = (source, destination) if forward else (destination, source)
                sent = (source_port, destination_port)
                raw = b"".join(_packed(ip) for ip in ends) + struct.pack(
                    "!HH", *(sent if forward else sent[::-1])
                )
                first = chooser.uniform(0, 100)
                counts = Counts(first, chooser.randrange(40, 1500), chooser.choice(_ROLES))
                counts.last = first + chooser.uniform(0, 10)
                counts.packets = chooser.randrange(1, 30)
                tally[(protocol, raw)] = counts
        folded = fold_tally(tally, number)
        seen.append(CaptureConversations(capture, vantage, number, folded.entries, folded.pairs))
    return seen


def _packed(ip: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


def _listens(endpoint: Endpoint, protocol: Protocol, at: float) -> bool:
    """A snapshot's answer: some ports listen, at some times."""
    return endpoint.port in (80, 5432) or (endpoint.port == 8080 and at > 50)


def _table(module: ModuleType, seen: list[CaptureConversations]) -> Any:
    table = module.ConversationTable()
    for capture in pickle.loads(pickle.dumps(seen)):  # each table keeps the entries it is given
        table.add(capture)
    return table


@pytest.mark.parametrize("seed", range(5))
def test_compiled_and_interpreted_orient_alike(seed: int) -> None:
    seen = _captures(seed)
    results = []
    for module in IMPLEMENTATIONS.values():
        conversations = _table(module, seen).conversations()
        results.append(
            (
                conversations,
                list(_table(module, seen).oriented(_listens)),
                list(_table(module, seen).oriented(None)),
                list(module.orient(conversations, _listens)),
            )
        )
    imported, interpreted_ = results
    assert imported == interpreted_
    conversations, by_table, without_oracle, by_conversations = imported
    assert by_table == by_conversations  # the table's rows and the conversations agree
    assert len(conversations) > 200
    evidence = {flow.evidence for flow in by_table} | {flow.evidence for flow in without_oracle}
    assert len(evidence) == 4  # every way of orienting was taken
    assert {flow.established for flow in by_table} == {True, False}
    assert any(len(flow.captures) > 1 for flow in by_table)


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_a_table_pickles_and_splits_as_it_merged(implementation: str) -> None:
    """Spilling pickles tables and splits them by pair of addresses: compiled, too."""
    module = IMPLEMENTATIONS[implementation]
    seen = _captures(7)
    whole = _table(module, seen).conversations()
    table = pickle.loads(pickle.dumps(_table(module, seen)))
    parts = table.split(3, lambda pair: len(pair) % 3)
    assert len(table) == 0
    assert sorted(c for part in parts for c in part.conversations()) == whole
