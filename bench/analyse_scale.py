"""A cluster's day on one machine: ``netpol-sniffer analyse`` on a synthetic bundle the size of a
real one.

The bundle (built with ``bench/synthetic.py``): 10 namespaces of 15 Deployments each (150
workloads, 3 to 11 replicas: about 1,000 pods), each behind a ClusterIP Service (port 80 to
8080); a day of handshake-mode captures (what the sidecar keeps by default: TCP SYN, SYN+ACK, FIN
and RST, and all of UDP), one ring (file) per pod. Each workload calls 10 other workloads'
Services and 30 outside addresses, and looks names up at the cluster DNS. A call to a Service is
in the client's capture (to the ClusterIP) and in the answering pod's (from the client, after
DNAT); a call outside and a lookup are in the client's only. Every hour a pod restarts, and its
address goes to the replacement of a pod of another workload (restarts that reuse IPs). Connection
events are spread evenly over the day until ``--packets`` packets are written (20,000,000 by
default).

Then ``analyse`` runs in a fresh process with all cores (its default); printed: the bundle (packets,
files, distinct endpoint pairs: vantage point, client address, server address, server port and
protocol, as counted while writing), and the wall time, CPU time (the command and its worker
processes), peak RSS (the sum over the command's process tree, sampled every 0.1 s) and packets
per CPU-second. Goal (2 cores): minutes, peak RSS < 2 GB whatever the capture size, cost linear
in packets: run two sizes and compare. Prints figures, asserts nothing; the last line is

    analyse_scale: P packets, E endpoint pairs, W s wall, C s CPU, R MB peak RSS

    python bench/analyse_scale.py [--packets N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))  # bench.synthetic, when run as a script

from bench.synthetic import (  # noqa: E402
    T0,
    PcapWriter,
    Workload,
    capture_path,
    dns_lookup,
    layout,
    tcp_connection,
    write_synthetic_bundle,
)
from lab.bundling import pod_ip_event  # noqa: E402
from lab.layouts import LabPod, Layout  # noqa: E402

DAY = 86_400.0
NAMESPACES = 10
WORKLOADS_PER_NAMESPACE = 15
SERVICES_CALLED = 10
OUTSIDE_CALLED = 30
OUTSIDE_ADDRESSES = 3_000
CLUSTER_DNS = "10.96.0.10"
RESTARTS = 24
# The share of connection events of each kind: a call to a Service (8 packets: 4 in each of two
# captures), a call outside (4) and a DNS lookup (2).
SERVICE_CALLS, OUTSIDE_CALLS = 0.6, 0.25
EPHEMERAL = (32768, 60999)


def workloads() -> list[Workload]:
    return [
        Workload(f"team-{n}", f"app-{w}", replicas=3 + (n * 7 + w * 5) % 9)
        for n in range(NAMESPACES)
        for w in range(WORKLOADS_PER_NAMESPACE)
    ]


@dataclass
class Cluster:
    """The pods alive now, by workload, and what each workload calls."""

    layout: Layout
    rng: random.Random
    alive: dict[str, list[LabPod]] = field(default_factory=dict)
    calls: dict[str, list[str]] = field(default_factory=dict)  # workload → Service ClusterIPs
    outside: dict[str, list[str]] = field(default_factory=dict)  # workload → outside addresses
    service_workload: dict[str, str] = field(default_factory=dict)  # ClusterIP → workload ref

    @classmethod
    def build(cls, rng: random.Random) -> Cluster:
        specs = workloads()
        cluster = cls(layout(specs, now=T0 - 3600), rng)
        ips = {(s.spec.namespace, s.spec.name): s.cluster_ips[0] for s in cluster.layout.services}
        service_ip = {w.ref: ips[(w.namespace, w.name)] for w in specs}
        refs = sorted(service_ip)
        for ref in refs:
            cluster.alive[ref] = cluster.layout.pods_of(ref)
            callees = rng.sample([r for r in refs if r != ref], SERVICES_CALLED)
            cluster.calls[ref] = [service_ip[callee] for callee in callees]
            cluster.outside[ref] = [
                f"198.18.{i // 250}.{i % 250 + 1}"
                for i in rng.sample(range(OUTSIDE_ADDRESSES), OUTSIDE_CALLED)
            ]
            cluster.service_workload[service_ip[ref]] = ref
        return cluster


@dataclass
class Writers:
    """One capture file per pod, opened on its first packet; small buffers (a thousand open)."""

    root: Path
    open: dict[str, PcapWriter] = field(default_factory=dict)
    pairs: set[tuple[str, str, str, int, str]] = field(default_factory=set)
    packets: int = 0

    def write(self, pod: LabPod, at: float, frames: list[tuple[bool, bytes]]) -> None:
        writer = self.open.get(pod.key)
        if writer is None:
            writer = self.open[pod.key] = PcapWriter(capture_path(self.root, pod), buffer=1 << 16)
        for index, (_, frame) in enumerate(frames):
            writer.write(at + index * 0.0002, frame)
        self.packets += len(frames)

    def pair(self, pod: LabPod, client: str, server: str, port: int, protocol: str) -> None:
        self.pairs.add((pod.key, client, server, port, protocol))

    def close(self, pod: LabPod) -> None:
        writer = self.open.pop(pod.key, None)
        if writer is not None:
            writer.close()

    def close_all(self) -> None:
        for writer in self.open.values():
            writer.close()
        self.open.clear()


def _restart(
    cluster: Cluster, at: float, events: list[dict[str, object]], writers: Writers
) -> None:
    """A pod of one workload restarts; a pod of another is replaced too, and its replacement
    takes the first one's address."""
    first, second = cluster.rng.sample(sorted(cluster.alive), 2)
    gone = cluster.alive[first].pop(0)
    taken = cluster.alive[second].pop(0)
    for pod in (gone, taken):
        cluster.layout.remove_pod(pod)
        writers.close(pod)
        events.append(pod_ip_event(pod, "DELETED", at))
    spec = {w.ref: w for w in cluster.layout.cluster.workloads}
    fresh = cluster.layout.new_pod(spec[first], ordinal=0, now=at)
    reusing = cluster.layout.new_pod(spec[second], ordinal=0, now=at, reuse_index=gone.index)
    cluster.alive[first].append(fresh)
    cluster.alive[second].append(reusing)


def build_bundle(root: Path, packets: int, seed: int = 13) -> Writers:
    """The bundle (see the module's docstring), with about ``packets`` packets."""
    rng = random.Random(seed)
    cluster = Cluster.build(rng)
    started = list(cluster.layout.pods)
    events: list[dict[str, object]] = []
    writers = Writers(root)
    # Events spread evenly over the day: as many as the packets wanted allow.
    per_event = SERVICE_CALLS * 8 + OUTSIDE_CALLS * 4 + (1 - SERVICE_CALLS - OUTSIDE_CALLS) * 2
    count = max(int(packets / per_event), 1)
    step = DAY / count
    restart_every = count // (RESTARTS + 1)
    ports: dict[str, int] = {}
    refs = sorted(cluster.alive)
    for index in range(count):
        at = T0 + index * step
        if restart_every and index and index % restart_every == 0:
            _restart(cluster, at, events, writers)
            started += cluster.layout.pods[-2:]  # the two new pods
        ref = refs[index % len(refs)]
        pods = cluster.alive[ref]
        client = pods[rng.randrange(len(pods))]
        ip = client.ips[0]
        # Linux hands out source ports in turn through its ephemeral range.
        port = ports.get(client.key, rng.randrange(*EPHEMERAL)) + 1
        ports[client.key] = port = EPHEMERAL[0] if port > EPHEMERAL[1] else port
        kind = rng.random()
        if kind < SERVICE_CALLS:
            cluster_ip = rng.choice(cluster.calls[ref])
            backends = cluster.alive[cluster.service_workload[cluster_ip]]
            backend = backends[rng.randrange(len(backends))]
            writers.write(client, at, tcp_connection(ip, port, cluster_ip, 80, full=False))
            writers.write(backend, at, tcp_connection(ip, port, backend.ips[0], 8080, full=False))
            writers.pair(client, ip, cluster_ip, 80, "TCP")
            writers.pair(backend, ip, backend.ips[0], 8080, "TCP")
        elif kind < SERVICE_CALLS + OUTSIDE_CALLS:
            outside = rng.choice(cluster.outside[ref])
            writers.write(client, at, tcp_connection(ip, port, outside, 443, full=False))
            writers.pair(client, ip, outside, 443, "TCP")
        else:
            outside = rng.choice(cluster.outside[ref])
            name = f"api-{outside.replace('.', '-')}.example.com"
            frames = [(True, frame) for frame in dns_lookup(ip, port, CLUSTER_DNS, name, outside)]
            writers.write(client, at, frames)
            writers.pair(client, ip, CLUSTER_DNS, 53, "UDP")
    writers.close_all()
    write_synthetic_bundle(
        root,
        cluster.layout,
        window=(T0 - 60, T0 + DAY + 60),
        capture_mode="handshake",
        started=started,
        events=events,
    )
    return writers


def _tree_rss(pid: int) -> int:
    """The resident memory of ``pid`` and its descendants, in bytes (0 once it is gone)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/statm") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


@dataclass(frozen=True)
class Measured:
    wall: float
    cpu: float
    peak_rss: int  # bytes


def run_analyse(bundle: Path, out: Path) -> Measured:
    """``analyse`` in a fresh process (all cores), its process tree's peak RSS sampled."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    command = [sys.executable, "-m", "cli.main", "analyse", str(bundle), "--out", str(out)]
    process = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.DEVNULL)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    status = process.wait()
    sampler.join()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if status != 0:
        sys.exit(f"analyse failed with status {status}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    # The largest process's own peak (ru_maxrss) if the sampling missed a brief one.
    return Measured(wall, cpu, max(peak, after.ru_maxrss * 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20_000_000, help="packets in all")
    parser.add_argument("--keep", type=Path, help="build the bundle here and keep it")
    options = parser.parse_args()
    directory = options.keep or Path(tempfile.mkdtemp(prefix="netpol-scale-"))
    directory.mkdir(parents=True, exist_ok=True)
    bundle = directory / "bundle"
    try:
        shutil.rmtree(bundle, ignore_errors=True)
        started = time.perf_counter()
        writers = build_bundle(bundle, options.packets)
        files = sum(1 for _ in (bundle / "captures").rglob("capture.pcap0"))
        size = sum(p.stat().st_size for p in (bundle / "captures").rglob("capture.pcap0"))
        built = time.perf_counter() - started
        print(
            f"bundle: {writers.packets:,} packets in {files:,} capture files "
            f"({size / 1e6:,.0f} MB), {len(writers.pairs):,} endpoint pairs, built in {built:.0f} s"
        )
        print(
            f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        measured = run_analyse(bundle, directory / "out")
        print(
            f"analyse: {measured.wall:.1f} s wall, {measured.cpu:.1f} s CPU, "
            f"{writers.packets / measured.cpu:,.0f} packets per CPU-second, "
            f"{measured.peak_rss / 1e6:,.0f} MB peak RSS"
        )
        print(
            f"analyse_scale: {writers.packets} packets, {len(writers.pairs)} endpoint pairs, "
            f"{measured.wall:.1f} s wall, {measured.cpu:.1f} s CPU, "
            f"{measured.peak_rss / 1e6:.0f} MB peak RSS"
        )
    finally:
        if options.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
