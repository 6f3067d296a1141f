"""The pull path: exec frames → files, checksums, cut and corrupted streams, resume, ring reuse.

The commands run for real on this machine (sh, coreutils, as in the capture image) through
``LocalExec``; recorded frames from a real websocket exchange are replayed from tests/data/exec/.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest

from collector.pulling import (
    PodPuller,
    PullReport,
    PullTarget,
    drain,
    exec_failure,
    generation_name,
    parse_listing,
)
from kernel.errors import CollectError, ExecFailed, StreamCut
from tests.collector.localexec import Frame, LocalExec, cut_after, flip_first_byte

EXEC_DATA = Path(__file__).parent.parent / "data" / "exec"


def binary_blob(size: int, seed: int) -> bytes:
    """Every byte value, in an order that differs per seed (tcpdump's files are binary)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


@pytest.fixture
def pod_dir(tmp_path: Path) -> Path:
    """A sidecar's /captures: two closed ring files, the one being written, meta.json."""
    captures = tmp_path / "pod-captures"
    captures.mkdir()
    for number, size in ((0, 50_000), (1, 70_001), (2, 12_345)):
        path = captures / f"capture.pcap{number}"
        path.write_bytes(binary_blob(size, number))
        os.utime(path, (1_000 + number, 1_000 + number))  # capture.pcap2 is the current one
    (captures / "meta.json").write_text('{"pod": "web-1"}')
    os.utime(captures / "meta.json", (500, 500))
    return captures


def target_for(pod_dir: Path) -> PullTarget:
    return PullTarget(
        namespace="shop", pod="web-1", container="netpol-sniffer-capture", directory=str(pod_dir)
    )


def pull(pod_dir: Path, dest: Path, exec_opener: LocalExec) -> PullReport:
    partials = dest.parent / "partial"
    return PodPuller(exec_opener, target_for(pod_dir), dest, partial_directory=partials).pull()


def assert_same_files(pod_dir: Path, dest: Path) -> None:
    for remote in pod_dir.iterdir():
        if remote.is_file():
            assert (dest / remote.name).read_bytes() == remote.read_bytes(), remote


# --- frames ---------------------------------------------------------------------------------


def load_frames(name: str) -> list[tuple[int, bytes]]:
    recorded = json.loads((EXEC_DATA / name).read_text())
    return [(frame["channel"], base64.b64decode(frame["data"])) for frame in recorded["frames"]]


def test_recorded_success_stream_writes_stdout_only() -> None:
    frames = load_frames("fetch-success.json")
    sink = BytesIO()
    written = drain(frames, sink, what="fetch")
    expected = b"".join(data for channel, data in frames if channel == 1)
    assert written == len(expected) > 0
    assert sink.getvalue() == expected
    assert len({data for channel, data in frames if channel == 1}) > 1  # really several frames


def test_recorded_failure_status_becomes_exec_failed_with_stderr() -> None:
    with pytest.raises(ExecFailed, match=r"exit code 1.*No such file or directory"):
        drain(load_frames("fetch-missing-file.json"), BytesIO(), what="fetch")


def test_recorded_stream_without_status_is_a_cut() -> None:
    frames = [frame for frame in load_frames("fetch-success.json") if frame[0] != 3]
    sink = BytesIO()
    with pytest.raises(StreamCut, match=r"broke after \d+ bytes"):
        drain(frames, sink, what="fetch")
    assert len(sink.getvalue()) > 0  # what arrived is kept for the resume


@pytest.mark.parametrize(
    ("payload", "failure"),
    [
        (b'{"metadata":{},"status":"Success"}', None),
        (b"", None),
        (b'{"status":"Failure","message":"container not found"}', "container not found"),
        (b"error executing command: exit 2", "error executing command: exit 2"),
    ],
)
def test_exec_failure_reads_v4_status_and_older_text(payload: bytes, failure: str | None) -> None:
    assert exec_failure(payload) == failure


# --- listing and names ----------------------------------------------------------------------


def test_parse_listing_rejects_unexpected_lines() -> None:
    target = PullTarget(namespace="shop", pod="web-1", container="c", directory="/captures")
    good = "a" * 64 + " 10 capture.pcap0"
    assert parse_listing(good, target=target)[0].size == 10
    with pytest.raises(CollectError, match="shop/web-1: unexpected line"):
        parse_listing("sha256sum: cannot read", target=target)
    with pytest.raises(CollectError, match="unexpected file name"):
        parse_listing("a" * 64 + " 10 ../etc/passwd", target=target)


# --- whole pulls ----------------------------------------------------------------------------


def test_pull_fetches_every_file_verified_and_cleans_up(pod_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "bundle" / "captures" / "shop" / "web-1"
    exec_opener = LocalExec()
    report = pull(pod_dir, dest, exec_opener)
    assert_same_files(pod_dir, dest)
    assert sorted(report.fetched) == sorted(
        ["capture.pcap0", "capture.pcap1", "capture.pcap2", "meta.json"]
    )
    assert report.failures == ()
    assert not (tmp_path / "bundle" / "captures" / "shop" / "partial").exists()


def test_the_file_being_written_is_pulled_as_listed(pod_dir: Path, tmp_path: Path) -> None:
    """tcpdump appends between the listing and the fetch: the pulled copy is exactly the
    listed prefix, checksum and all, and the next run fetches the rest."""
    listed = (pod_dir / "capture.pcap2").read_bytes()

    def tcpdump_appends(frames: Iterator[Frame]) -> Iterator[Frame]:
        with (pod_dir / "capture.pcap2").open("ab") as current:
            current.write(binary_blob(3_000, 7))
        yield from frames

    exec_opener = LocalExec(faults=[("capture.pcap2", tcpdump_appends)])
    report = pull(pod_dir, tmp_path / "out", exec_opener)
    assert report.failures == ()
    assert (tmp_path / "out" / "capture.pcap2").read_bytes() == listed
    again = LocalExec()
    pull(pod_dir, tmp_path / "out", again)
    assert again.fetches() == [("capture.pcap2", len(listed), 3_000)]
    assert_same_files(pod_dir, tmp_path / "out")


def test_cut_stream_resumes_after_the_bytes_received(pod_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    exec_opener = LocalExec(faults=[("capture.pcap1", lambda f: cut_after(f, 30_000))])
    report = pull(pod_dir, dest, exec_opener)
    assert_same_files(pod_dir, dest)
    fetches = [fetch for fetch in exec_opener.fetches() if fetch[0] == "capture.pcap1"]
    assert fetches == [("capture.pcap1", 0, 70_001), ("capture.pcap1", 30_000, 40_001)]
    assert report.bytes_fetched == 50_000 + 70_001 + 12_345 + len('{"pod": "web-1"}')


def test_corrupted_stream_is_refetched_after_a_fresh_listing(pod_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    exec_opener = LocalExec(faults=[("capture.pcap0", flip_first_byte)])
    report = pull(pod_dir, dest, exec_opener)
    assert_same_files(pod_dir, dest)
    assert report.failures == ()
    listings = [c for c in exec_opener.commands if "for name in" in c[2]]
    assert len(listings) == 2
    assert [f for f in exec_opener.fetches() if f[0] == "capture.pcap0"] == [
        ("capture.pcap0", 0, 50_000),
        ("capture.pcap0", 0, 50_000),
    ]


def test_persistent_corruption_is_reported_and_the_rest_still_pulled(
    pod_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    exec_opener = LocalExec(faults=[("capture.pcap1", flip_first_byte)] * 3)
    report = pull(pod_dir, dest, exec_opener)
    failures = dict(report.failures)
    assert list(failures) == ["capture.pcap1"]
    assert "sha256" in failures["capture.pcap1"]
    assert not (dest / "capture.pcap1").exists()
    assert (dest / "capture.pcap0").read_bytes() == (pod_dir / "capture.pcap0").read_bytes()


def test_stream_cut_on_every_attempt_is_reported(pod_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    exec_opener = LocalExec(faults=[("capture.pcap0", lambda f: cut_after(f, 10))] * 9)
    report = pull(pod_dir, dest, exec_opener)
    assert "broke after" in dict(report.failures)["capture.pcap0"]
    # the bytes already received were kept for the next run
    assert (tmp_path / "partial" / "capture.pcap0").stat().st_size == 90


def test_second_run_fetches_only_what_is_missing(pod_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    pull(pod_dir, dest, LocalExec())
    # tcpdump kept writing the current file and opened the next one of the ring
    with (pod_dir / "capture.pcap2").open("ab") as current:
        current.write(binary_blob(5_000, 99))
    (pod_dir / "capture.pcap3").write_bytes(binary_blob(777, 3))
    os.utime(pod_dir / "capture.pcap2", (1_010, 1_010))
    exec_opener = LocalExec()
    report = pull(pod_dir, dest, exec_opener)
    assert_same_files(pod_dir, dest)
    assert sorted(exec_opener.fetches()) == [
        ("capture.pcap2", 12_345, 5_000),
        ("capture.pcap3", 0, 777),
    ]
    assert report.bytes_fetched == 5_777


def test_ring_reuse_keeps_the_older_generation(pod_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    pull(pod_dir, dest, LocalExec())
    old = (dest / "capture.pcap0").read_bytes()
    (pod_dir / "capture.pcap0").write_bytes(binary_blob(60_000, 1000))  # the ring wrapped
    os.utime(pod_dir / "capture.pcap0", (2_000, 2_000))
    pull(pod_dir, dest, LocalExec())
    assert_same_files(pod_dir, dest)
    kept = generation_name(dest / "capture.pcap0", hashlib.sha256(old).hexdigest())
    assert kept.name == f"capture.{hashlib.sha256(old).hexdigest()[:12]}.pcap0"
    assert kept.read_bytes() == old


def test_interrupted_run_resumes_from_the_partial_file(pod_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    partial = tmp_path / "partial" / "capture.pcap1"
    partial.parent.mkdir(parents=True)
    partial.write_bytes((pod_dir / "capture.pcap1").read_bytes()[:20_000])
    exec_opener = LocalExec()
    pull(pod_dir, dest, exec_opener)
    assert_same_files(pod_dir, dest)
    assert ("capture.pcap1", 20_000, 50_001) in exec_opener.fetches()


def test_a_missing_captures_directory_fails_the_pod_with_the_reason(tmp_path: Path) -> None:
    puller = PodPuller(
        LocalExec(), target_for(tmp_path / "absent"), tmp_path / "out", partial_directory=tmp_path
    )
    with pytest.raises(ExecFailed, match=r"shop/web-1: listing the captures: .*exit code"):
        puller.pull()
