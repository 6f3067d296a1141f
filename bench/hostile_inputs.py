"""What hostile inputs cost: each analysed in a fresh interpreter, wall and CPU time, peak RSS.

Builds, from the recorded example bundle (examples/microservices-demo/bundle):

- a snapshot.yaml with 128 KB of nested aliases (10**9 label maps, were they expanded),
- a snapshot.json with a list nested 100,000 deep,
- a 10 GiB gzip bomb in frontend's capture folder (64 KiB records: decompressing is the cost),
  read up to the default cap (``--max-capture-size``, 1 GiB), and a bomb of 16-byte records
  (the slowest kind to walk) read up to 256 MiB,
- a .pcap.gz whose header claims a 4 GB snap length and whose third record claims 4 GB,
- frontend's capture with N outside clients, N outside servers and N unresolved addresses (the
  servers and unresolved addresses all from one client port, so every flow looks for a twin
  among the others), for N = 2,000 and 20,000,
- frontend's capture with ``--attempts`` connections it tried and never established (a SYN
  each, from a new port, to 16 outside addresses, or more past 16 × 64,512: a client retrying a
  blocked port all day, or a forged capture), 1,000,000 by default; ``--attempts 14000000``
  makes a 1 GiB file of them, which a worker reads in pieces,
- frontend's capture with ``--scan`` SYNs, none answered, each to an address of its own (a port
  scan, or forged: one group of attempts per address), 200,000 by default,
- frontend's capture with ``--spray`` UDP datagrams, none answered, each to an address of its
  own (a flood or a scan: one-way traffic, which keeps a rule per address up to a bound),
  100,000 by default; and as many again, each to a port of its own too (the bound is per
  workload side and direction, over all ports),
- frontend's capture with ``--answers`` DNS answers sent to it, each for a name and an address
  of its own (forged: a table of names that would grow without bound), 1,000,000 by default,
- frontend's capture with ``--ports`` connections to cartservice's pod, each to a port of its
  own (a rule listing them all would be bigger than a cluster takes), 20,000 by default,
- frontend's capture with answered connections to 33 outside addresses on each of ``--wide``
  ports (every port widens to anywhere: one rule listing them all), 2,000 by default,
- frontend's capture with ``--names`` names looked up, each under a domain of its own, and a
  connection to each answer (analysed with ``--format all``: the CiliumNetworkPolicy lists
  names), 5,000 by default.

Each runs ``analyse`` (one worker) in a fresh interpreter; the clean bundle is the baseline
measured in the same run, and the 2,000 → 20,000 ratio is taken over it (near 10: linear).
Then ``verify`` replays each of those bundles against the policies analyse wrote for it, and
``diff`` compares those policies with themselves on the bundle's snapshot (every workload with
every address block), each in a fresh interpreter, with the same ratio over the clean bundle's.
Prints figures, asserts nothing; the last line is a one-line summary.

    python bench/hostile_inputs.py [--small N] [--large N] [--attempts N] [--scan N]
                                   [--spray N] [--answers N] [--ports N] [--names N]
                                   [--wide N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
EXAMPLE = REPOSITORY / "examples" / "microservices-demo" / "bundle"
FRONTEND = "frontend"
FRONTEND_PORT = 8080

# The analysis in a fresh interpreter: prints its own CPU seconds, peak RSS (KiB) and outcome.
_CHILD = """
import json, resource, sys
from pathlib import Path
from analyser.analysing import PolicyFormat, analyse
from analyser.bundles import open_bundle
from kernel.errors import NetpolSnifferError
options = json.loads(sys.argv[2])
if "policy_format" in options:
    options["policy_format"] = PolicyFormat(options["policy_format"])
try:
    analysis = analyse(open_bundle(Path(sys.argv[1])), workers=1, **options)
    outcome = f"{len(analysis.policy_files)} policies, {len(analysis.flows)} flows"
    problems = [problem.problem for problem in analysis.problems]
    if problems:
        outcome += f"; warning: {problems[-1]}"
except NetpolSnifferError as error:
    outcome = f"error: {error}"
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss,
                  "outcome": outcome}))
"""


# A netpol-sniffer command in a fresh interpreter: prints its CPU seconds, peak RSS and status.
_CLI_CHILD = """
import contextlib, io, json, resource, sys
from cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    status = main(sys.argv[1:])
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss,
                  "outcome": f"exit status {status}"}))
"""


@dataclass(frozen=True)
class Measured:
    label: str
    wall: float
    cpu: float
    rss: int  # KiB
    outcome: str

    def line(self) -> str:
        outcome = self.outcome.replace(str(REPOSITORY), ".")
        outcome = outcome if len(outcome) <= 110 else outcome[:107] + "..."
        return (
            f"  {self.label:<44} {self.wall:>8.2f} {self.cpu:>8.2f} {self.rss / 1024:>8.0f}"
            f"  {outcome}"
        )


def measure(label: str, bundle: Path, **options: object) -> Measured:
    return _measured(label, [_CHILD, str(bundle), json.dumps(options)])


def measure_command(label: str, *args: str) -> Measured:
    """``netpol-sniffer ARGS`` in a fresh interpreter (its stdout discarded)."""
    return _measured(label, [_CLI_CHILD, *args])


def _measured(label: str, child: list[str]) -> Measured:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", *child],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return Measured(label, wall, 0.0, 0, f"crashed: {done.stderr.strip().splitlines()[-1]}")
    result = json.loads(done.stdout)
    return Measured(label, wall, result["cpu"], result["rss"], result["outcome"])


# -- building the inputs ----------------------------------------------------------------------


def copy_example(target: Path) -> Path:
    shutil.copytree(EXAMPLE, target)
    return target


def pod_folder(bundle: Path, app: str) -> Path:
    (folder,) = (p for p in (bundle / "captures" / "default").iterdir() if p.name.startswith(app))
    return folder


def pod_ip(bundle: Path, app: str) -> str:
    return str(json.loads((pod_folder(bundle, app) / "meta.json").read_text())["ips"][0])


def window_start(bundle: Path) -> float:
    from analyser.bundles import open_bundle

    window = open_bundle(bundle).manifest.window  # type: ignore[union-attr]
    assert window is not None
    return window.start


def pcap_header(*, snaplen: int = 65535) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1)


def record(moment: float, frame: bytes) -> bytes:
    seconds = int(moment)
    return struct.pack("<IIII", seconds, round((moment - seconds) * 1e6), len(frame), len(frame))


SYN = 0x02  # a TCP SYN's flags


def ip_frame(source: str, destination: str, protocol: int, segment: bytes) -> bytes:
    """An Ethernet frame of an IPv4 packet carrying ``segment`` (a transport header and data)."""
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(segment),
        1,
        0x4000,
        64,
        protocol,
        0,
        socket.inet_aton(source),
        socket.inet_aton(destination),
    )
    return b"\x04" * 6 + b"\x02" * 6 + b"\x08\x00" + ip + segment


def tcp_frame(source: str, sport: int, destination: str, dport: int, flags: int) -> bytes:
    segment = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0)
    return ip_frame(source, destination, 6, segment)


def udp_frame(source: str, sport: int, destination: str, dport: int, payload: bytes) -> bytes:
    segment = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return ip_frame(source, destination, 17, segment)


def write_capture(path: Path, frames: Iterable[tuple[float, bytes]]) -> None:
    """A pcap file of ``frames`` (time, Ethernet frame), written as they are made."""
    with path.open("wb") as capture:
        capture.write(pcap_header())
        for moment, frame in frames:
            capture.write(record(moment, frame) + frame)


def frontend_records(bundle: Path, name: str, records: Iterable[bytes]) -> Path:
    """``bundle`` with pcap ``records`` as frontend's capture file ``name``."""
    (pod_folder(bundle, FRONTEND) / name).write_bytes(pcap_header() + b"".join(records))
    return bundle


def handshake(client: str, cport: int, server: str, sport: int, at: float) -> Iterator[bytes]:
    """SYN, SYN-ACK, ACK as pcap records."""
    for offset, (source, sp, destination, dp, flags) in enumerate(
        [
            (client, cport, server, sport, 0x02),
            (server, sport, client, cport, 0x12),
            (client, cport, server, sport, 0x10),
        ]
    ):
        frame = tcp_frame(source, sp, destination, dp, flags)
        yield record(at + offset * 0.001, frame) + frame


def address(prefix: str, index: int) -> str:
    return f"{prefix}.{index // 250 % 256}.{index % 250 + 1}"


def outside_addresses(bundle: Path, count: int) -> Path:
    """frontend's capture with ``count`` outside clients, outside servers and unresolved
    addresses (the last two from one client port each: every flow looks for a twin)."""
    frontend = pod_ip(bundle, FRONTEND)
    start = window_start(bundle) + 10
    records: list[bytes] = []
    for index in range(count):
        at = start + index * 1e-4  # all within the twin window of each other
        records += handshake(address("198.18", index), 40000 + index % 20000, frontend, 8080, at)
        records += handshake(frontend, 40000, address("198.19", index), 443, at)
        records += handshake(frontend, 41000, address("10.244", 25600 + index), 9000, at)
    return frontend_records(bundle, "many.pcap", records)


def unanswered_attempts(bundle: Path, count: int) -> Path:
    """frontend's capture with ``count`` SYNs, none answered, to port 5432 of outside addresses
    (16, or as many as it takes), from every port in turn: each SYN a connection of its own
    (``count`` distinct connections: far past what a 1 GiB file holds)."""
    frontend = pod_ip(bundle, FRONTEND)
    start = window_start(bundle) + 10
    servers = max(16, -(-count // 64512))

    def frames() -> Iterator[tuple[float, bytes]]:
        for index in range(count):
            place = index % servers
            server = f"198.51.{100 + place // 254}.{place % 254 + 1}"
            frame = tcp_frame(frontend, 1024 + index // servers % 64512, server, 5432, SYN)
            yield start + index * 1e-3, frame

    write_capture(pod_folder(bundle, FRONTEND) / "retries.pcap", frames())
    return bundle


def outside(index: int) -> str:
    """The ``index``-th address of 11.0.0.0/8 and on: an address of its own for each index."""
    return socket.inet_ntoa(struct.pack("!I", (11 << 24) + index))


def port_scan(bundle: Path, count: int) -> Path:
    """frontend's capture with ``count`` SYNs, none answered, to port 443 of as many addresses."""
    frontend = pod_ip(bundle, FRONTEND)
    start = window_start(bundle) + 10
    frames = (
        (start + index * 1e-4, tcp_frame(frontend, 40000 + index % 20000, outside(index), 443, SYN))
        for index in range(count)
    )
    write_capture(pod_folder(bundle, FRONTEND) / "scan.pcap", frames)
    return bundle


def datagram_spray(bundle: Path, count: int, *, port_each: bool = False) -> Path:
    """frontend's capture with ``count`` UDP datagrams to port 9999 of as many addresses (with
    ``port_each``, each to a port of its own), none answered."""
    frontend = pod_ip(bundle, FRONTEND)
    start = window_start(bundle) + 10

    def port(index: int) -> int:
        return 1024 + index % 64512 if port_each else 9999

    frames = (
        (start + index * 1e-4, udp_frame(frontend, 40000, outside(index), port(index), b"x" * 20))
        for index in range(count)
    )
    write_capture(pod_folder(bundle, FRONTEND) / "spray.pcap", frames)
    return bundle


def dns_answer(ident: int, name: str, ip: str) -> bytes:
    """A DNS response with one A record: ``name`` is ``ip``."""
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split("."))
    question += b"\0" + struct.pack("!HH", 1, 1)
    address = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + socket.inet_aton(ip)
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + address


def forged_answers(bundle: Path, count: int) -> Path:
    """frontend's capture with ``count`` DNS answers from the cluster's DNS, each naming an
    address of its own with a name of its own."""
    frontend = pod_ip(bundle, FRONTEND)
    start = window_start(bundle) + 10

    def frames() -> Iterator[tuple[float, bytes]]:
        for index in range(count):
            ip = f"10.{200 + index // 16777216 % 50}.{index // 65536 % 256}.{index // 256 % 256}"
            answer = dns_answer(index % 65536, f"n{index}.forged.example.com", ip)
            frame = udp_frame("10.96.0.10", 53, frontend, 40000 + index % 20000, answer)
            yield start + index * 1e-4, frame

    write_capture(pod_folder(bundle, FRONTEND) / "answers.pcap", frames())
    return bundle


def ports_to_one_workload(bundle: Path, count: int) -> Path:
    """frontend's capture with ``count`` connections to cartservice's pod, each to a port of its
    own and answered (forged: a rule with a port each)."""
    frontend, cart = pod_ip(bundle, FRONTEND), pod_ip(bundle, "cartservice")
    start = window_start(bundle) + 10
    records: list[bytes] = []
    for index in range(count):
        port = 1024 + index % 64512
        records += handshake(frontend, 30000 + index % 30000, cart, port, start + index * 1e-3)
    return frontend_records(bundle, "ports.pcap", records)


def widened_ports(bundle: Path, count: int) -> Path:
    """frontend's capture with answered connections to 33 outside addresses on each of ``count``
    ports (forged: every port widens to anywhere, one rule listing them all)."""
    frontend = pod_ip(bundle, FRONTEND)
    start = window_start(bundle) + 10
    records: list[bytes] = []
    for index in range(count * 33):
        server, port = f"198.51.100.{index % 33 + 1}", 1024 + index // 33 % 64512
        at = start + index * 1e-4
        records += handshake(frontend, 20000 + index % 40000, server, port, at)
    return frontend_records(bundle, "widened.pcap", records)


def names_of_their_own(bundle: Path, count: int) -> Path:
    """frontend's capture with ``count`` DNS answers, each a name under a domain of its own (no
    pattern folds them) for an outside address it then connects to (a crawler, or forged)."""
    frontend = pod_ip(bundle, FRONTEND)
    start = window_start(bundle) + 10
    records: list[bytes] = []
    for index in range(count):
        at, server = start + index * 1e-3, address("198.18", index)
        answer = dns_answer(index % 65536, f"api.tenant{index}.example{index}.com", server)
        frame = udp_frame("10.96.0.10", 53, frontend, 40000 + index % 20000, answer)
        records.append(record(at, frame) + frame)
        records += handshake(frontend, 30000 + index % 30000, server, 443, at + 1e-4)
    return frontend_records(bundle, "names.pcap", records)


def alias_bomb(bundle: Path) -> Path:
    document = json.loads((bundle / "snapshot.json").read_text())
    (bundle / "snapshot.json").unlink()
    lines = ["bomb:", "  l0: &l0 {app: lol, tier: lol}"]
    lines += [f"  l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, 10)]
    lines += [f"  pad{n}: [{', '.join(['*l9'] * 40)}]" for n in range(600)]
    text = json.dumps(document, indent=1)[:-2] + "\n}\n"
    (bundle / "snapshot.yaml").write_text("\n".join(lines) + "\n" + text)
    return bundle


def deep_snapshot(bundle: Path) -> Path:
    text = (bundle / "snapshot.json").read_text()
    (bundle / "snapshot.json").write_text(text[:-2] + ', "deep": ' + "[" * 100_000 + "\n}\n")
    return bundle


def gzip_bomb(bundle: Path, *, inflated: int, record_size: int) -> Path:
    """A capture of zero-filled records (not IP: no flow) of ``record_size`` captured bytes,
    ``inflated`` bytes once decompressed, as a repeated 1 MiB gzip member."""
    one = struct.pack("<IIII", int(window_start(bundle)), 0, record_size, record_size)
    one += bytes(record_size)
    member = gzip.compress(one * ((1 << 20) // len(one)), mtime=0)
    inside = (1 << 20) // len(one) * len(one)
    with (pod_folder(bundle, FRONTEND) / "bomb.pcap.gz").open("wb") as stream:
        stream.write(gzip.compress(pcap_header(), mtime=0))
        for _ in range(inflated // inside):
            stream.write(member)
    return bundle


def record_claim(bundle: Path) -> Path:
    """snaplen 2^32-1, two real packets, a record claiming 4 GB, then 1 GiB of zeros."""
    frontend, cart = pod_ip(bundle, FRONTEND), pod_ip(bundle, "cartservice")
    real = b"".join(list(handshake(frontend, 40000, cart, 7070, window_start(bundle) + 60))[:2])
    claim = struct.pack("<IIII", int(window_start(bundle)), 0, 0xFFFFFFFF, 0xFFFFFFFF)
    zeros = gzip.compress(bytes(1 << 20), mtime=0)
    path = pod_folder(bundle, FRONTEND) / "claim.pcap.gz"
    path.write_bytes(
        gzip.compress(pcap_header(snaplen=0xFFFFFFFF) + real + claim, mtime=0) + zeros * 1024
    )
    return bundle


# -- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2_000, help="outside addresses, small run")
    parser.add_argument("--large", type=int, default=20_000, help="outside addresses, large run")
    parser.add_argument(
        "--attempts", type=int, default=1_000_000, help="connections tried, never established"
    )
    parser.add_argument(
        "--scan", type=int, default=200_000, help="SYNs, each to an address of its own"
    )
    parser.add_argument(
        "--spray", type=int, default=100_000, help="UDP datagrams, each to an address of its own"
    )
    parser.add_argument(
        "--answers", type=int, default=1_000_000, help="forged DNS answers, each a new name"
    )
    parser.add_argument(
        "--ports", type=int, default=20_000, help="connections to one pod, each a port of its own"
    )
    parser.add_argument(
        "--names", type=int, default=5_000, help="names looked up, each under a domain of its own"
    )
    parser.add_argument(
        "--wide", type=int, default=2_000, help="ports with 33 outside addresses each (anywhere)"
    )
    parser.add_argument("--keep", type=Path, help="build the inputs here and keep them")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="hostile-inputs-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(
            work,
            args.small,
            args.large,
            args.attempts,
            args.scan,
            args.spray,
            args.answers,
            args.ports,
            args.names,
            args.wide,
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run(
    work: Path,
    small: int,
    large: int,
    attempts: int,
    scan: int,
    spray: int,
    answers: int,
    ports: int,
    names: int,
    wide: int,
) -> None:
    from analyser.sources import DEFAULT_MAX_BYTES

    print(f"machine: Python {sys.version.split()[0]}; each input analysed in a fresh interpreter")
    print(f"  {'input':<44} {'wall s':>8} {'CPU s':>8} {'RSS MiB':>8}  outcome")
    baseline = measure("clean example bundle (baseline)", copy_example(work / "clean"))
    print(baseline.line())
    rows = [
        measure("YAML alias bomb (128 KB snapshot.yaml)", alias_bomb(copy_example(work / "alias"))),
        measure("snapshot.json nested 100,000 deep", deep_snapshot(copy_example(work / "deep"))),
        measure(
            "record claiming 4 GB (10 MB .pcap.gz)", record_claim(copy_example(work / "claim"))
        ),
        measure(
            f"10 GiB gzip bomb, 64 KiB records, cap {DEFAULT_MAX_BYTES >> 30} GiB",
            gzip_bomb(copy_example(work / "bomb"), inflated=10 << 30, record_size=65535),
        ),
        measure(
            "gzip bomb of 16-byte records, cap 256 MiB",
            gzip_bomb(copy_example(work / "tiny"), inflated=1 << 30, record_size=0),
            max_capture_size=256 << 20,
        ),
        measure(
            f"{attempts:,} connection attempts, never answered",
            unanswered_attempts(copy_example(work / "attempts"), attempts),
        ),
        measure(
            f"a scan of {scan:,} addresses, never answered",
            port_scan(copy_example(work / "scan"), scan),
        ),
        measure(
            f"{spray:,} datagrams to as many addresses",
            datagram_spray(copy_example(work / "spray"), spray),
        ),
        measure(
            f"{spray:,} datagrams, each a new address+port",
            datagram_spray(copy_example(work / "spray-ports"), spray, port_each=True),
        ),
        measure(
            f"{answers:,} forged DNS answers, each a new name",
            forged_answers(copy_example(work / "answers"), answers),
        ),
        measure(
            f"{ports:,} connections to one pod, a port each",
            ports_to_one_workload(copy_example(work / "ports"), ports),
        ),
        measure(
            f"33 addresses on each of {wide:,} ports",
            widened_ports(copy_example(work / "wide"), wide),
        ),
        measure(
            f"{names:,} names, each under a domain of its own",
            names_of_their_own(copy_example(work / "names"), names),
            policy_format="all",
        ),
    ]
    for row in rows:
        print(row.line())
    sizes = []
    for count in (small, large):
        bundle = outside_addresses(copy_example(work / f"outside-{count}"), count)
        sizes.append(measure(f"{count:,} outside clients, servers, unresolved", bundle))
        print(sizes[-1].line())
    factor = large / small
    cpu_ratio = print_ratio("analyse", baseline, sizes, small, large)
    commands = {}
    for command in ("verify", "diff"):
        runs = [
            measure_command(f"{command}, {label}", *_arguments(command, work / name))
            for label, name in [
                ("clean example bundle", "clean"),
                *((f"{count:,} outside addresses", f"outside-{count}") for count in (small, large)),
            ]
        ]
        for row in runs:
            print(row.line())
        commands[command] = print_ratio(command, runs[0], runs[1:], small, large)
    attacks = [*rows, *sizes]
    worst_rss = max(attacks, key=lambda m: m.rss)
    crashed = [m.label for m in attacks if m.outcome.startswith("crashed")]
    print(
        f"summary: {len(attacks)} hostile inputs, {len(crashed)} crashed; slowest "
        f"{max(m.cpu for m in attacks):.1f} CPU s; peak RSS {worst_rss.rss / 1024:.0f} MiB "
        f"({worst_rss.label}); {large:,}/{small:,} addresses CPU ratio: analyse "
        f"{cpu_ratio:.1f}×, verify {commands['verify']:.1f}×, diff {commands['diff']:.1f}× "
        f"(linear {factor:.0f}×)"
    )


def _arguments(command: str, bundle: Path) -> list[str]:
    """verify BUNDLE POLICIES, or diff POLICIES POLICIES --snapshot BUNDLE, with the policies
    analyse writes for the bundle (written once, next to it)."""
    policies = bundle.with_name(f"{bundle.name}-policies")
    if not policies.exists():
        # In a child of its own: a child's peak RSS counts this process's size when it forked.
        subprocess.run(
            [sys.executable, "-m", "cli.main", "analyse", str(bundle), "--out",
             str(policies), "--workers", "1"],
            cwd=REPOSITORY,
            capture_output=True,
            check=True,
        )  # fmt: skip
    if command == "verify":
        return ["verify", str(bundle), str(policies)]
    return ["diff", str(policies), str(policies), "--snapshot", str(bundle)]


def print_ratio(
    what: str, baseline: Measured, sizes: list[Measured], small: int, large: int
) -> float:
    """Print how ``what``'s cost grew from ``small`` to ``large`` addresses, over the baseline;
    returns the CPU ratio."""
    low, high = sizes
    factor = large / small
    wall_ratio = (high.wall - baseline.wall) / max(low.wall - baseline.wall, 1e-9)
    cpu_ratio = (high.cpu - baseline.cpu) / max(low.cpu - baseline.cpu, 1e-9)
    print(
        f"{what}: ratio {large:,} / {small:,} addresses, over the baseline: wall "
        f"{wall_ratio:.1f}×, CPU {cpu_ratio:.1f}× (input {factor:.0f}×: {factor:.0f} is linear, "
        f"{factor * factor:.0f} quadratic)"
    )
    return cpu_ratio


if __name__ == "__main__":
    main()
