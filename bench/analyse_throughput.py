"""How fast captures are read, against the seed's tshark method and tcpdump (the C limit).

Builds a Linux cooked v2 capture (what the sidecar's ``tcpdump -i any`` writes) of at least
1,000,000 packets: many TCP and UDP flows, IPv4 and some IPv6, handshakes and data, 512-byte
snap length. Then, in the same run, each in a fresh process and the best of ``--repeat`` runs,
prints packets per second (per wall-clock second, and per CPU-second of the command and its
children, which is what counts on a shared machine) for:

- ``read_captures`` + ``orient`` with one worker, and with all workers over several files, as
  installed (``analyser/packets.py`` compiled by mypyc, see ``setup.py``), and with one worker
  running the same source interpreted;
- the seed's method: ``tshark -r FILE -T fields -e ip.src -e ip.dst ...`` (skipped, with a
  message, when tshark is absent: ``make bench`` installs it);
- ``tcpdump -r FILE -n 'tcp or udp' > /dev/null``, and ``tcpdump -r FILE -w /dev/null 'tcp or udp'``
  (reading and BPF filtering without printing: the C limit);

and the peak RSS of one worker reading 1× and 4× the capture (the same flows, four times as
long; each in a fresh interpreter).

Then the whole command, as a new user runs it: ``netpol-sniffer analyse`` on a bundle of one
capture in which one pod calls ten Services, a new source port for each of ``--connections``
short TCP connections (9 packets each, full capture mode: 1,000,000 packets by default), against
``tshark -T fields`` on the same file in the same run: wall time, CPU time, packets per
CPU-second and the ratios (the goal: the command ≥ 10× tshark, ≥ 1,000,000 packets per
CPU-second).
Prints figures, asserts nothing.

    python bench/analyse_throughput.py [--packets N] [--flows N] [--files N] [--repeat N]
                                       [--connections N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))  # bench.synthetic, when run as a script

from bench.synthetic import (  # noqa: E402
    T0,
    PcapWriter,
    Workload,
    capture_path,
    layout,
    tcp_connection,
    write_synthetic_bundle,
)

LINKTYPE_LINUX_SLL2 = 276
SNAPLEN = 512
DEFAULT_REPEAT = 3


def _sll2(ethertype: int) -> bytes:
    return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, b"\x02\x42\xac\x11\x00\x02\x00\x00")


def _ipv4(src: bytes, dst: bytes, protocol: int, segment: bytes, length: int) -> bytes:
    return (
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0x4000, 64, protocol, 0, src, dst)
        + segment
    )


def _ipv6(src: bytes, dst: bytes, protocol: int, segment: bytes, length: int) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, length, protocol, 64, src, dst) + segment


def _tcp(sport: int, dport: int, flags: int, payload: int) -> tuple[bytes, int]:
    header = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 65535, 0, 0)
    return header + b"\x00" * min(payload, 64), 20 + payload


def _udp(sport: int, dport: int, payload: int | bytes) -> tuple[bytes, int]:
    """A UDP header with ``payload`` (bytes, or a size: zeros, at most 64 captured)."""
    if isinstance(payload, bytes):
        return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload, 8 + len(payload)
    header = struct.pack("!HHHH", sport, dport, 8 + payload, 0)
    return header + b"\x00" * min(payload, 64), 8 + payload


def _dns(ident: int, name: str, address: bytes, *, response: bool) -> bytes:
    """A DNS query for ``name`` or its response with one A record."""
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    question += struct.pack("!HH", 1, 1)
    if not response:
        return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question
    answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 30, 4) + address
    return struct.pack("!HHHHHH", ident, 0x8180, 1, 1, 0, 0) + question + answer


def _frames(flows: int, rng: random.Random) -> list[bytes]:
    """For each flow: its packets in order (handshake, data both ways), as captured frames."""
    servers = [(80, 6), (443, 6), (8080, 6), (5432, 6), (6379, 6), (53, 17), (9000, 17)]
    frames: list[bytes] = []
    for index in range(flows):
        v6 = index % 10 == 0
        client_ip = (
            socket.inet_pton(socket.AF_INET6, f"fd00::{index // 65536:x}:{index % 65536:x}")
            if v6
            else socket.inet_aton(f"10.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}")
        )
        server_ip = (
            socket.inet_pton(socket.AF_INET6, "fd00::1:1")
            if v6
            else socket.inet_aton(f"10.96.{index % 16}.1")
        )
        port, protocol = servers[index % len(servers)]
        client_port = 32768 + rng.randrange(28000)
        ip = _ipv6 if v6 else _ipv4
        ethertype = 0x86DD if v6 else 0x0800
        link = _sll2(ethertype)
        if protocol == 6:
            packets = [
                (True, _tcp(client_port, port, 0x02, 0)),
                (False, _tcp(port, client_port, 0x12, 0)),
                (True, _tcp(client_port, port, 0x10, 0)),
                (True, _tcp(client_port, port, 0x18, 300)),
                (False, _tcp(port, client_port, 0x18, 1200)),
                (True, _tcp(client_port, port, 0x11, 0)),
            ]
        elif port == 53:
            name = f"service-{index % 50}.example.com"
            address = socket.inet_aton(f"192.0.2.{index % 50}")
            query, answer = (_dns(index % 65536, name, address, response=r) for r in (False, True))
            packets = [(True, _udp(client_port, 53, query)), (False, _udp(53, client_port, answer))]
        else:
            packets = [(True, _udp(client_port, port, 60)), (False, _udp(port, client_port, 200))]
        for forward, (segment, length) in packets:
            src, dst = (client_ip, server_ip) if forward else (server_ip, client_ip)
            frames.append(link + ip(src, dst, protocol, segment, length))
    return frames


def build_capture(path: Path, packets: int, *, flows: int, seed: int = 7) -> int:
    """A pcap of ``packets`` packets, 1 ms apart: the packets of ``flows`` flows, repeated as
    often as needed (long-lived traffic); returns the count."""
    frames = _frames(flows, random.Random(seed))
    header = struct.Struct("<IIII")
    written = 0
    with path.open("wb") as stream:
        stream.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_LINUX_SLL2))
        buffer = bytearray()
        while written < packets:
            for frame in frames[: packets - written]:
                moment = 1_700_000_000_000 + written  # milliseconds
                buffer += header.pack(moment // 1000, moment % 1000 * 1000, len(frame), len(frame))
                buffer += frame
                written += 1
                if len(buffer) > 1 << 22:
                    stream.write(buffer)
                    buffer.clear()
        stream.write(buffer)
    return written


# Our reading, in a fresh interpreter: prints packets, flows, its own peak RSS (KiB) and the CPU
# seconds (its own and its workers') of reading and orienting alone, after Python has started
# and the analyser is imported.
_OURS = """
import json, resource, sys
from pathlib import Path
from analyser.orienting import orient
from analyser.reading import read_captures
def cpu():
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )
workers, paths = int(sys.argv[1]), [Path(name) for name in sys.argv[2:]]
start = cpu()
traffic = read_captures(paths, root=paths[0].parent, workers=workers)
flows = orient(traffic.conversations, None)
inside = cpu() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import analyser.orienting
import analyser.packets
compiled = all(m.__file__.endswith(".so") for m in (analyser.packets, analyser.orienting))
summary = {"packets": traffic.packets, "flows": len(flows), "rss": peak, "cpu": inside}
print(json.dumps({**summary, "compiled": compiled}))
"""

_TSHARK_FIELDS = [
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "ip.proto",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "tcp.flags",
    "frame.time_epoch",
]


@dataclass(frozen=True)
class Run:
    """One measured command: wall time, and CPU time of it and all its children (user + system),
    which is what counts on a machine shared with other work."""

    label: str
    packets: int
    wall: float
    cpu: float
    outputs: list[str]

    @property
    def output(self) -> str:
        """The standard output of the last run."""
        return self.outputs[-1]

    def line(self) -> str:
        rates = f"{self.packets / self.wall:>12,.0f} {self.packets / self.cpu:>12,.0f}"
        return f"  {self.label:<48} {rates} {self.wall:>8.2f} {self.cpu:>8.2f}"


def _run(
    label: str,
    packets: int,
    argv: list[str],
    *,
    repeat: int,
    keep_output: bool = False,
    cwd: Path | None = None,
) -> Run:
    """Run ``argv`` ``repeat`` times; keep the best wall time and the best CPU time (the machine is
    shared: the best run is the one least disturbed)."""
    walls, cpus, outputs = [], [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(
            argv,
            cwd=cwd,
            check=True,
            stdout=subprocess.PIPE if keep_output else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        outputs.append(result.stdout or "")
    return Run(label, packets, min(walls), min(cpus), outputs)


def _ours(
    label: str,
    packets: int,
    paths: list[Path],
    workers: int,
    *,
    repeat: int,
    source: Path = REPOSITORY,
) -> Run:
    """Our reading in a fresh interpreter that imports the analyser from ``source``."""
    argv = [sys.executable, "-c", _OURS, str(workers), *map(str, paths)]
    return _run(label, packets, argv, repeat=repeat, keep_output=True, cwd=source)


def _interpreted_copy(directory: Path) -> Path:
    """The analyser's source without its compiled modules: the interpreter runs it all."""
    copy = directory / "interpreted"
    ignore = shutil.ignore_patterns("*.so", "__pycache__")
    shutil.copytree(REPOSITORY / "analyser", copy / "analyser", ignore=ignore)
    _write_bytecode(copy)
    return copy


def _write_bytecode(root: Path) -> None:
    """Write the bytecode of the packages under ``root``, as ``pip install`` does: where
    PYTHONDONTWRITEBYTECODE is set (CI and sandboxes often set it) each fresh process would
    otherwise compile every module it imports again (~0.1 CPU-second for ``analyse``), which an
    installed package never does."""
    for package in ("analyser", "cli", "kernel", "collector", "lab", "webhook", "certs"):
        if (root / package).is_dir():
            compileall.compile_dir(root / package, quiet=1)


def _inside(run: Run) -> float:
    """The best CPU seconds of reading and orienting alone (without starting and importing)."""
    return min(float(json.loads(output)["cpu"]) for output in run.outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--flows", type=int, default=20_000, help="distinct flows per file")
    parser.add_argument("--files", type=int, default=4, help="files for the all-workers run")
    parser.add_argument("--keep", type=Path, help="build the captures here and keep them")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="runs per method")
    parser.add_argument(
        "--connections",
        type=int,
        default=111_111,
        help="short connections for the whole command (9 packets each)",
    )
    options = parser.parse_args()
    directory = options.keep or Path(tempfile.mkdtemp(prefix="netpol-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    _write_bytecode(REPOSITORY)
    try:
        _measure(directory, options.packets, options.flows, options.files, options.repeat)
        _whole_command(directory, options.connections, options.repeat)
    finally:
        if options.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


def _measure(directory: Path, wanted: int, flows: int, files: int, repeat: int) -> None:
    capture = directory / "bench.pcap"
    packets = build_capture(capture, wanted, flows=flows)
    # The same amount of traffic spread over several files (several pods): as many packets and
    # flows in all as in the single file.
    parts = []
    for index in range(files):
        part = directory / f"part{index}.pcap"
        build_capture(part, packets // files, flows=flows // files, seed=index)
        parts.append(part)
    workers = os.cpu_count() or 1
    print(f"capture: {packets:,} packets, {flows:,} flows, {capture.stat().st_size / 1e6:.0f} MB")
    print(
        f"machine: {workers} cores, Python {sys.version.split()[0]}, load {os.getloadavg()[0]:.1f}"
    )
    print(f"best of {repeat} runs each:")
    print(f"  {'method':<48} {'packets/s':>12} {'per CPU-s':>12} {'wall s':>8} {'CPU s':>8}")

    single = _ours("netpol-sniffer, 1 worker", packets, [capture], 1, repeat=repeat)
    compiled = bool(json.loads(single.output)["compiled"])
    print(single.line(), flush=True)
    label = f"netpol-sniffer, {workers} workers, {files} files"
    parallel = _ours(label, packets // files * files, parts, workers, repeat=repeat)
    print(parallel.line(), flush=True)
    source = _interpreted_copy(directory)
    label = "netpol-sniffer, 1 worker, interpreted"
    interpreted = _ours(label, packets, [capture], 1, repeat=repeat, source=source)
    print(interpreted.line(), flush=True)

    tcpdump = shutil.which("tcpdump")
    if tcpdump:
        printing = _run(
            "tcpdump -r FILE -n 'tcp or udp' > /dev/null",
            packets,
            [tcpdump, "-r", str(capture), "-n", "tcp or udp"],
            repeat=repeat,
        )
        print(printing.line(), flush=True)
        # Printing costs tcpdump most of its time (for cooked v2 it also looks up each packet's
        # interface name); reading and BPF filtering alone is the C limit.
        filtering = _run(
            "tcpdump -r FILE -w /dev/null 'tcp or udp'",
            packets,
            [tcpdump, "-r", str(capture), "-w", "/dev/null", "tcp or udp"],
            repeat=repeat,
        )
        print(filtering.line(), flush=True)
    else:
        print("  tcpdump: not installed, skipped")

    tshark = shutil.which("tshark")
    seed = None
    if tshark:
        argv = [tshark, "-r", str(capture), "-T", "fields"]
        for name in _TSHARK_FIELDS:
            argv += ["-e", name]
        seed = _run("seed's method: tshark -T fields (11 fields)", packets, argv, repeat=repeat)
        print(seed.line(), flush=True)
    else:
        print("  tshark: not installed, skipped (make bench installs it)")

    print(
        "analyser.packets and analyser.orienting as installed: "
        + ("compiled by mypyc" if compiled else "NOT both compiled (no C compiler at install?)")
    )
    print("reading + orienting alone (without starting Python and importing the analyser):")
    for run in (single, parallel, interpreted):
        inside = _inside(run)
        print(
            f"  {run.label:<48} {run.packets / inside:>12,.0f} per CPU-s"
            f" ({inside:.2f} of {run.cpu:.2f} CPU s)"
        )
    print("ratios:")
    print(
        f"  netpol-sniffer, 1 worker, as installed / interpreted (per CPU-second): "
        f"{interpreted.cpu / single.cpu:.2f}×"
    )
    if seed is not None:
        for run in (single, parallel, interpreted):
            wall = (run.packets / run.wall) / (seed.packets / seed.wall)
            cpu = (run.packets / run.cpu) / (seed.packets / seed.cpu)
            print(f"  {run.label} / tshark: {wall:.1f}× (wall), {cpu:.1f}× (per CPU-second)")
    if tcpdump:
        print(
            f"  tcpdump -w /dev/null / netpol-sniffer, 1 worker (per CPU-second): "
            f"{(filtering.packets / filtering.cpu) / (single.packets / single.cpu):.1f}×"
        )

    big = directory / "bench-4x.pcap"
    build_capture(big, packets * 4, flows=flows)
    quadruple = _ours("4×", packets * 4, [big], 1, repeat=1)
    single_rss, quadruple_rss = (json.loads(run.output)["rss"] for run in (single, quadruple))
    print(f"peak RSS of one worker reading one file (the same {flows:,} flows, longer):")
    print(f"  1× ({packets:,} packets): {single_rss / 1024:.0f} MiB")
    print(
        f"  4× ({packets * 4:,} packets): {quadruple_rss / 1024:.0f} MiB"
        f" (read at {quadruple.packets / quadruple.cpu:,.0f} packets per CPU-second,"
        f" {quadruple.packets / _inside(quadruple):,.0f} for reading + orienting alone)"
    )
    print(f"  ratio 4×/1×: {quadruple_rss / single_rss:.2f}")


def build_service_calls(root: Path, connections: int) -> int:
    """A bundle whose one capture is a pod's calls to ten Services (ClusterIP, port 80), a new
    source port each time (Linux's ephemeral range, per Service), one connection every 0.6 ms:
    what a frontend or batch job without keep-alive looks like. Returns the packets written."""
    workloads = [Workload("default", "client", 1, service=False)]
    workloads += [Workload("default", f"backend-{index}", 1) for index in range(10)]
    cluster = layout(workloads, now=T0 - 3600)
    [client] = cluster.pods_of("default/Deployment/client")
    addresses = sorted(s.cluster_ips[0] for s in cluster.services if s.spec.name != "kube-dns")
    at = T0
    with PcapWriter(capture_path(root, client)) as capture:
        for index in range(connections):
            port = 32768 + index // len(addresses) % 28232
            server = addresses[index % len(addresses)]
            for _, frame in tcp_connection(client.ips[0], port, server, 80):
                capture.write(at, frame)
                at += 0.00005
            at += 0.00015
        packets = capture.packets
    write_synthetic_bundle(
        root, cluster, window=(T0 - 60, at + 60), capture_mode="full", started=cluster.pods
    )
    return packets


def _whole_command(directory: Path, connections: int, repeat: int) -> None:
    bundle = directory / "service-calls"
    shutil.rmtree(bundle, ignore_errors=True)
    packets = build_service_calls(bundle, connections)
    [capture] = (bundle / "captures").rglob("capture.pcap0")
    print(
        f"the whole command: {packets:,} packets in {connections:,} connections from one pod to "
        f"ten Services ({capture.stat().st_size / 1e6:.0f} MB), best of {repeat} runs each:"
    )
    print(f"  {'method':<48} {'packets/s':>12} {'per CPU-s':>12} {'wall s':>8} {'CPU s':>8}")
    command = [sys.executable, "-m", "cli.main", "analyse", str(bundle)]
    command += ["--out", str(directory / "service-calls-out")]
    ours = _run("netpol-sniffer analyse BUNDLE", packets, command, repeat=repeat, cwd=REPOSITORY)
    print(ours.line(), flush=True)
    tshark = shutil.which("tshark")
    if tshark is None:
        print("  tshark: not installed, no ratio (make bench installs it)")
        return
    argv = [tshark, "-r", str(capture), "-T", "fields"]
    for name in _TSHARK_FIELDS:
        argv += ["-e", name]
    seed = _run("seed's method: tshark -T fields (11 fields)", packets, argv, repeat=repeat)
    print(seed.line(), flush=True)
    print(
        f"  netpol-sniffer analyse / tshark: {seed.wall / ours.wall:.1f}× (wall), "
        f"{seed.cpu / ours.cpu:.1f}× (per CPU-second); "
        f"{packets / ours.cpu:,.0f} packets per CPU-second"
    )


if __name__ == "__main__":
    main()
