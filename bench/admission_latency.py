"""Admission latency over TLS, at a normal rate and in overload (prints figures, asserts nothing).

Starts the real ``netpol-sniffer-webhook`` on 127.0.0.1 with certificates made by certs/ and loads
it with bench/loadgen, a Go client that talks to it the way a kube-apiserver does (HTTP/1.1 over
TLS, 25 idle keep-alive connections, a new connection whenever none is idle, a 5 s deadline per
request), on one CPU at most. A Python client on this machine ran out of CPU before the webhook
did. Latency is
measured from each request's *scheduled* time to its full answer, so a stalled server cannot hide
its queue (no coordinated omission). The requests are the fixtures in tests/data/admission, each
with a fresh uid.

In one run, against one webhook:

1. baselines: ``admit()`` called in-process (no HTTP, no TLS), and ``GET /healthz`` at ``--rate``
   (the transport's floor) and back to back (its ceiling);
2. normal: ``POST /mutate`` at ``--rate`` for ``--seconds``. Target (issues 3 and 17): p99 < 5 ms
   at 1,500/s, nothing shed;
3. saturation: ``POST /mutate`` back to back on ``--connections`` connections for 5 s: the most
   full answers a second, the webhook's saturation rate;
4. overload: 2x the saturation rate, open loop, for 10 s. Target (issue 17): p99 of every answer
   < 250 ms, every request answered; prints the share of pods shed (admitted without the sidecar).

On two CPUs the load generator cannot offer twice what a worker with a whole CPU sustains: it
pays about 0.1 ms of CPU per request (mostly the kernel's loopback TCP) and half a millisecond per
new TLS connection, and at 6,800/s it starves itself even while the webhook sheds everything at a
third of a CPU. So for the saturation and overload phases the webhook runs with ``--overload-cpu``
(0.5) CPU per worker, a cgroup quota in 1 ms slices (class Confinement): a slower replica, whose
saturation rate is measured again in the same run. Without root or a cgroup cpu controller they
run on the full CPU, and the figures say so.

The open-loop phases first rise to their rate over a second, uncounted, as an API server's
connections grow with a ReplicaSet's batches of pods: a load generator that starts cold at the
full rate dials a connection for nearly every request of the first milliseconds.

    .venv/bin/python bench/admission_latency.py [--rate 1500] [--seconds 10] [--workers 1]
                                                [--overload-cpu 0.5]

Needs Go (``go build`` of bench/loadgen, standard library only). The machine's load (``uptime``)
is printed before and after: figures taken on a busy machine are not worth quoting. On a shared
machine run it ahead of the other work, its whole session (autogroup) included: docs/webhook.md,
"Admission latency", gives the command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from ssl import create_default_context

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certs.make_certs import LOOPBACK_NAMES, make_certs  # noqa: E402
from webhook.admission import OVERLOADED_MESSAGE, admit  # noqa: E402
from webhook.settings import WebhookSettings  # noqa: E402

FIXTURES = ROOT / "tests" / "data" / "admission"
LOADGEN = ROOT / "bench" / "loadgen"
HOST = "127.0.0.1"
SATURATION_SECONDS = 5.0
OVERLOAD_FACTOR = 2.0
OVERLOAD_SECONDS = 10.0
# Each open-loop phase first rises to its rate over this long, uncounted (bench/loadgen -ramp).
RAMP_SECONDS = 1.0
ANSWERED = ("full", "shed", "status")


@dataclass
class Phase:
    name: str
    outcomes: Counter[str]
    latencies: list[float]  # seconds, every answered request
    by_outcome: dict[str, list[float]]
    seconds: float
    connections: int
    client_cpu: float
    server_cpu: float
    stalls: list[float]  # how late a 1 ms sleep in this process woke up: the machine's stalls
    late_sends: int  # requests the load generator sent more than 1 ms after they were due
    errors: list[str]
    open_file_limit: int  # the load generator's, raised as far as it may (bench/loadgen)

    @property
    def answered(self) -> int:
        return sum(self.outcomes[o] for o in ANSWERED)

    @property
    def unanswered(self) -> int:
        return self.outcomes["timeout"] + self.outcomes["conn"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def bodies() -> list[bytes]:
    """Every fixture review, each with a fresh uid (the mix: mostly injections, some skips),
    serialized the way the API server does (no spaces)."""
    reviews = [json.loads(path.read_text()) for path in sorted(FIXTURES.glob("*.json"))]
    out = []
    for _ in range(20):
        for review in reviews:
            review["request"]["uid"] = str(uuid.uuid4())
            out.append(json.dumps(review, separators=(",", ":")).encode())
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (Linux /proc): the webhook and its workers."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        found.append(current)
        pending.extend(int(child) for child in children)
    return found


def process_tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants so far."""
    total = 0.0
    for current in process_tree(pid):
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Confinement:
    """The webhook's processes in a cgroup of their own with a CPU quota: a replica with a
    slower CPU, so that the load generator on the same machine can offer twice what the webhook
    sustains. The quota comes in slices of 2 ms at most (not Kubernetes' 100 ms), so it slows
    the webhook down evenly instead of stopping it for tens of milliseconds at a time. Needs root
    and the cgroup cpu controller (v1 or v2)."""

    def __init__(self, cpus: float) -> None:
        self.cpus = cpus
        # The kernel's least quota is 1 ms.
        self.period = 2000 if cpus >= 0.5 else math.ceil(1000 / cpus)
        self.quota = round(cpus * self.period)
        self.base = self._base()
        self.group = self.base / f"netpol-sniffer-bench-{os.getpid()}" if self.base else None

    @staticmethod
    def _base() -> Path | None:
        v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
        if os.geteuid() != 0:
            return None
        if (v1 / "cpu.cfs_quota_us").is_file():
            return v1
        controllers = v2 / "cgroup.controllers"
        if controllers.is_file() and "cpu" in controllers.read_text().split():
            return v2
        return None

    def __enter__(self) -> Confinement:
        assert self.base is not None and self.group is not None, "no cgroup cpu controller"
        self.group.mkdir()
        # The largest weight too: on a machine shared with other work the quota, not the others,
        # limits the webhook, as a pod's CPU request guarantees it its share of a busy node.
        if (self.base / "cpu.cfs_quota_us").is_file():
            (self.group / "cpu.cfs_period_us").write_text(str(self.period))
            (self.group / "cpu.cfs_quota_us").write_text(str(self.quota))
            (self.group / "cpu.shares").write_text("262144")
        else:
            (self.group / "cpu.max").write_text(f"{self.quota} {self.period}")
            (self.group / "cpu.weight").write_text("10000")
        return self

    @staticmethod
    def move(pids: list[int], group: Path) -> None:
        for pid in pids:
            with contextlib.suppress(OSError):  # gone already
                (group / "cgroup.procs").write_text(str(pid))

    def __exit__(self, *exception: object) -> None:
        assert self.base is not None and self.group is not None
        inside = [int(pid) for pid in (self.group / "cgroup.procs").read_text().split()]
        self.move(inside, self.base)
        for _attempt in range(50):  # a process that has just exited may still count
            try:
                self.group.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        print(f"could not remove {self.group}", file=sys.stderr)


def build_loadgen(scratch: Path) -> Path:
    go = shutil.which("go")
    if go is None:
        raise SystemExit("bench/admission_latency.py needs Go to build bench/loadgen")
    binary = scratch / "loadgen"
    environ = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=LOADGEN, env=environ, check=True)
    return binary


class Load:
    """Runs loadgen phases against one webhook."""

    def __init__(self, binary: Path, port: int, ca: Path, requests: Path, server: int) -> None:
        self.binary = binary
        self.base = f"https://{HOST}:{port}"
        self.ca = ca
        self.requests = requests
        self.server = server

    def run(self, name: str, path: str, *options: str) -> Phase:
        command = [str(self.binary), "-url", self.base + path, "-ca", str(self.ca), *options]
        if path == "/mutate":
            command += ["-bodies", str(self.requests), "-shed-marker", OVERLOADED_MESSAGE]
        stalls: list[float] = []
        done = threading.Event()

        def watch_stalls() -> None:
            while not done.is_set():
                before = time.perf_counter()
                time.sleep(0.001)
                stalls.append(time.perf_counter() - before - 0.001)

        watcher = threading.Thread(target=watch_stalls, daemon=True)
        before = process_tree_cpu(self.server)
        watcher.start()
        # One CPU at most for the load generator: the API server runs on CPUs of its own.
        environ = {**os.environ, "GOMAXPROCS": "1"}
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=environ)
        done.set()
        watcher.join()
        server_cpu = process_tree_cpu(self.server) - before
        if result.returncode != 0:
            raise SystemExit(f"loadgen failed: {result.stderr}")
        data = json.loads(result.stdout)
        by_outcome: dict[str, list[float]] = {}
        for request in data["requests"]:
            by_outcome.setdefault(request["outcome"], []).append(request["latency"])
        return Phase(
            name=name,
            outcomes=Counter({o: len(v) for o, v in by_outcome.items()}),
            latencies=[t for o in ANSWERED for t in by_outcome.get(o, [])],
            by_outcome=by_outcome,
            seconds=data["seconds"],
            connections=data["connections"],
            client_cpu=data["client_cpu_seconds"],
            server_cpu=server_cpu,
            stalls=stalls,
            late_sends=data["late_sends"],
            errors=data["first_errors"],
            open_file_limit=data["open_file_limit"],
        )


def report(phase: Phase) -> None:
    count = len(phase.latencies)
    ms = [t * 1e3 for t in phase.latencies]
    print(
        f"{phase.name:<24} {count:>6} answered {count / phase.seconds:7.0f}/s  "
        f"p50 {percentile(ms, 0.5):7.2f} ms  p90 {percentile(ms, 0.9):7.2f} ms  "
        f"p99 {percentile(ms, 0.99):7.2f} ms  max {max(ms, default=float('nan')):7.2f} ms"
    )
    requests = sum(phase.outcomes.values())
    print(
        f"{'':<24} unanswered {phase.unanswered} (timeout {phase.outcomes['timeout']}, "
        f"connection {phase.outcomes['conn']}), other status {phase.outcomes['status']}, "
        f"{phase.connections} connections opened (load generator's open-file limit "
        f"{phase.open_file_limit})"
    )
    if phase.outcomes["shed"]:
        shed = phase.outcomes["shed"]
        p99s = ", ".join(
            f"{o} p99 {percentile(phase.by_outcome[o], 0.99) * 1e3:.2f} ms"
            for o in ("full", "shed")
            if phase.by_outcome.get(o)
        )
        print(f"{'':<24} shed {shed} of {phase.answered} ({shed / phase.answered:.1%}); {p99s}")
    print(
        f"{'':<24} CPU per request: webhook {phase.server_cpu / requests * 1e3:.3f} ms, "
        f"load generator {phase.client_cpu / requests * 1e3:.3f} ms; sent late (> 1 ms) "
        f"{phase.late_sends / requests:.1%}; machine stalls (1 ms sleep overshoot) p99 "
        f"{percentile(phase.stalls, 0.99) * 1e3:.2f} ms, "
        f"max {max(phase.stalls, default=0) * 1e3:.2f} ms"
    )
    for error in phase.errors[:3]:
        print(f"{'':<24} e.g. {error}")


def handler_times(port: int, ca: Path) -> dict[str, dict[float, float]]:
    """The webhook's own histograms (all phases): for the time to answer and the time waited in
    a worker, the share of /mutate requests at or under each bucket bound, in seconds."""
    url = f"https://{HOST}:{port}/metrics"
    with urllib.request.urlopen(url, context=create_default_context(cafile=ca), timeout=10) as r:
        text = r.read().decode()
    shares = {}
    for name in ("duration", "wait"):
        prefix = f'netpol_sniffer_admission_{name}_seconds_bucket{{le="'
        counts = {
            float(line[len(prefix) :].split('"')[0]): float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith(prefix)
        }
        total = counts[float("inf")] or 1.0
        shares[name] = {b: c / total for b, c in counts.items() if b != float("inf")}
    return shares


def in_process_baseline(samples: list[bytes]) -> list[float]:
    settings = WebhookSettings()
    latencies = []
    for body in samples * 5:
        started = time.perf_counter()
        admit(body, settings)
        latencies.append(time.perf_counter() - started)
    return latencies


def start_webhook(certs: Path, port: int, workers: str) -> subprocess.Popen[bytes]:
    environ = {**os.environ, "NETPOL_SNIFFER_WORKERS": workers, "NETPOL_SNIFFER_LOG_LEVEL": "info"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "webhook.app",
            "--tls-cert",
            str(certs / "tls.crt"),
            "--tls-key",
            str(certs / "tls.key"),
            "--host",
            HOST,
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    context = create_default_context(cafile=certs / "ca.crt")
    deadline = time.monotonic() + 30
    while True:
        try:
            url = f"https://{HOST}:{port}/readyz"
            with urllib.request.urlopen(url, context=context, timeout=1):
                return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.terminate()
                raise SystemExit("the webhook did not start") from None
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1500.0, help="normal rate, requests/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="normal phases, at most 60")
    parser.add_argument(
        "--connections", type=int, default=8, help="saturation phase: back-to-back clients (8)"
    )
    parser.add_argument("--workers", type=int, default=1, help="the webhook's workers (1)")
    parser.add_argument(
        "--overload-cpu",
        type=float,
        default=0.5,
        help="CPUs per worker for the saturation and overload phases, 0: no limit (0.5)",
    )
    args = parser.parse_args()
    seconds = str(min(args.seconds, 60.0))
    samples = bodies()
    baseline = in_process_baseline(samples)
    confinement = Confinement(args.overload_cpu * args.workers) if args.overload_cpu else None
    if confinement is None:
        not_confined = "--overload-cpu 0"
    elif confinement.base is None:
        not_confined = "cannot limit its CPU: needs root and the cgroup cpu controller"
    else:
        not_confined = ""
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        binary = build_loadgen(scratch)
        requests = scratch / "requests.jsonl"
        requests.write_bytes(b"\n".join(samples) + b"\n")
        certs = scratch / "certs"
        make_certs(certs, names=list(LOOPBACK_NAMES))
        port = free_port()
        server = start_webhook(certs, port, str(args.workers))
        try:
            load = Load(binary, port, certs / "ca.crt", requests, server.pid)
            load.run("warm-up", "/mutate", "-rate", str(args.rate), "-seconds", "1")
            rate = ["-rate", str(args.rate), "-seconds", seconds, "-ramp", str(RAMP_SECONDS)]
            floor = load.run("GET /healthz (floor)", "/healthz", *rate)
            normal = load.run("POST /mutate", "/mutate", *rate)
            closed = ["-mode", "closed", "-workers", str(args.connections)]
            closed += ["-seconds", str(SATURATION_SECONDS)]
            ceiling = load.run("GET /healthz back to back", "/healthz", *closed)
            saturation = load.run("POST /mutate back to back", "/mutate", *closed)
            phases = [floor, normal, ceiling, saturation]
            with contextlib.ExitStack() as stack:
                if confinement and not not_confined:
                    group = stack.enter_context(confinement).group
                    assert group is not None
                    confinement.move(process_tree(server.pid), group)
                    where = f"at {args.overload_cpu:g} CPU per worker"
                    saturation = load.run(f"  ... {where}", "/mutate", *closed)
                    phases.append(saturation)
                saturation_rate = saturation.outcomes["full"] / saturation.seconds
                overload = load.run(
                    f"POST /mutate at {OVERLOAD_FACTOR:g}x",
                    "/mutate",
                    "-rate",
                    str(OVERLOAD_FACTOR * saturation_rate),
                    "-seconds",
                    str(OVERLOAD_SECONDS),
                    "-ramp",
                    str(RAMP_SECONDS),
                )
                phases.append(overload)
            histograms = handler_times(port, certs / "ca.crt")
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    print(
        f"admission over TLS on loopback, webhook workers: {args.workers}; targets: p99 < 5 ms at "
        f"{args.rate:g}/s; at {OVERLOAD_FACTOR:g}x saturation p99 < 250 ms, all answered"
    )
    p50, p99 = statistics.median(baseline) * 1e3, percentile(baseline, 0.99) * 1e3
    print(f"{'admit() in-process':<24} {len(baseline):>6} calls p50 {p50:.3f} ms p99 {p99:.3f} ms")
    for phase in phases:
        report(phase)
    for name, shares in histograms.items():
        listed = ", ".join(f"{s:.2%} ≤ {b * 1e3:g} ms" for b, s in shares.items() if b <= 0.05)
        print(f"inside the webhook, {name} (all phases): {listed}")
    ratio = percentile(normal.latencies, 0.99) / percentile(floor.latencies, 0.99)
    print(f"normal: /mutate p99 is {ratio:.2f}x the /healthz floor's")
    ceiling_rate = ceiling.answered / ceiling.seconds
    full_cpu_rate = phases[3].outcomes["full"] / phases[3].seconds
    print(
        f"saturation: {full_cpu_rate:.0f} full answers/s = {full_cpu_rate / args.rate:.2f}x the "
        f"normal rate, {full_cpu_rate / ceiling_rate:.2f}x the /healthz ceiling "
        f"({ceiling_rate:.0f}/s)"
    )
    if confinement is None or not_confined:
        print(f"overload run on the webhook's full CPU ({not_confined})")
    else:
        print(
            f"overload run with {args.overload_cpu:g} CPU per worker (cgroup quota "
            f"{confinement.quota} us per {confinement.period} us): saturation "
            f"{saturation_rate:.0f}/s, {saturation_rate / full_cpu_rate:.2f}x the full-CPU one"
        )
    overload_p99 = percentile(overload.latencies, 0.99)
    print(
        f"overload: p99 {overload_p99 * 1e3:.1f} ms = "
        f"{overload_p99 / percentile(normal.latencies, 0.99):.1f}x the normal p99; "
        f"{overload.unanswered} unanswered; "
        f"{overload.outcomes['shed'] / max(1, overload.answered):.1%} shed"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
