"""Fuzzing the parsers that read what untrusted pods and tampered bundles hand the analyser.

Captures, DNS payloads, snapshots, pod IP histories, meta.json files and bundle.json come from
the cluster being analysed, so every byte of them may be hostile. These property tests (Hypothesis)
throw generated and mutated inputs at each parser and require that it only ever ends in one of
the project's own errors (or, for captures, never raises at all: damage is a report), with
results that keep their promises (valid addresses and ports, finite times, names that are text).

The budget is fixed: ``FUZZ_EXAMPLES`` examples per target (default 150, what ``make test`` runs;
``make fuzz`` runs 5,000). Failures print the seed and the shrunk input to reproduce them.
"""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import json
import math
import os
import random
import re
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyser.bundles import parse_manifest
from analyser.identities import Resolver
from analyser.packets import DnsFault, DnsResponse, decode_dns
from analyser.reading import read_captures
from analyser.snapshot import (
    Snapshot,
    load_snapshot,
    parse_capture_meta,
    parse_pod_ip_history,
    parse_snapshot_documents,
)
from kernel.errors import BundleError, SnapshotError
from tests.analyser.packet_builders import (
    FRAMERS,
    TCP_ACK,
    TCP_SYN,
    dns_query,
    dns_response,
    ip_packet,
    write_pcapng,
)
from tests.analyser.packet_builders import write_pcap as write_pcap_file

pytestmark = pytest.mark.fuzz
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the checkout; a failure prints its reproduction
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- captures -----------------------------------------------------------------------------------

ADDRESSES = ["10.0.0.1", "10.0.0.2", "203.0.113.9", "fd00::1", "2001:db8::9", "0.0.0.0"]


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """An IP packet that decodes (TCP, UDP, SCTP, DNS over UDP/TCP), or plain random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(min_size=1, max_size=200))
    version = draw(st.sampled_from([4, 6]))
    family = [a for a in ADDRESSES if (":" in a) == (version == 6)]
    src, dst = draw(st.sampled_from(family)), draw(st.sampled_from(family))
    protocol = draw(st.sampled_from(["tcp", "udp", "sctp"]))
    sport, dport = draw(st.integers(0, 65535)), draw(st.sampled_from([53, 80, 443, 8080, 40000]))
    payload = b""
    if dport == 53 or draw(st.booleans()):
        name = draw(st.sampled_from(["a.example", "x" * 63 + ".example", "b.c.d"]))
        payload = draw(
            st.sampled_from(
                [
                    dns_query(name),
                    dns_response(name, [(name, "A", "203.0.113.9"), (name, "CNAME", "c.example")]),
                    b"",
                ]
            )
        )
        if protocol == "tcp" and payload:
            payload = struct.pack(">H", len(payload)) + payload
    flags = draw(st.sampled_from([TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, 0x11, 0x04]))
    return ip_packet(src, dst, protocol, sport, dport, flags=flags, chunk=1, payload=payload)


@st.composite
def capture_bytes(draw: st.DrawFn) -> bytes:
    """A pcap or pcapng file of such packets in a random link type, then mutated: bytes flipped,
    cut, repeated, inserted; sometimes gzip-compressed (before or after the damage)."""
    linktype = draw(st.sampled_from(sorted(FRAMERS)))
    frames = [
        (draw(st.floats(0, 4e9, allow_nan=False)), FRAMERS[linktype](draw(packets())))
        for _ in range(draw(st.integers(0, 12)))
    ]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "capture"
        if draw(st.booleans()):
            write_pcap_file(
                path,
                frames,
                linktype=linktype,
                big_endian=draw(st.booleans()),
                nano=draw(st.booleans()),
                snaplen=draw(st.sampled_from([65535, 96, 0, 2**32 - 1])),
            )
        else:
            write_pcapng(
                path,
                [(linktype, 6), (1, 9)],
                [(index % 2, at, frame) for index, (at, frame) in enumerate(frames)],
                big_endian=draw(st.booleans()),
            )
        data = bytearray(path.read_bytes())
    if draw(st.booleans()):
        data = bytearray(gzip.compress(bytes(data), mtime=0))
    for _ in range(draw(st.integers(0, 6))):
        mutation = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "word"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if mutation == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif mutation == "cut":
            del data[at:]
        elif mutation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif mutation == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
        else:  # a 32-bit field set to an extreme value: lengths, counts, timestamps
            value = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000]))
            data[at : at + 4] = struct.pack("<I", value)
    return bytes(data)


# What a name the analyser keeps must look like (lower case: names are compared lowered).
_DNS_NAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")


def is_dns_name(text: str) -> bool:
    return len(text) <= 253 and _DNS_NAME.fullmatch(text) is not None


def _check_address(text: str) -> None:
    assert ipaddress.ip_address(text).compressed == text


@FUZZ
@given(st.lists(capture_bytes(), min_size=1, max_size=3))
def test_capture_reading_never_raises_and_keeps_its_promises(files: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        paths = []
        for index, data in enumerate(files):
            path = root / f"pod-{index}" / "capture.pcap0"
            path.parent.mkdir()
            path.write_bytes(data)
            paths.append(path)
        traffic = read_captures(paths, root=root, workers=1)
    assert len(traffic.reports) == len(files)
    assert traffic.counted <= traffic.packets
    for report in traffic.reports:
        assert report.ok or report.reason
    for conversation in traffic.conversations:
        for end in (conversation.a, conversation.b):
            _check_address(end.ip)
            assert 0 <= end.port <= 65535
        assert math.isfinite(conversation.first_seen) and math.isfinite(conversation.last_seen)
        assert conversation.first_seen <= conversation.last_seen
        assert conversation.packets >= 1
    for vantage in traffic.dns.vantages:
        for name in traffic.dns.seen_at(vantage):
            _check_address(name.ip)
            assert is_dns_name(name.name), name


# -- DNS ----------------------------------------------------------------------------------------


@st.composite
def dns_payloads(draw: st.DrawFn) -> bytes:
    """A DNS response (or query) with random names and answers, mutated like the captures."""
    names = st.text(min_size=0, max_size=80)
    question = draw(names)
    answers = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["A", "AAAA", "CNAME"]))
        value = {"A": "203.0.113.5", "AAAA": "2001:db8::5"}.get(kind) or draw(names)
        answers.append((draw(names), kind, value))
    try:
        message = bytearray(
            dns_response(question, answers) if draw(st.booleans()) else dns_query(question)
        )
    except (UnicodeError, ValueError, struct.error):
        message = bytearray(draw(st.binary(max_size=300)))
    for _ in range(draw(st.integers(0, 4))):
        if not message:
            break
        at = draw(st.integers(0, len(message) - 1))
        message[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del message[draw(st.integers(0, len(message))) :]
    return bytes(message)


@FUZZ
@given(dns_payloads(), st.booleans())
def test_dns_decoding_gives_answers_or_a_fault(payload: bytes, over_tcp: bool) -> None:
    if over_tcp:
        payload = struct.pack(">H", len(payload)) + payload
    result = decode_dns(payload, over_tcp=over_tcp)
    if isinstance(result, DnsFault):
        return
    for response in result:
        assert isinstance(response, DnsResponse)
        for owner, address in response.addresses:
            assert is_dns_name(owner), owner
            _check_address(address)
        for alias, target in response.aliases:
            assert is_dns_name(alias) and is_dns_name(target), (alias, target)


# -- snapshots and the bundle's JSON files ------------------------------------------------------

KINDS = ["Pod", "Service", "Node", "Deployment", "ReplicaSet", "EndpointSlice", "Endpoints",
         "CronJob", "Job", "Namespace", "Ingress", "HTTPRoute", "ReferenceGrant",
         "List", "PodList"]  # fmt: skip
KEYS = ["kind", "metadata", "name", "namespace", "uid", "labels", "ownerReferences", "spec",
        "status", "items", "podIP", "podIPs", "ip", "hostNetwork", "containers", "ports",
        "containerPort", "protocol", "selector", "matchLabels", "matchExpressions", "key",
        "operator", "values", "clusterIP", "clusterIPs", "port", "targetPort", "nodeName",
        "addresses", "address", "type", "podCIDR", "podCIDRs", "endpoints", "targetRef",
        "creationTimestamp", "deletionTimestamp", "phase", "template", "controller",
        "addressType", "subsets", "jobTemplate", "startTime", "hostIP", "defaultBackend",
        "service", "rules", "http", "paths", "backend", "backendRefs", "group",
        "number", "from", "to"]  # fmt: skip
WORDS = ["", "10.0.0.1", "fd00::1", "TCP", "UDP", "web", "Exists", "In", "2026-01-01T00:00:00Z",
         "9999-12-31T23:59:59Z", "http", "Deployment", "ReplicaSet", "kube-system",
         "kube-dns"]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=6
        ),
    ),
    max_leaves=40,
)


@st.composite
def kube_objects(draw: st.DrawFn) -> dict[str, Any]:
    obj = draw(st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=6))
    obj["kind"] = draw(st.sampled_from(KINDS))
    if draw(st.integers(0, 3)):
        obj["metadata"] = draw(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["a", "b", "web-1"]) | st.text(max_size=5)},
                optional={
                    "namespace": st.sampled_from(["default", "kube-system"]),
                    "uid": st.sampled_from(["u1", "u2"]),
                    "labels": st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
                    "ownerReferences": JSON_VALUES,
                    "creationTimestamp": SCALARS,
                },
            )
        )
    return obj


@FUZZ
@given(st.lists(st.one_of(kube_objects(), JSON_VALUES), max_size=6))
def test_snapshot_parsing_ends_in_a_snapshot_or_a_snapshot_error(documents: list[object]) -> None:
    try:
        objects = parse_snapshot_documents(
            [{"kind": "List", "items": documents}, *documents], source="fuzz.json"
        )
    except SnapshotError:
        return
    # Whatever passes the checks must be usable: indexing and resolution do not crash.
    resolver = Resolver(Snapshot(objects))
    for address in ("10.0.0.1", "fd00::1", "203.0.113.1"):
        resolver.resolve(address, 1.0e9, port=80)
    resolver.cluster_dns()
    resolver.exposures()


@FUZZ
@given(st.text(max_size=400) | st.binary(max_size=400).map(lambda b: b.decode("latin-1")))
def test_snapshot_files_of_any_text_end_in_a_snapshot_or_a_snapshot_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for suffix in (".json", ".yaml"):
            path = Path(directory) / f"snapshot{suffix}"
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            with contextlib.suppress(SnapshotError):
                load_snapshot(path)


@FUZZ
@given(st.lists(JSON_VALUES | kube_objects(), max_size=5), st.integers(0, 2**31))
def test_pod_ip_history_and_meta_json_end_in_data_or_a_snapshot_error(
    records: list[object], seed: int
) -> None:
    lines = [json.dumps(record) for record in records]
    random.Random(seed).shuffle(lines)
    with contextlib.suppress(SnapshotError):
        parse_pod_ip_history(lines, source="pod-ips.jsonl")
    for record in records:
        with contextlib.suppress(SnapshotError):
            parse_capture_meta(record, source="meta.json")


@FUZZ
@given(JSON_VALUES | st.fixed_dictionaries({"format_version": SCALARS}, optional={
    "producer": SCALARS, "window": JSON_VALUES, "captures": JSON_VALUES}))  # fmt: skip
def test_bundle_json_ends_in_a_manifest_or_a_bundle_error(document: object) -> None:
    with contextlib.suppress(BundleError):
        parse_manifest(json.dumps(document), source="bundle.json")
