"""Admission latency over TLS under concurrent load (prints figures, asserts nothing).

Starts the real ``netpol-sniffer-webhook`` on 127.0.0.1 with certificates made by certs/, then sends
AdmissionReviews (the fixtures in tests/data/admission, each with a fresh uid) at a fixed rate over
a few keep-alive TLS connections, as an API server does. Latency is measured from each request's
*scheduled* send time to its full answer, so a stalled server cannot hide its queue (no
coordinated omission). Baselines from the same run: ``admit()`` called in-process (no HTTP, no TLS)
and ``GET /healthz`` over the same TLS connections at the same rate (the transport's floor).

Target (issue #3): p99 < 5 ms at 500 requests/s, zero errors.

    .venv/bin/python bench/admission_latency.py [--rate 500] [--seconds 10] [--connections 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certs.make_certs import LOOPBACK_NAMES, make_certs  # noqa: E402
from webhook.admission import admit  # noqa: E402
from webhook.settings import WebhookSettings  # noqa: E402

FIXTURES = ROOT / "tests" / "data" / "admission"
HOST = "127.0.0.1"


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    # How late a 1 ms sleep in the load generator wakes up: the machine's own scheduling stalls.
    stalls: list[float] = field(default_factory=list)
    errors: int = 0
    started: float = 0.0
    finished: float = 0.0
    server_cpu: float = 0.0  # CPU seconds the webhook process used during the phase
    client_cpu: float = 0.0  # and this load generator


def bodies() -> list[bytes]:
    """Every fixture review, each with a fresh uid (the mix: mostly injections, some skips)."""
    reviews = [json.loads(path.read_text()) for path in sorted(FIXTURES.glob("*.json"))]
    out = []
    for _ in range(20):
        for review in reviews:
            review["request"]["uid"] = str(uuid.uuid4())
            out.append(json.dumps(review).encode())
    return out


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    return status, await reader.readexactly(length)


async def load(
    port: int,
    context: ssl.SSLContext,
    make_request: Callable[[int], bytes],
    check: Callable[[int, bytes], bool],
    *,
    rate: float,
    seconds: float,
    connections: int,
) -> Run:
    """Open-loop load: request i is due at start + i/rate and waits for a free connection."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(
            await asyncio.open_connection(HOST, port, ssl=context, server_hostname=HOST)
        )
    run = Run()
    total = int(rate * seconds)

    async def one(index: int, due: float) -> None:
        reader, writer = await pool.get()
        try:
            writer.write(make_request(index))
            status, body = await read_response(reader)
            run.latencies.append(time.perf_counter() - due)
            if not check(status, body):
                run.errors += 1
        except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
            run.errors += 1
            reader, writer = await asyncio.open_connection(
                HOST, port, ssl=context, server_hostname=HOST
            )
        finally:
            pool.put_nowait((reader, writer))

    tasks = []

    async def watch_stalls() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            run.stalls.append(time.perf_counter() - before - 0.001)

    watcher = asyncio.create_task(watch_stalls())
    run.started = time.perf_counter()
    for index in range(total):
        due = run.started + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, due)))
    await asyncio.gather(*tasks)
    run.finished = time.perf_counter()
    watcher.cancel()
    while not pool.empty():
        _, writer = pool.get_nowait()
        writer.close()
    return run


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(name: str, run: Run) -> None:
    count = len(run.latencies)
    rate = count / (run.finished - run.started)
    p50, p99 = percentile(run.latencies, 0.50) * 1e3, percentile(run.latencies, 0.99) * 1e3
    print(
        f"{name:<22} {count:>6} requests  {rate:7.1f} req/s  errors {run.errors:<4} "
        f"p50 {p50:6.2f} ms  p90 {percentile(run.latencies, 0.90) * 1e3:6.2f} ms  "
        f"p99 {p99:6.2f} ms  max {max(run.latencies) * 1e3:6.2f} ms"
    )
    per_request = run.server_cpu / count
    print(
        f"{'':<22} webhook CPU {per_request * 1e3:.3f} ms/request "
        f"(one core saturates at ~{1 / per_request:.0f} req/s); "
        f"load generator CPU {run.client_cpu / count * 1e3:.3f} ms/request"
    )
    print(
        f"{'':<22} machine stalls (1 ms sleep overshoot): p99 "
        f"{percentile(run.stalls, 0.99) * 1e3:.2f} ms, max {max(run.stalls) * 1e3:.2f} ms"
    )


def handler_times(port: int, context: ssl.SSLContext) -> dict[float, float]:
    """The webhook's own latency histogram (body received → answer ready, all phases): the
    share of /mutate requests at or under each bucket bound, in seconds."""
    url = f"https://{HOST}:{port}/metrics"
    with urllib.request.urlopen(url, context=context, timeout=10) as answer:
        text = answer.read().decode()
    prefix = 'netpol_sniffer_admission_duration_seconds_bucket{le="'
    counts = {
        float(line[len(prefix) :].split('"')[0]): float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }
    total = counts[float("inf")]
    return {bound: count / total for bound, count in counts.items() if bound != float("inf")}


def in_process_baseline(samples: list[bytes]) -> list[float]:
    settings = WebhookSettings()
    latencies = []
    for body in samples * 5:
        started = time.perf_counter()
        admit(body, settings)
        latencies.append(time.perf_counter() - started)
    return latencies


async def measure(
    port: int, pid: int, context: ssl.SSLContext, args: argparse.Namespace
) -> tuple[Run, Run]:
    samples = bodies()

    def mutate(index: int) -> bytes:
        body = samples[index % len(samples)]
        return (
            f"POST /mutate HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def allowed(status: int, body: bytes) -> bool:
        return status == 200 and json.loads(body)["response"]["allowed"] is True

    def healthz(_: int) -> bytes:
        return f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()

    options = {"rate": args.rate, "seconds": args.seconds, "connections": args.connections}
    # Warm-up: connections, code paths, allocator.
    await load(
        port, context, mutate, allowed, rate=args.rate, seconds=1, connections=args.connections
    )
    before, client_before = cpu_seconds(pid), time.process_time()
    floor = await load(port, context, healthz, lambda status, _: status == 200, **options)
    middle, client_middle = cpu_seconds(pid), time.process_time()
    mutations = await load(port, context, mutate, allowed, **options)
    floor.server_cpu, mutations.server_cpu = middle - before, cpu_seconds(pid) - middle
    floor.client_cpu = client_middle - client_before
    mutations.client_cpu = time.process_time() - client_middle
    return floor, mutations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (500)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase, at most 60 (10)")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive TLS connections (4)")
    args = parser.parse_args()
    args.seconds = min(args.seconds, 60.0)
    samples = bodies()
    baseline = in_process_baseline(samples)
    with tempfile.TemporaryDirectory() as scratch:
        certs = Path(scratch)
        make_certs(certs, names=list(LOOPBACK_NAMES))
        port = free_port()
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
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            context = ssl.create_default_context(cafile=certs / "ca.crt")
            deadline = time.monotonic() + 20
            while True:
                try:
                    with socket.create_connection((HOST, port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        print("the webhook did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            # The client on uvloop too, so its own overhead stays small.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                floor, mutations = runner.run(measure(port, server.pid, context, args))
            handler = handler_times(port, context)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"admission latency over TLS on loopback: target p99 < 5 ms at {args.rate:g} req/s, "
        f"{args.connections} keep-alive connections, {len(samples) // 20} review kinds"
    )
    p50, p99 = statistics.median(baseline) * 1e3, percentile(baseline, 0.99) * 1e3
    print(
        f"{'admit() in-process':<22} {len(baseline):>6} calls     "
        f"p50 {p50:6.3f} ms  p99 {p99:6.3f} ms"
    )
    report("GET /healthz (floor)", floor)
    report("POST /mutate", mutations)
    shares = ", ".join(
        f"{share:.2%} ≤ {bound * 1e3:g} ms" for bound, share in handler.items() if bound <= 0.01
    )
    print(f"{'':<22} inside the webhook (its histogram, warm-up included): {shares}")
    p99_ratio = percentile(mutations.latencies, 0.99) / percentile(floor.latencies, 0.99)
    print(f"/mutate p99 is {p99_ratio:.2f}x the transport floor's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
