"""Bounded work whatever the input (issue 18, item 4): a YAML alias bomb, documents nested
100,000 deep, a record claiming 4 GB, a gzip bomb, times out of any calendar. Each gives one clear
error or warning line, bounded memory (the peak RSS of a fresh interpreter analysing it), and the
policies of the clean run from the other pods. Near-linear cost in flows and addresses is tested
where it is implemented (tests/analyser: graphs, evaluation, replaying) and measured in
bench/hostile_inputs.py.

Run as a script, this module records the example bundle's output again (after a change that
means to alter it): ``python -m tests.hostile.test_bounds``.
"""

from __future__ import annotations

import gzip
import json
import re
import resource
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analyser.analysing import GRAPH_SVG, REPORT_HTML, analyse
from analyser.bundles import open_bundle
from analyser.sources import DEFAULT_MAX_BYTES
from cli.main import ExitStatus, main
from kernel.errors import BundleError, SnapshotError
from tests.analyser.packet_builders import write_pcapng
from tests.bundle_builders import handshake
from tests.hostile.hostile_helpers import (
    EXAMPLE,
    pod_folder,
    pod_ip,
    policy_files,
    run,
    snapshot,
    window_start,
)

REPOSITORY = Path(__file__).resolve().parents[2]
RECORDED = REPOSITORY / "tests" / "data" / "microservices-demo-analysis.json"
# The example bundle analysed in a fresh interpreter peaks at about 100 MiB; an input that is
# buffered or expanded whole goes far past this.
PEAK_RSS = 400 << 20
# Address space for the child: without the bounds, the attacks below die here instead of
# swapping the machine.
ADDRESS_SPACE = 3 << 30

_CHILD = """
import json, resource, sys
from pathlib import Path
from analyser.analysing import analyse
from analyser.bundles import open_bundle
from cli.main import ExitStatus, main
from kernel.errors import NetpolSnifferError
from tests.hostile.hostile_helpers import policy_files
try:
    analysis = analyse(open_bundle(Path(sys.argv[1])), workers=1, **json.loads(sys.argv[2]))
    result = {
        "policies": policy_files(analysis),
        "problems": [f"{p.path}: {p.problem}" for p in analysis.problems],
        "skipped": analysis.traffic.skipped,
    }
except NetpolSnifferError as error:
    result = {"error": str(error)}
result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(result))
"""


@dataclass(frozen=True)
class ChildRun:
    """What analysing a bundle in a fresh interpreter gave."""

    result: dict[str, Any]
    peak_rss: int  # bytes


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def analyse_in_child(bundle: Path, **options: object) -> ChildRun:
    """``analyse`` in a fresh interpreter (its peak RSS is the attack's alone)."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(bundle), json.dumps(options)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_address_space,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    return ChildRun(result, int(result.pop("peak_rss")))


_CLI_CHILD = """
import resource, sys
from cli.main import main
status = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
sys.exit(status)
"""


@dataclass(frozen=True)
class CliRun:
    """What ``netpol-sniffer`` did in a fresh interpreter."""

    status: int
    stderr: str
    peak_rss: int  # bytes


def cli_in_child(*args: str) -> CliRun:
    """``netpol-sniffer ARGS`` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _CLI_CHILD, *args],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_address_space,
        check=False,
    )
    return CliRun(done.returncode, done.stderr, int(done.stdout.splitlines()[-1]))


def pcap_header(*, snaplen: int = 65535) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1)


# -- the snapshot, the history, meta.json, bundle.json ------------------------------------------


def alias_bomb() -> str:
    """A snapshot.yaml that loads as the real snapshot plus 128 KB of nested aliases: expanded,
    10**9 copies of a label map under ``bomb``."""
    lines = ["bomb:", "  l0: &l0 {app: lol, tier: lol}"]
    for level in range(1, 10):
        lines.append(f"  l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]")
    lines += [f"  pad{n}: [{', '.join(['*l9'] * 40)}]" for n in range(600)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_snapshot_is_one_error_line_in_bounded_memory(
    bundle: Path, tmp_path: Path
) -> None:
    document = snapshot(bundle)
    (bundle / "snapshot.json").unlink()
    text = json.dumps(document, indent=1)[:-2] + "\n}\n"  # JSON is YAML
    bomb = alias_bomb()
    (bundle / "snapshot.yaml").write_text(bomb + text)
    assert len(bomb) > 120_000
    done = cli_in_child("analyse", str(bundle), "--out", str(tmp_path / "out"), "--workers", "1")
    assert done.status == 1
    assert done.stderr.splitlines() == [
        f"netpol-sniffer analyse: error: {bundle / 'snapshot.yaml'}: line 3: a YAML alias (*l0): "
        "aliases are not accepted (kubectl never writes them, and nested ones blow a small file "
        "up into gigabytes)"
    ]
    assert not (tmp_path / "out").exists()
    assert done.peak_rss < PEAK_RSS


@pytest.mark.parametrize("opening", ["[", '{"a": '])
def test_a_snapshot_nested_100000_deep_is_one_error_line(bundle: Path, opening: str) -> None:
    text = (bundle / "snapshot.json").read_text()
    (bundle / "snapshot.json").write_text(text[:-2] + ', "deep": ' + opening * 100_000 + "\n}\n")
    with pytest.raises(SnapshotError) as caught:
        run(bundle)
    assert str(caught.value) == (
        f"{bundle / 'snapshot.json'}: nested more than 100 lists and objects deep"
    )


def test_deep_history_and_meta_are_warnings_and_the_policies_stay_clean(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    history = bundle / "pod-ips.jsonl"
    history.write_text(history.read_text() + '{"labels": ' + "[" * 100_000 + "\n")
    meta = pod_folder(bundle, "redis-cart") / "meta.json"
    meta.write_text('{"pod": ' + '{"a": ' * 100_000)
    analysis = run(bundle)
    assert policy_files(analysis) == clean_policies
    problems = {problem.path: problem.problem for problem in analysis.problems}
    lines = len(history.read_text().splitlines())
    assert problems["pod-ips.jsonl"] == (
        f"not used: {history}:{lines}: nested more than 100 lists and objects deep"
    )
    assert problems[str(meta.relative_to(bundle))] == (
        f"not used: {meta}: nested more than 100 lists and objects deep"
    )


@pytest.mark.parametrize(
    ("start", "problem"),
    [
        ("9999-12-31T23:59:59-23:59", "is not a time from 1970 to 9999"),
        ("10000-01-01T00:00:00Z", "is not an RFC 3339 time"),
    ],
)
def test_a_bundle_window_out_of_range_is_one_error_line(
    bundle: Path, start: str, problem: str
) -> None:
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["window"] = {"start": start, "end": start}
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as caught:
        open_bundle(bundle)
    assert str(caught.value) == f"{bundle / 'bundle.json'}: window.start: {start!r} {problem}"


def test_history_and_meta_times_out_of_range_are_warnings_naming_the_field(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    history = bundle / "pod-ips.jsonl"
    first = json.loads(history.read_text().splitlines()[0])
    history.write_text(json.dumps({**first, "time": 1e300}) + "\n" + history.read_text())
    meta = pod_folder(bundle, "redis-cart") / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "start_time": -1}))
    analysis = run(bundle)
    assert policy_files(analysis) == clean_policies
    problems = {problem.path: problem.problem for problem in analysis.problems}
    assert problems["pod-ips.jsonl"] == f"not used: {history}:1: 'time' is not a timestamp: 1e+300"
    assert problems[str(meta.relative_to(bundle))] == (
        f"not used: {meta}: 'start_time' is not a timestamp: -1"
    )


# -- captures ---------------------------------------------------------------------------------


def test_a_record_claiming_4_gb_is_damage_in_bounded_memory(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    # snaplen 2^32-1 and a record claiming 4 GB after two real packets, then 1 GB of zeros: a
    # 10 MB .pcap.gz that used to be buffered whole (1.2 GB RSS).
    frontend, cart = pod_ip(bundle, "frontend"), pod_ip(bundle, "cartservice")
    at = window_start(bundle) + 60
    frames = handshake(frontend, 40000, cart, 7070, at)[:2]
    records = b"".join(
        struct.pack("<IIII", int(moment), 0, len(frame), len(frame)) + frame
        for moment, frame in frames
    )
    claim = struct.pack("<IIII", int(at), 0, 0xFFFFFFFF, 0xFFFFFFFF)
    zeros = gzip.compress(bytes(1 << 20), mtime=0)
    path = pod_folder(bundle, "frontend") / "claim.pcap.gz"
    path.write_bytes(
        gzip.compress(pcap_header(snaplen=0xFFFFFFFF) + records + claim, mtime=0) + zeros * 1024
    )
    child = analyse_in_child(bundle)
    assert child.result["policies"] == clean_policies
    assert (
        f"{path.relative_to(bundle)}: record 3 claims 4294967295 bytes, more than a packet can "
        "hold (262144; the file's snap length is 4294967295); the 2 packets before the damage "
        "were used"
    ) in child.result["problems"]
    assert child.peak_rss < PEAK_RSS


def gzip_bomb(path: Path, *, inflated: int) -> Path:
    """A pcap of 64 KiB records of zeros (not IP: no flow), ``inflated`` bytes once
    decompressed, as a repeated 1 MiB gzip member: about 1 KB on disk per MiB inside."""
    record = struct.pack("<IIII", 1_767_261_600, 0, 65535, 65535) + bytes(65535)
    member = gzip.compress(record * ((1 << 20) // len(record)), mtime=0)
    inside = (1 << 20) // len(record) * len(record)
    with path.open("wb") as stream:
        stream.write(gzip.compress(pcap_header(), mtime=0))
        for _ in range(inflated // inside):
            stream.write(member)
    return path


def test_a_gzip_bomb_stops_at_the_cap_and_the_other_pods_policies_are_clean(
    bundle: Path, clean_policies: dict[str, str]
) -> None:
    path = gzip_bomb(pod_folder(bundle, "frontend") / "bomb.pcap.gz", inflated=10 << 30)
    assert path.stat().st_size < 50 << 20
    child = analyse_in_child(bundle)
    assert child.result["policies"] == clean_policies
    records = (DEFAULT_MAX_BYTES - 24) // (16 + 65535)
    assert (
        f"{path.relative_to(bundle)}: more than 1 GiB once decompressed (--max-capture-size): the "
        f"rest of the file was not read; the {records} packets before the cap were used"
    ) in child.result["problems"]
    assert child.result["skipped"]["not_ip"] >= records
    assert child.peak_rss < PEAK_RSS


def test_the_cap_is_a_setting(bundle: Path, clean_policies: dict[str, str]) -> None:
    path = gzip_bomb(pod_folder(bundle, "frontend") / "bomb.pcap.gz", inflated=64 << 20)
    analysis = run(bundle, max_capture_size=1 << 20)
    assert policy_files(analysis) == clean_policies
    problems = {problem.path: problem.problem for problem in analysis.problems}
    records = ((1 << 20) - 24) // (16 + 65535)
    assert problems[str(path.relative_to(bundle))] == (
        "more than 1 MiB once decompressed (--max-capture-size): the rest of the file was not "
        f"read; the {records} packets before the cap were used"
    )
    assert all(problem.path != str(path.relative_to(bundle)) for problem in run(bundle).problems)


def test_the_cli_passes_the_cap_on_and_warns(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = gzip_bomb(pod_folder(bundle, "frontend") / "bomb.pcap.gz", inflated=64 << 20)
    out = tmp_path / "out"
    status = main(
        ["analyse", str(bundle), "-o", str(out), "--workers", "1", "--max-capture-size", "2M"]
    )
    assert status == ExitStatus.OK
    records = ((2 << 20) - 24) // (16 + 65535)
    assert (
        f"netpol-sniffer analyse: warning: {path.relative_to(bundle)}: more than 2 MiB once "
        "decompressed (--max-capture-size): the rest of the file was not read; the "
        f"{records} packets before the cap were used"
    ) in capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("offset", [1 << 62, -(1 << 62)])
def test_packets_with_impossible_times_are_skipped_counted_and_reported(
    bundle: Path, clean_policies: dict[str, str], offset: int
) -> None:
    # if_tsoffset ±2^62 on one interface: its packets (a handshake to an outside address) are
    # in no calendar; the other interface's are kept.
    frontend = pod_ip(bundle, "frontend")
    at = window_start(bundle) + 60
    frames = handshake(frontend, 40001, "198.51.100.9", 443, at)
    path = write_pcapng(
        pod_folder(bundle, "frontend") / "times.pcapng",
        [(1, 6), (1, 6)],
        [(1, offset + moment, frame) for moment, frame in frames],
        offsets=[0, offset],
    )
    analysis = run(bundle)
    assert policy_files(analysis) == clean_policies
    assert analysis.traffic.skipped["impossible_time"] == len(frames)
    problems = {problem.path: problem.problem for problem in analysis.problems}
    assert problems[str(path.relative_to(bundle))] == (
        f"{len(frames)} packets with a time before 1970 or after 9999 were skipped"
    )
    assert "| impossible_time | 5 |" in analysis.files["report.md"]


# -- the example ------------------------------------------------------------------------------


def example_output() -> dict[str, str]:
    """Every file analyse writes for the example bundle, but graph.svg (Graphviz's own), and of
    report.html (which holds graph.svg) its data."""
    files = analyse(open_bundle(EXAMPLE), workers=1).files
    output = {path: text for path, text in files.items() if path not in (GRAPH_SVG, REPORT_HTML)}
    data = re.search(
        r'<script type="application/json" id="review-data">(.*?)</script>', files[REPORT_HTML]
    )
    assert data is not None
    output[f"{REPORT_HTML} (data)"] = data[1]
    return output


def test_the_example_bundle_gives_the_recorded_output() -> None:
    # Bounding the work changed how twins, ipBlocks and an edge's flows are found, not what is
    # found: the output stays byte for byte what it was.
    assert example_output() == json.loads(RECORDED.read_text())


if __name__ == "__main__":
    RECORDED.write_text(json.dumps(example_output(), indent=1, sort_keys=True) + "\n")
