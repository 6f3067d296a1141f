"""reading: files → Traffic, damaged files reported without stopping the run, the same result
for any number of workers, and a real ``tcpdump -i any`` capture (root)."""

from __future__ import annotations

import errno
import itertools
import os
import pickle
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from analyser import dns, reading, sources, spilling
from analyser.flows import Endpoint, Evidence, FlowTable, Protocol
from analyser.orienting import orient
from analyser.reading import Orientation, read_captures
from analyser.spilling import part_count
from kernel.bundles import find_captures
from kernel.errors import CaptureError
from tests.analyser.packet_builders import (
    CLIENT,
    DNS_SERVER,
    EXTERNAL,
    FRAMERS,
    PEER,
    TCP_ACK,
    TCP_SYN,
    dns_response,
    gzip_file,
    ip_packet,
    two_pods_frames,
    write_pcap,
    write_pcapng,
)
from webhook.capture import CaptureOptions, tcpdump_argv

DATA = Path(__file__).parent.parent / "data"
# two-pods.pcap itself is left out: its gzip copy has the same ring name (one vantage point),
# so the two would be summed like the files of one tcpdump ring.
FIXTURES = ["garbage.pcap", "truncated.pcap", "two-interfaces.pcapng", "two-pods.pcap.gz"]


def test_fixtures_end_to_end() -> None:
    traffic = read_captures([DATA / name for name in FIXTURES], root=DATA, workers=1)
    assert [(report.path, report.error, report.packets) for report in traffic.reports] == [
        ("garbage.pcap", "MalformedCapture", 0),
        ("truncated.pcap", "TruncatedCapture", 7),
        ("two-interfaces.pcapng", None, 2),
        ("two-pods.pcap.gz", None, 8),
    ]
    assert traffic.packets == 17
    assert traffic.skipped == {"not_ip": 1}  # the ARP frame
    flows = orient(traffic.conversations, None)
    summary = [(f.protocol, str(f.client), str(f.server), f.evidence, f.packets) for f in flows]
    assert summary == [
        (Protocol.TCP, f"{CLIENT}:40002", f"{EXTERNAL}:443", Evidence.HANDSHAKE, 4),
        (Protocol.TCP, f"{CLIENT}:40010", f"{PEER}:8080", Evidence.HANDSHAKE, 2),
        (Protocol.UDP, f"{CLIENT}:40001", f"{DNS_SERVER}:53", Evidence.HEURISTIC, 2),
        (Protocol.UDP, f"{CLIENT}:40003", f"{PEER}:8125", Evidence.ONE_WAY, 1),
    ]
    # Seen by two files (the truncated copy lost only the ARP frame), counted once.
    assert flows[0].captures == {"truncated.pcap", "two-pods.pcap.gz"}
    assert flows[1].first_seen == pytest.approx(1_700_000_001.0)
    assert flows[1].last_seen == pytest.approx(1_700_000_001.5)
    names = ("api.example.com", "edge.example.net")
    assert traffic.dns.names_for_flow(flows[0]) == names
    answers = traffic.dns.seen_at("two-pods.pcap")  # the ring of two-pods.pcap.gz
    assert answers.names_for("2001:db8::7", at=1_700_000_000.001) == names


def test_a_flow_takes_only_names_sent_to_its_client_from_port_53(tmp_path: Path) -> None:
    """Answers sent to the client from port 53 name its flow; an answer sent to another address,
    or sent towards port 53 (a client cannot answer itself), names nothing."""

    def answer(name: str) -> bytes:
        return dns_response(name, [(name, "A", EXTERNAL)])

    packets = [
        ip_packet(DNS_SERVER, CLIENT, "udp", 53, 40001, payload=answer("asked.example")),
        ip_packet(DNS_SERVER, PEER, "udp", 53, 40001, payload=answer("peer.example")),
        ip_packet(CLIENT, DNS_SERVER, "udp", 40001, 53, payload=answer("upside.example")),
        ip_packet(CLIENT, EXTERNAL, "tcp", 40002, 443, flags=TCP_SYN),
        ip_packet(PEER, EXTERNAL, "tcp", 40003, 443, flags=TCP_SYN),
    ]
    frames = [(1_000.0 + index, packet) for index, packet in enumerate(packets)]
    path = write_pcap(tmp_path / "node.pcap", frames, linktype=101)
    traffic = read_captures([path], root=tmp_path, workers=1)
    flows = {f.client.ip: f for f in orient(traffic.conversations, None) if f.server.port == 443}
    assert traffic.dns.names_for_flow(flows[CLIENT]) == ("asked.example",)
    assert traffic.dns.names_for_flow(flows[PEER]) == ("peer.example",)


def test_answers_past_max_names_are_left_out_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A capture of forged answers, each a new name, does not grow the reading without bound: a
    vantage point's table keeps MAX_NAMES names (in each file, then over its ring's files), the
    rest are counted per file, the same for any number of workers."""
    monkeypatch.setattr(dns, "MAX_NAMES", 10)

    def answers(first: int) -> list[tuple[float, bytes]]:
        names = [f"n{index}.example" for index in range(first, first + 8)]
        return [
            (1_000.0 + index, ip_packet(DNS_SERVER, CLIENT, "udp", 53, 40001, payload=answer))
            for index, answer in enumerate(
                dns_response(name, [(name, "A", f"192.0.2.{first + n}")])
                for n, name in enumerate(names)
            )
        ]

    ring = _folder(tmp_path / "pod")
    paths = [
        write_pcap(ring / f"capture.pcap{number}", answers(number * 8), linktype=101)
        for number in (0, 1)
    ]
    for workers in (1, 2):
        traffic = read_captures(paths, root=tmp_path, workers=workers)
        # each answer is a lookup and a name: the first file keeps 5 answers' and leaves 6 names
        # out, the second likewise, and the ring's table, full with the first's, all of its 10
        assert traffic.dns_left_out == {"pod/capture.pcap0": 6, "pod/capture.pcap1": 6 + 10}
        assert traffic.dns_faults == {}
        (vantage,) = traffic.dns.vantages
        table = traffic.dns.seen_at(vantage)
        assert [entry.ip for entry in table] == [f"192.0.2.{n}" for n in range(5)]


def _tcp_dns(seq: int, payload: bytes, *, flags: int = TCP_ACK, sport: int = 53) -> bytes:
    return ip_packet(
        "10.0.0.53", "10.0.0.1", "tcp", sport, 41000, flags=flags, payload=payload, seq=seq
    )


def test_dns_over_tcp_in_a_capture(tmp_path: Path) -> None:
    answer = dns_response("db.example", [("db.example", "A", "192.0.2.44")])
    framed = len(answer).to_bytes(2, "big") + answer
    # The second segment starts a message the capture ends in: truncated.
    frames = [(5.0, _tcp_dns(100, framed)), (6.0, _tcp_dns(100 + len(framed), b"\x00"))]
    path = write_pcap(tmp_path / "tcp-dns.pcap", frames, linktype=101)
    traffic = read_captures([path], root=tmp_path, workers=1)
    assert traffic.dns.seen_at("tcp-dns.pcap").names_for("192.0.2.44") == ("db.example",)
    assert traffic.dns_faults == {"truncated": 1}


def test_a_symlinked_capture_keeps_its_name_in_the_bundle(tmp_path: Path) -> None:
    """A bundle may link big captures kept elsewhere: the link's place names the file."""
    (tmp_path / "store").mkdir()
    elsewhere = write_pcap(tmp_path / "store" / "big.pcap", two_pods_frames(), linktype=1)
    bundle = tmp_path / "bundle"
    link = bundle / "captures" / "shop" / "cart-1" / "capture.pcap"
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere)
    traffic = read_captures([link], root=bundle, workers=1)
    assert [report.path for report in traffic.reports] == ["captures/shop/cart-1/capture.pcap"]
    assert {c for conversation in traffic.conversations for c in conversation.captures} == {
        "captures/shop/cart-1/capture.pcap"
    }


def _long_tcp_answer() -> bytes:
    """A length-prefixed answer of 671 bytes (40 addresses): more than one segment under
    ``-s 512``."""
    records = [("big.example", "A", f"192.0.2.{n}") for n in range(1, 41)]
    answer = dns_response("big.example", records)
    return len(answer).to_bytes(2, "big") + answer


def _read_segments(
    tmp_path: Path, pieces: list[tuple[int, bytes]], *, syn: int | None = None, snap: int = 0
) -> reading.Traffic:
    """Segments (sequence number, payload) captured in this order, after an optional SYN+ACK,
    cut to ``snap`` bytes when given."""
    frames = [] if syn is None else [(1.0, _tcp_dns(syn, b"", flags=TCP_SYN | TCP_ACK))]
    frames += [(2.0 + i, _tcp_dns(seq, piece)) for i, (seq, piece) in enumerate(pieces)]
    if snap:
        frames = [(at, frame[:snap]) for at, frame in frames]
    path = write_pcap(tmp_path / "split.pcap", frames, linktype=101)
    return read_captures([path], root=tmp_path, workers=1)


def _split(message: bytes, start: int, *cuts: int) -> list[tuple[int, bytes]]:
    bounds = [0, *cuts, len(message)]
    return [(start + a, message[a:b]) for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(
    ("order", "syn"),
    [
        ([0, 1], None),  # two segments
        ([0, 1, 2], None),  # three
        ([0, 2, 1], None),  # the last before the middle
        ([1, 0, 2], 999),  # the first after the second: the SYN+ACK says where data starts
        ([0, 0, 1, 2, 1], None),  # sent again
    ],
)
def test_dns_over_tcp_split_across_segments_is_reassembled(
    tmp_path: Path, order: list[int], syn: int | None
) -> None:
    message = _long_tcp_answer()
    pieces = _split(message, 1000, 300) if max(order) == 1 else _split(message, 1000, 200, 450)
    traffic = _read_segments(tmp_path, [pieces[i] for i in order], syn=syn)
    answers = traffic.dns.seen_at("split.pcap")
    assert answers.names_for("192.0.2.40") == ("big.example",)
    assert len(answers) == 40
    assert traffic.dns_faults == {}


def test_dns_over_tcp_with_a_segment_missing_is_counted(tmp_path: Path) -> None:
    message = _long_tcp_answer()
    first, _, last = _split(message, 1000, 200, 450)
    traffic = _read_segments(tmp_path, [first, last])
    assert len(traffic.dns.seen_at("split.pcap")) == 0
    assert traffic.dns_faults == {"gap": 1}


def test_dns_over_tcp_cut_by_the_snap_length_is_truncated(tmp_path: Path) -> None:
    message = _long_tcp_answer()
    # 512 bytes captured of each: the first segment loses its end, which ends the reassembly.
    traffic = _read_segments(tmp_path, _split(message, 1000, 600), snap=512)
    assert len(traffic.dns.seen_at("split.pcap")) == 0
    assert traffic.dns_faults["truncated"] >= 1


@pytest.mark.parametrize("limit", [1, 4096])
def test_repeated_dns_answers_keep_their_times_and_faults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """Each distinct answer is decoded once (with ``limit`` distinct ones pending at most): the
    names keep the first and last time any copy was seen, every damaged copy is a fault."""
    monkeypatch.setattr(reading._DnsAnswers, "LIMIT", limit)
    frames = []
    for index, at in enumerate([7.0, 3.0, 9.0, 5.0]):  # out of order, other IDs
        answer = dns_response("a.example", [("a.example", "A", "192.0.2.1")], ident=index)
        frames.append((at, ip_packet("10.0.0.53", "10.0.0.1", "udp", 53, 41000, payload=answer)))
    other = dns_response("b.example", [("b.example", "A", "192.0.2.2")])
    frames.append((4.0, ip_packet("10.0.0.53", "10.0.0.1", "udp", 53, 41000, payload=other)))
    for index, at in enumerate([1.0, 2.0, 8.0]):
        answer = dns_response("c.example", [("c.example", "A", "192.0.2.3")], ident=index)
        cut = ip_packet("10.0.0.53", "10.0.0.1", "udp", 53, 41001, payload=answer[:-3])
        frames.append((at, cut))
    path = write_pcap(tmp_path / "dns.pcap", frames, linktype=101)
    traffic = read_captures([path], root=tmp_path, workers=1)
    answers = traffic.dns.seen_at("dns.pcap")
    assert [(n.ip, n.name, n.first_seen, n.last_seen) for n in answers] == [
        ("192.0.2.1", "a.example", 3.0, 9.0),
        ("192.0.2.2", "b.example", 4.0, 4.0),
    ]
    assert traffic.dns_faults == {"truncated": 3}


def test_answers_with_invalid_names_count_as_bad_name_and_keep_the_rest(tmp_path: Path) -> None:
    records = [("a.example", "A", "192.0.2.1"), ("a\u2028b.example", "A", "192.0.2.2")]
    frames = [
        (
            at,
            ip_packet(
                "10.0.0.53",
                "10.0.0.1",
                "udp",
                53,
                41000,
                payload=dns_response("a.example", records, ident=index),
            ),
        )
        for index, at in enumerate([3.0, 9.0])
    ]
    path = write_pcap(tmp_path / "dns.pcap", frames, linktype=101)
    traffic = read_captures([path], root=tmp_path, workers=1)
    answers = traffic.dns.seen_at("dns.pcap")
    assert [(n.ip, n.name, n.first_seen, n.last_seen) for n in answers] == [
        ("192.0.2.1", "a.example", 3.0, 9.0)
    ]
    assert traffic.dns_faults == {"bad_name": 2}


def _random_captures(directory: Path, count: int) -> list[Path]:
    """Files of every link type with overlapping random traffic, pcap, pcapng and gzip."""
    rng = random.Random(1)
    paths = []
    hosts = [f"10.2.0.{index}" for index in range(1, 6)] + ["fd00::a", "fd00::b"]
    for index in range(count):
        linktype = sorted(FRAMERS)[index % len(FRAMERS)]
        frames = []
        for number in range(300):
            v6 = rng.random() < 0.3
            src, dst = rng.sample(hosts[5:] if v6 else hosts[:5], 2)
            protocol = rng.choice(["tcp", "udp", "sctp"])
            packet = ip_packet(
                src,
                dst,
                protocol,
                rng.choice([80, 53, 5432, 40000 + rng.randrange(5)]),
                rng.choice([80, 53, 5432, 40000 + rng.randrange(5)]),
                flags=rng.choice([TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK]),
                chunk=rng.choice([0, 1, 2]),
            )
            frames.append((1000.0 + number * 0.01 + index, FRAMERS[linktype](packet)))
        pod = directory / f"pod{index}"
        pod.mkdir()
        if index % 3 == 1:
            records = [(0, timestamp, frame) for timestamp, frame in frames]
            path = write_pcapng(pod / "capture.pcapng", [(linktype, 6)], records)
        else:
            path = write_pcap(pod / "capture.pcap0", frames, linktype=linktype)
            if index % 3 == 2:
                path = gzip_file(path, pod / "capture.pcap0.gz")
        paths.append(path)
    return paths


def test_parallel_and_serial_reads_agree(tmp_path: Path) -> None:
    paths = _random_captures(tmp_path, 6)
    progress: list[int] = []
    serial = read_captures(paths, root=tmp_path, workers=1, on_progress=progress.append)
    parallel = read_captures(paths, root=tmp_path, workers=2)
    assert serial.conversations == parallel.conversations
    assert serial.dns.vantages == parallel.dns.vantages
    for vantage in serial.dns.vantages:
        assert list(serial.dns.seen_at(vantage)) == list(parallel.dns.seen_at(vantage))
    assert serial.reports == parallel.reports
    assert (serial.packets, serial.counted, serial.skipped) == (
        parallel.packets,
        parallel.counted,
        parallel.skipped,
    )
    assert serial.packets == 1800
    assert len(serial.conversations) > 20
    assert sum(progress) == sum(path.stat().st_size for path in paths)
    assert orient(serial.conversations, None) == orient(parallel.conversations, None)


def test_reading_with_an_orientation_gives_the_flows_of_its_conversations(
    tmp_path: Path,
) -> None:
    # The flows are made as the conversations leave the merged table (a day's millions never
    # exist twice): the same flows, in the same order, with one worker or several.
    paths = _random_captures(tmp_path, 6)
    listens = {Endpoint("10.2.0.1", 40001), Endpoint("10.2.0.2", 40002)}

    def oracle(endpoint: Endpoint, *_: object) -> bool:
        return endpoint in listens

    read = read_captures(paths, root=tmp_path, workers=1)
    expected = tuple(orient(read.conversations, oracle))
    for workers in (1, 2):
        oriented = read_captures(
            paths, root=tmp_path, workers=workers, orientation=Orientation(oracle)
        )
        assert (oriented.flows, oriented.conversations) == (expected, ())
        assert oriented.reports == read.reports and oriented.packets == read.packets
    assert len(expected) > 20
    assert Evidence.KNOWN_LISTENER in {flow.evidence for flow in expected}


class _Holding:
    """A vantage point holding some addresses."""

    def __init__(self, *ips: str) -> None:
        self.ips = set(ips)

    def __str__(self) -> str:
        return "pod " + ",".join(sorted(self.ips))

    def holds(self, ip: str, first: float, last: float) -> bool:
        return ip in self.ips

    def steady(self, ip: str, at: float) -> bool:
        return True


def test_foreign_conversations_are_dropped_the_same_for_any_number_of_workers(
    tmp_path: Path,
) -> None:
    paths = _random_captures(tmp_path, 6)
    placed = {
        "pod0/capture.pcap0": _Holding("10.2.0.1"),
        "pod1/capture.pcapng": _Holding("fd00::a"),
    }
    serial = read_captures(paths, root=tmp_path, workers=1, vantages=placed)
    parallel = read_captures(paths, root=tmp_path, workers=2, vantages=placed)
    assert serial.conversations == parallel.conversations
    assert serial.foreign == parallel.foreign
    assert set(serial.foreign) == set(placed)
    for conversation in serial.conversations:
        for capture, vantage in placed.items():
            if capture in conversation.captures:
                assert vantage.ips & {conversation.a.ip, conversation.b.ip}
    everything = read_captures(paths, root=tmp_path, workers=1)
    assert len(everything.conversations) - len(serial.conversations) <= sum(serial.foreign.values())
    assert serial.dns.vantages == parallel.dns.vantages
    assert "pod 10.2.0.1" in serial.dns.vantages  # the placed file's answers are its pod's


def test_no_files_give_empty_traffic(tmp_path: Path) -> None:
    traffic = read_captures([], root=tmp_path)
    assert (traffic.conversations, traffic.reports, traffic.packets) == ((), (), 0)


def _free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.root
@pytest.mark.parametrize(("link", "linktype"), [(None, 276), ("LINUX_SLL", 113)])
def test_real_tcpdump_any_on_loopback(tmp_path: Path, link: str | None, linktype: int) -> None:
    """The sidecar's own tcpdump command line, on the host's loopback: Linux cooked v2 (what it
    writes by default) or v1 (``-y LINUX_SLL``, what older libpcap writes), ring file names, and
    flows with the right direction."""
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump is not installed (make test installs it)")
    argv = tcpdump_argv(CaptureOptions(directory=str(tmp_path), rotate_files=3))
    if link is not None:
        argv[1:1] = ["-y", link]
    tcp_port, udp_port = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
    # Only our own ports: the machine's other traffic is none of this test's business.
    argv[-1] = f"({argv[-1]}) and (port {tcp_port} or port {udp_port})"
    tcpdump = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        assert tcpdump.stderr is not None
        greeting = [tcpdump.stderr.readline() for _ in range(2)]
        assert any("listening on" in line for line in greeting), greeting
        time.sleep(0.5)
        with socket.socket() as server:
            server.bind(("127.0.0.1", tcp_port))
            server.listen()
            accepted = threading.Thread(target=lambda: server.accept()[0].close())
            accepted.start()
            with socket.create_connection(("127.0.0.1", tcp_port)) as client:
                client_port = client.getsockname()[1]
                client.sendall(b"hello")
            accepted.join(timeout=5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"ping", ("127.0.0.1", udp_port))
            udp_client_port = sender.getsockname()[1]
        time.sleep(1)
    finally:
        tcpdump.terminate()
        tcpdump.wait(timeout=10)
    paths = find_captures(tmp_path)
    assert [path.name for path in paths] == ["capture.pcap0"]
    assert {record[1] for record in sources.records(paths[0])} == {linktype}
    traffic = read_captures(paths, root=tmp_path, workers=1)
    assert traffic.reports[0].ok, traffic.reports[0]
    udp_server = Endpoint("127.0.0.1", udp_port)
    flows = orient(traffic.conversations, lambda endpoint, *_: endpoint == udp_server)
    found = {(flow.protocol, str(flow.client), str(flow.server), flow.evidence) for flow in flows}
    assert found == {
        (Protocol.TCP, f"127.0.0.1:{client_port}", f"127.0.0.1:{tcp_port}", Evidence.HANDSHAKE),
        (Protocol.UDP, f"127.0.0.1:{udp_client_port}", str(udp_server), Evidence.KNOWN_LISTENER),
    }


def test_damaged_bytes_never_crash_the_reading(tmp_path: Path) -> None:
    """Random damage to real captures (flipped bytes, cuts): every file is read or reported."""
    rng = random.Random(5)
    originals = [
        (DATA / name).read_bytes()
        for name in ("two-pods.pcap", "two-interfaces.pcapng", "tcpdump-any-loopback.pcap")
    ]
    paths = []
    for index in range(150):
        body = bytearray(rng.choice(originals))
        for _ in range(rng.randrange(1, 8)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        if rng.random() < 0.3:
            del body[rng.randrange(len(body)) :]
        path = tmp_path / f"damaged{index}.pcap"
        path.write_bytes(bytes(body))
        paths.append(path)
    traffic = read_captures(paths, root=tmp_path, workers=1)
    assert len(traffic.reports) == 150
    assert all(
        report.error in (None, "TruncatedCapture", "MalformedCapture") for report in traffic.reports
    )
    assert traffic.packets == sum(report.packets for report in traffic.reports)
    assert traffic.counted + sum(traffic.skipped.values()) == traffic.packets
    orient(traffic.conversations, None)


def test_progress_in_process_comes_as_the_file_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CHUNK_SIZE", 256)
    paths = [DATA / "two-pods.pcap", DATA / "truncated.pcap", DATA / "garbage.pcap"]
    progress: list[int] = []
    read_captures(paths, root=DATA, workers=1, on_progress=progress.append)
    assert len(progress) > len(paths)
    assert sum(progress) == sum(path.stat().st_size for path in paths)


class _ReversedMap:
    """A CaptureMap that runs the tasks last to first (as workers elsewhere finish in any order)
    and hands the results back in the tasks' order, as the seam asks; it records the tasks."""

    def __init__(self) -> None:
        self.tasks: list[reading.CaptureTask] = []

    def map(
        self,
        function: Callable[[reading.CaptureTask], reading.Result],
        tasks: Iterable[reading.CaptureTask],
        /,
    ) -> Iterator[reading.Result]:
        self.tasks = list(tasks)
        results = [function(task) for task in reversed(self.tasks)]
        return iter(results[::-1])


def test_a_capture_map_reads_what_workers_read_and_gets_self_contained_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _random_captures(tmp_path, 4)
    serial = read_captures(paths, root=tmp_path, workers=1)
    elsewhere = _ReversedMap()
    progress: list[int] = []
    monkeypatch.chdir(tmp_path / "..")  # relative paths in, absolute paths out
    relative = [path.relative_to(Path.cwd()) for path in paths]
    mapped = read_captures(
        relative, root=tmp_path, capture_map=elsewhere, on_progress=progress.append
    )
    assert mapped.conversations == serial.conversations
    assert mapped.reports == serial.reports
    assert mapped.dns.vantages == serial.dns.vantages
    for vantage in serial.dns.vantages:
        assert list(mapped.dns.seen_at(vantage)) == list(serial.dns.seen_at(vantage))
    assert (mapped.packets, mapped.counted, mapped.skipped) == (
        serial.packets,
        serial.counted,
        serial.skipped,
    )
    assert [task.path for task in elsewhere.tasks] == paths
    assert all(task.path.is_absolute() for task in elsewhere.tasks)
    assert [task.name for task in elsewhere.tasks] == [r.path for r in serial.reports]
    assert sum(progress) == sum(path.stat().st_size for path in paths)


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _temporary_folder(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``path``, made $TMPDIR for the test (tempfile reads it again)."""
    monkeypatch.setenv("TMPDIR", str(_folder(path)))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return path


def test_conversations_merged_in_parts_on_disk_are_the_ones_merged_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past spill_bytes of captures, the conversations are merged one part at a time
    # (analyser.spilling): the same conversations and flows, the same order; the parts' folder
    # goes when the reading is done.
    paths = _random_captures(_folder(tmp_path / "captures"), 6)
    spill = _temporary_folder(tmp_path / "tmp", monkeypatch)
    listens = {Endpoint("10.2.0.1", 40001)}

    def oracle(endpoint: Endpoint, *_: object) -> bool:
        return endpoint in listens

    total = sum(path.stat().st_size for path in paths)
    steps: list[str] = []
    for workers in (1, 2):
        whole = read_captures(paths, root=tmp_path, workers=workers, spill_bytes=0)
        parts = read_captures(paths, root=tmp_path, workers=workers, spill_bytes=total // 5)
        assert parts.conversations == whole.conversations
        assert len(whole.conversations) > 20
        oriented = read_captures(
            paths,
            root=tmp_path,
            workers=workers,
            orientation=Orientation(oracle),
            spill_bytes=total // 5,
            on_step=steps.append,
        )
        assert oriented.flows == orient(whole.conversations, oracle)
        assert (oriented.reports, oriented.packets) == (whole.reports, whole.packets)
        # the flows' columns are on disk (a file without a name), read back as they are asked for,
        # but for groups of one or two flows
        assert isinstance(oriented.flows, FlowTable)
        _assert_columns_on_disk(oriented.flows)
    parts_made = part_count(total, total // 5)
    assert parts_made in (20, 21)  # each a quarter of spill_bytes
    assert steps[0].startswith(f"orienting the conversations in {parts_made} parts (")
    assert list(spill.iterdir()) == []


def _assert_columns_on_disk(flows: FlowTable) -> None:
    """The columns of ``flows``' groups of more than two flows are on disk, the others' not."""
    groups = flows.groups
    assert any(len(group) > 2 for group in groups)
    for group in groups:
        assert isinstance(group.columns, bytes) == (len(group) <= 2)


def test_conversations_past_spill_entries_move_to_disk_with_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Captures of very short connections hold far more conversations a byte than a day's: past
    # spill_entries, the table in memory is split into parts on disk and the rest of the files
    # follow it there
    paths = _random_captures(_folder(tmp_path / "captures"), 6)
    spill = _temporary_folder(tmp_path / "tmp", monkeypatch)
    whole = read_captures(paths, root=tmp_path, workers=1, spill_bytes=0)
    assert len(whole.conversations) > 20
    steps: list[str] = []
    moved = read_captures(paths, root=tmp_path, workers=1, spill_entries=10, on_step=steps.append)
    assert moved.conversations == whole.conversations
    oriented = read_captures(
        paths, root=tmp_path, workers=2, orientation=Orientation(None), spill_entries=10
    )
    assert oriented.flows == orient(whole.conversations, None)
    assert isinstance(oriented.flows, FlowTable)
    _assert_columns_on_disk(oriented.flows)
    (step,) = steps
    assert re.match(r"sorting the conversations in \d+ parts \(", step), step
    assert list(spill.iterdir()) == []
    # after the last file, nothing is moved: no file is left to add
    alone: list[str] = []
    read_captures(paths[:1], root=tmp_path, workers=1, spill_entries=1, on_step=alone.append)
    assert re.match(r"sorting [\d,]+ conversations$", alone[0]), alone


def test_a_scan_moves_to_disk_by_its_pairs_of_addresses_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scan's conversations each have a pair of addresses of their own, which takes memory as a
    # conversation does: the pairs count towards spill_entries
    folder = _folder(tmp_path / "captures")
    paths = []
    for index in range(2):
        frames = [
            (1000.0 + host, FRAMERS[1](ip_packet(CLIENT, f"10.3.{index}.{host}", "tcp", 40000, 443,
                                                 flags=TCP_SYN)))
            for host in range(1, 41)
        ]  # fmt: skip
        pod = _folder(folder / f"pod{index}")
        paths.append(write_pcap(pod / "capture.pcap0", frames))
    _temporary_folder(tmp_path / "tmp", monkeypatch)
    for spill_entries, sorting in ((79, "sorting the conversations in"), (80, "sorting 80 ")):
        steps: list[str] = []
        traffic = read_captures(
            paths, root=tmp_path, workers=1, spill_entries=spill_entries, on_step=steps.append
        )
        assert len(traffic.conversations) == 80
        assert steps[0].startswith(sorting), (spill_entries, steps)


def test_a_file_read_in_pieces_gives_what_it_gives_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past piece_keys keys in its tally, a file's counts are folded and set aside on disk
    # (spilling.FilePieces), so that no file, however big, is held whole: the same traffic, read
    # here, by workers (the pieces' file travels as a path) or by a capture map elsewhere (the
    # pieces travel with the result), for a pod's capture and for a node's.
    paths = _random_captures(_folder(tmp_path / "captures"), 6)
    spill = _temporary_folder(tmp_path / "tmp", monkeypatch)
    placed = {"captures/pod0/capture.pcap0": _Holding("10.2.0.1")}
    node = ["captures/pod3/capture.pcap0"]
    whole = read_captures(paths, root=tmp_path, workers=1, vantages=placed, node_captures=node)
    assert whole.foreign and len(whole.conversations) > 20
    flows = read_captures(
        paths, root=tmp_path, workers=1, node_captures=node, orientation=Orientation(None)
    ).flows
    set_aside: list[int] = []
    add = spilling.FilePieces.add

    def counted_add(pieces: spilling.FilePieces, *args: Any) -> None:
        set_aside.append(pieces.count)
        add(pieces, *args)

    monkeypatch.setattr(spilling.FilePieces, "add", counted_add)
    monkeypatch.setattr(sources, "CHUNK_SIZE", 600)  # ~10 packets: a check after each chunk
    for workers, capture_map in [(1, None), (2, None), (1, _ReversedMap())]:
        pieces = read_captures(
            paths,
            root=tmp_path,
            workers=workers,
            vantages=placed,
            node_captures=node,
            capture_map=capture_map,
            piece_keys=8,
        )
        assert pieces.conversations == whole.conversations
        assert pieces.reports == whole.reports
        assert (pieces.packets, pieces.counted, pieces.skipped) == (
            whole.packets,
            whole.counted,
            whole.skipped,
        )
        # counted per piece: a foreign conversation split between pieces counts in each
        assert pieces.foreign.keys() == whole.foreign.keys()
        assert all(pieces.foreign[name] >= whole.foreign[name] for name in whole.foreign)
        assert pieces.dns.vantages == whole.dns.vantages
        for vantage in whole.dns.vantages:
            assert list(pieces.dns.seen_at(vantage)) == list(whole.dns.seen_at(vantage))
        oriented = read_captures(
            paths,
            root=tmp_path,
            workers=workers,
            node_captures=node,
            capture_map=capture_map,
            orientation=Orientation(None),
            piece_keys=8,
        )
        assert oriented.flows == flows
        assert list(spill.iterdir()) == []  # the pieces' folder is gone
    assert len(set_aside) > 6 * 10  # in this process: every file in many pieces


def test_the_pieces_of_one_big_file_move_the_merge_to_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One file of short connections (a scan, forged SYNs) is the table's growth too: past
    # spill_entries, while pieces of it are still to come, the merge moves to disk.
    (path,) = _random_captures(_folder(tmp_path / "captures"), 1)
    spill = _temporary_folder(tmp_path / "tmp", monkeypatch)
    whole = read_captures([path], root=tmp_path, workers=1)
    monkeypatch.setattr(sources, "CHUNK_SIZE", 600)
    steps: list[str] = []
    moved = read_captures(
        [path], root=tmp_path, workers=1, piece_keys=8, spill_entries=10, on_step=steps.append
    )
    assert moved.conversations == whole.conversations
    (step,) = steps
    assert re.match(r"sorting the conversations in \d+ parts \(", step), step
    assert list(spill.iterdir()) == []


@pytest.mark.parametrize(
    ("module", "writer", "spill_bytes", "piece_keys"),
    [(pickle, "dump", 1, 10**6), (os, "pwrite", 1, 10**6), (pickle, "dump", 0, 1)],
    ids=["the parts", "the flows' columns", "a file's pieces"],
)
def test_what_cannot_be_written_to_disk_is_a_capture_error_naming_the_folder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: object,
    writer: str,
    spill_bytes: int,
    piece_keys: int,
) -> None:
    paths = _random_captures(_folder(tmp_path / "captures"), 2)
    spill = _temporary_folder(tmp_path / "tmp", monkeypatch)

    def full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, writer, full)
    with pytest.raises(CaptureError, match=r"No space left on device.*set TMPDIR") as raised:
        read_captures(
            paths,
            root=tmp_path,
            workers=1,
            orientation=Orientation(None),
            spill_bytes=spill_bytes,
            piece_keys=piece_keys,
        )
    assert str(spill) in str(raised.value)
    assert list(spill.iterdir()) == []  # nothing left behind
