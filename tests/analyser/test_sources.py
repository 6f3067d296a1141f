"""sources: pcap in both byte orders and resolutions, pcapng with several interfaces, gzip by
magic bytes, damage reported with the records before it, and finding capture files."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import pytest

from analyser.sources import CHUNK_SIZE, MAX_PARSED_BLOCK, MAX_RECORD, CaptureFile, records
from kernel.bundles import find_captures, ring_name
from kernel.errors import MalformedCapture, TruncatedCapture
from tests.analyser.packet_builders import (
    START,
    ethernet,
    ip_packet,
    linux_sll2,
    two_pods_frames,
    write_fixtures,
    write_pcap,
    write_pcapng,
)

DATA = Path(__file__).parent.parent / "data"
FRAMES = [
    (START + 0.000001, ethernet(ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2))),
    (START + 2.5, ethernet(ip_packet("fd00::1", "fd00::2", "tcp", 3, 4))),
]


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, big_endian: bool, nano: bool) -> None:
    path = write_pcap(tmp_path / "a.pcap", FRAMES, linktype=1, big_endian=big_endian, nano=nano)
    read = list(records(path))
    assert [(linktype, data) for _, linktype, data in read] == [(1, frame) for _, frame in FRAMES]
    assert [timestamp for timestamp, _, _ in read] == pytest.approx(
        [timestamp for timestamp, _ in FRAMES], abs=1e-6
    )


def test_pcapng_interfaces_keep_their_link_types_and_resolutions(tmp_path: Path) -> None:
    udp = ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2)
    path = write_pcapng(
        tmp_path / "a.pcapng",
        [(1, 6), (276, 9), (101, 3)],
        [
            (0, START + 0.25, ethernet(udp)),
            (1, START + 0.5, linux_sll2(udp)),
            (1, START + 0.75, linux_sll2(udp)),
            (2, START + 1.0, udp),
            (0, START + 1.25, ethernet(udp)),
        ],
    )
    read = list(records(path))
    assert [linktype for _, linktype, _ in read] == [1, 276, 276, 101, 1]
    assert [timestamp - START for timestamp, _, _ in read] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 1.25], abs=1e-6
    )
    assert read[3][2] == udp


def test_gzip_is_told_by_magic_not_by_name(tmp_path: Path) -> None:
    plain = write_pcap(tmp_path / "plain.pcap", FRAMES)
    disguised = tmp_path / "compressed.pcap"  # gzip inside, no .gz
    disguised.write_bytes(gzip.compress(plain.read_bytes()))
    assert list(records(disguised)) == list(records(plain))
    # Two gzip members in one file (e.g. appended by a rotating collector) read as one stream.
    body = plain.read_bytes()
    members = tmp_path / "members.pcap.gz"
    members.write_bytes(gzip.compress(body[:100]) + gzip.compress(body[100:]))
    assert list(records(members)) == list(records(plain))


def test_truncated_file_keeps_the_records_before_the_damage() -> None:
    capture = CaptureFile(DATA / "truncated.pcap", name="truncated.pcap")
    packets = [packet for _, _, batch in capture.batches() for packet in batch]
    assert len(packets) == len(two_pods_frames()) - 1
    assert capture.report.packets == 7
    assert capture.report.error == "TruncatedCapture"
    assert capture.report.reason is not None and "record 8" in capture.report.reason
    assert not capture.report.ok


def test_truncated_gzip_keeps_what_was_decompressed(tmp_path: Path) -> None:
    body = (DATA / "two-pods.pcap.gz").read_bytes()
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(body[: len(body) - 12])  # loses the gzip trailer and a little data
    capture = CaptureFile(cut)
    read = [packet for _, _, batch in capture.batches() for packet in batch]
    assert capture.report.error == "TruncatedCapture"
    assert 0 < len(read) <= 8
    assert read == [frame for _, frame in two_pods_frames()][: len(read)]


def test_garbage_is_malformed() -> None:
    capture = CaptureFile(DATA / "garbage.pcap")
    assert list(capture.batches()) == []
    assert capture.report.error == "MalformedCapture"
    assert capture.report.reason is not None and "not a pcap or pcapng" in capture.report.reason


def test_corrupt_gzip_is_malformed(tmp_path: Path) -> None:
    body = bytearray((DATA / "two-pods.pcap.gz").read_bytes())
    body[40:60] = b"\xff" * 20
    path = tmp_path / "corrupt.pcap.gz"
    path.write_bytes(bytes(body))
    capture = CaptureFile(path)
    list(capture.batches())
    assert capture.report.error in ("MalformedCapture", "TruncatedCapture")


def test_an_impossible_record_length_is_malformed_after_the_good_records(tmp_path: Path) -> None:
    good = write_pcap(tmp_path / "good.pcap", FRAMES).read_bytes()
    # A third record header that claims 100 MB.
    bad = good + (1).to_bytes(4, "little") * 2 + (100_000_000).to_bytes(4, "little") * 2 + b"x" * 64
    path = tmp_path / "bad.pcap"
    path.write_bytes(bad)
    with pytest.raises(MalformedCapture, match="record 3 claims 100000000 bytes"):
        for _ in records(path):
            pass
    capture = CaptureFile(path)
    assert sum(len(batch) for _, _, batch in capture.batches()) == 2
    assert capture.report.packets == 2


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(TruncatedCapture, match="empty"):
        list(records(empty))
    header_only = write_pcap(tmp_path / "header.pcap", [])
    assert list(records(header_only)) == []
    capture = CaptureFile(header_only)
    list(capture.batches())
    assert capture.report.ok and capture.report.packets == 0


def test_pcapng_cut_inside_a_block_keeps_earlier_packets(tmp_path: Path) -> None:
    udp = ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2)
    path = write_pcapng(tmp_path / "a.pcapng", [(101, 6)], [(0, START, udp), (0, START + 1, udp)])
    path.write_bytes(path.read_bytes()[:-8])
    capture = CaptureFile(path)
    assert [len(batch) for _, _, batch in capture.batches()] == [1]
    assert capture.report.error == "TruncatedCapture"


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    capture = CaptureFile(tmp_path / "missing.pcap")
    assert list(capture.batches()) == []
    assert capture.report.error == "CaptureError"


def test_find_captures_knows_tcpdump_ring_names(tmp_path: Path) -> None:
    names = [
        "ns/pod/capture.pcap",
        "ns/pod/capture.pcap0",
        "ns/pod/capture.pcap01",
        "ns/pod/capture.pcap1.gz",
        "ns/pod/meta.json",
        "b.pcapng",
        "a.cap",
        "c.pcapng.gz",
        "notes.txt",
        "capture.pcap.bak",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [path.relative_to(tmp_path).as_posix() for path in find_captures(tmp_path)]
    assert found == [
        "a.cap",
        "b.pcapng",
        "c.pcapng.gz",
        "ns/pod/capture.pcap",
        "ns/pod/capture.pcap0",
        "ns/pod/capture.pcap01",
        "ns/pod/capture.pcap1.gz",
    ]


def test_ring_name_groups_the_files_of_one_tcpdump() -> None:
    assert ring_name("ns/pod/capture.pcap07.gz") == "ns/pod/capture.pcap"
    assert ring_name("ns/pod/capture.pcap") == "ns/pod/capture.pcap"
    assert ring_name("x/trace.pcapng3") == "x/trace.pcapng"
    assert ring_name("other.pcap") == "other.pcap"


def test_committed_fixtures_are_what_the_builders_write(tmp_path: Path) -> None:
    write_fixtures(tmp_path)
    for path in sorted(tmp_path.iterdir()):
        assert path.read_bytes() == (DATA / path.name).read_bytes(), path.name


def test_real_tcpdump_any_capture_is_linux_cooked_v2() -> None:
    read = list(records(DATA / "tcpdump-any-loopback.pcap"))
    assert {linktype for _, linktype, _ in read} == {276}
    assert len(read) == 25


def test_big_endian_pcapng_with_a_timestamp_offset(tmp_path: Path) -> None:
    udp = ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2)
    path = write_pcapng(
        tmp_path / "be.pcapng",
        [(101, 6), (1, 9)],
        [(0, START + 0.5, udp), (1, START + 0.75, ethernet(udp))],
        big_endian=True,
        offsets=[1_000_000_000],
    )
    read = list(records(path))
    assert [(linktype, data) for _, linktype, data in read] == [(101, udp), (1, ethernet(udp))]
    assert [timestamp - START for timestamp, _, _ in read] == pytest.approx([0.5, 0.75], abs=1e-6)


def _read_with_peak(capture: CaptureFile) -> tuple[int, int]:
    """(records in the batches, the peak of Python's allocations while reading them)."""
    tracemalloc.start()
    try:
        count = sum(len(batch) for _, _, batch in capture.batches())
        return count, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_record_claiming_4_gb_is_damage_whatever_the_snap_length(tmp_path: Path) -> None:
    # The header's snap length used to be the limit: a record claiming 4 GB was carried over
    # from chunk to chunk until the file ended (a 10 MB .pcap.gz reached 1.2 GB).
    good = write_pcap(tmp_path / "good.pcap", FRAMES, snaplen=0xFFFFFFFF).read_bytes()
    claim = (1).to_bytes(4, "little") * 2 + (0xFFFFFFFF).to_bytes(4, "little") * 2
    path = tmp_path / "claim.pcap.gz"
    path.write_bytes(gzip.compress(good + claim + bytes(40 << 20), compresslevel=1))
    read_from_disk: list[int] = []
    capture = CaptureFile(path, on_read=read_from_disk.append)
    count, peak = _read_with_peak(capture)
    assert (count, capture.report.packets, capture.report.error) == (2, 2, "MalformedCapture")
    assert capture.report.reason is not None
    assert capture.report.reason.startswith(
        f"record 3 claims 4294967295 bytes, more than a packet can hold ({MAX_RECORD}; the "
        "file's snap length is 4294967295)"
    )
    assert peak < 8 * CHUNK_SIZE
    assert sum(read_from_disk) <= 2 * CHUNK_SIZE  # stopped at the claim


def test_records_up_to_libpcaps_ceiling_are_packets_beyond_the_snap_length(tmp_path: Path) -> None:
    frame = (ethernet(ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2)) + bytes(MAX_RECORD))[
        :MAX_RECORD
    ]
    header = write_pcap(tmp_path / "header.pcap", [], snaplen=65535).read_bytes()
    path = tmp_path / "big.pcap"
    path.write_bytes(header + struct.pack("<IIII", int(START), 0, MAX_RECORD, MAX_RECORD) + frame)
    assert [data for _, _, data in records(path)] == [frame]


def _pcapng_block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def test_pcapng_blocks_that_are_not_read_are_skipped_without_being_held(tmp_path: Path) -> None:
    # A 24 MB name resolution block (more than blocks were allowed to be) between two packets.
    udp = ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2)
    one = write_pcapng(tmp_path / "1.pcapng", [(101, 6)], [(0, START, udp)]).read_bytes()
    two = write_pcapng(tmp_path / "2.pcapng", [(101, 6)], [(0, START, udp)] * 2).read_bytes()
    path = tmp_path / "names.pcapng"
    path.write_bytes(one + _pcapng_block(4, bytes(24 << 20)) + two[len(one) :])
    capture = CaptureFile(path)
    count, peak = _read_with_peak(capture)
    assert (count, capture.report.ok) == (2, True)
    assert peak < 8 * CHUNK_SIZE


@pytest.mark.parametrize(
    ("block_type", "body", "message"),
    [
        (
            6,
            struct.pack("<IIIII", 0, 0, 0, MAX_RECORD + 1, MAX_RECORD + 1) + bytes(MAX_RECORD + 4),
            f"a packet of {MAX_RECORD + 1} bytes, more than a packet can hold",
        ),
        (6, bytes(MAX_PARSED_BLOCK), "more than an interface or packet block can hold"),
        (
            3,
            struct.pack("<I", MAX_RECORD + 8) + bytes(MAX_RECORD + 8),
            f"a packet of {MAX_RECORD + 8} bytes, more than a packet can hold",
        ),
    ],
    ids=["enhanced-packet", "huge-block", "simple-packet"],
)
def test_an_oversized_pcapng_packet_is_damage_after_the_good_ones(
    tmp_path: Path, block_type: int, body: bytes, message: str
) -> None:
    udp = ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2)
    good = write_pcapng(tmp_path / "p.pcapng", [(101, 6)], [(0, START, udp)]).read_bytes()
    path = tmp_path / "big.pcapng"
    path.write_bytes(good + _pcapng_block(block_type, body))
    capture = CaptureFile(path)
    assert sum(len(batch) for _, _, batch in capture.batches()) == 1
    assert capture.report.error == "MalformedCapture"
    assert capture.report.reason is not None and message in capture.report.reason


@pytest.mark.parametrize("offset", [1 << 62, -(1 << 62)])
def test_packets_with_impossible_times_are_skipped_and_counted(tmp_path: Path, offset: int) -> None:
    # if_tsoffset of ±2^62 seconds: the second interface's packets are in no year datetime knows.
    udp = ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2)
    path = write_pcapng(
        tmp_path / "a.pcapng",
        [(101, 6), (101, 6)],
        [(0, START, udp), (1, offset + START, udp), (1, offset + START + 1, udp), (0, START, udp)],
        offsets=[0, offset],
    )
    capture = CaptureFile(path)
    assert sum(len(batch) for _, _, batch in capture.batches()) == 2
    assert capture.report.ok
    assert (capture.report.packets, capture.report.impossible_times) == (4, 2)


def test_reading_stops_at_the_cap_on_decompressed_bytes(tmp_path: Path) -> None:
    # A gzip bomb: 1 MB of records compressed to a kilobyte, repeated as gzip members.
    frame = ethernet(ip_packet("10.0.0.1", "10.0.0.2", "udp", 1, 2))
    record = struct.pack("<IIII", int(START), 0, len(frame), len(frame)) + frame
    pcap = write_pcap(tmp_path / "one.pcap", []).read_bytes()
    member = gzip.compress(record * ((1 << 20) // len(record)), mtime=0)
    path = tmp_path / "bomb.pcap.gz"
    path.write_bytes(gzip.compress(pcap, mtime=0) + member * 1024)  # 1 GiB inside
    read_from_disk: list[int] = []
    capture = CaptureFile(path, on_read=read_from_disk.append, max_bytes=4 << 20)
    count = sum(len(batch) for _, _, batch in capture.batches())
    assert (capture.report.error, capture.report.packets) == ("CaptureTooLarge", count)
    assert count == ((4 << 20) - len(pcap)) // len(record)
    assert capture.report.reason == (
        "more than 4 MiB once decompressed (--max-capture-size): the rest of the file was not read"
    )
    assert sum(read_from_disk) == CHUNK_SIZE  # of the 3 MB file: stopped at the cap
    plain = tmp_path / "plain.pcap"
    plain.write_bytes(pcap + record * 100)
    capped = CaptureFile(plain, max_bytes=len(pcap) + 10 * len(record) + 5)
    assert sum(len(batch) for _, _, batch in capped.batches()) == 10
    assert capped.report.error == "CaptureTooLarge"
    whole = CaptureFile(plain, max_bytes=plain.stat().st_size)
    assert sum(len(batch) for _, _, batch in whole.batches()) == 100
    assert whole.report.ok
