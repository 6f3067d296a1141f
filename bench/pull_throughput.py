"""How fast collect pulls capture files, and whether memory stays flat as they grow.

    .venv/bin/python bench/pull_throughput.py

One pod's ring of 4 capture files (1× = 8 MB each, 4× = 32 MB each) is pulled by
``collector.pulling.PodPuller`` two ways, each in its own process so peak RSS is its own:

- ``websocket``: the real path: the kubernetes client's exec websocket (``KubernetesCluster.exec``)
  against a local API server speaking v4.channel.k8s.io whose exec runs the pod's commands on this
  machine (tests/collector/fakeapiserver.py);
- ``local``: the baseline: the same commands and checksums without any websocket
  (tests/collector/localexec.py), i.e. what dd, sha256sum and the disk cost by themselves.

Prints MB/s, the websocket path as a fraction of the baseline, and peak RSS for 1× and 4×.
Asserts nothing.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FILES = 4
FILE_MB_1X = 8


def pull_once(mode: str, file_mb: int) -> dict[str, float]:
    from kubernetes import client as k8s_client

    from collector.kube import KubernetesCluster
    from collector.pulling import PodPuller, PullTarget
    from tests.collector.fakeapiserver import FakeAPIServer
    from tests.collector.localexec import LocalExec

    with tempfile.TemporaryDirectory(prefix="pull-bench-") as scratch:
        pod_dir = Path(scratch) / "captures"
        pod_dir.mkdir()
        chunk = os.urandom(1 << 20)
        for number in range(FILES):
            with (pod_dir / f"capture.pcap{number}").open("wb") as out:
                for _ in range(file_mb):
                    out.write(chunk)
        target = PullTarget(namespace="bench", pod="pod-0", container="c", directory=str(pod_dir))
        destination = Path(scratch) / "bundle"
        partials = Path(scratch) / "partial"
        started = time.perf_counter()
        if mode == "websocket":
            with FakeAPIServer() as api:
                configuration = k8s_client.Configuration()
                configuration.host = api.host
                cluster = KubernetesCluster(configuration)
                report = PodPuller(
                    cluster.exec, target, destination, partial_directory=partials
                ).pull()
        else:
            report = PodPuller(LocalExec(), target, destination, partial_directory=partials).pull()
        seconds = time.perf_counter() - started
        assert report.failures == (), report.failures
    return {
        "seconds": seconds,
        "megabytes": report.bytes_fetched / 1e6,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(mode: str, file_mb: int) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, __file__, "--one", mode, str(file_mb)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    figures: dict[str, float] = json.loads(result.stdout)
    return figures


def main() -> None:
    print(f"pulling one pod's ring of {FILES} capture files (sha256-checked, streamed to disk)")
    rows = {}
    for scale in (1, 4):
        for mode in ("local", "websocket"):
            figures = measure(mode, FILE_MB_1X * scale)
            rows[(mode, scale)] = figures
            rate = figures["megabytes"] / figures["seconds"]
            print(
                f"  {mode:>9} {scale}× ({FILE_MB_1X * scale} MB files): {rate:7.1f} MB/s, "
                f"peak RSS {figures['max_rss_mb']:.0f} MB"
            )
    for scale in (1, 4):
        local = rows[("local", scale)]
        ws = rows[("websocket", scale)]
        ratio = (ws["megabytes"] / ws["seconds"]) / (local["megabytes"] / local["seconds"])
        print(f"  websocket / local throughput at {scale}×: {ratio:.2f}")
    growth = rows[("websocket", 4)]["max_rss_mb"] - rows[("websocket", 1)]["max_rss_mb"]
    print(f"  websocket peak RSS growth from 1× to 4× the file size: {growth:+.0f} MB")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(pull_once(sys.argv[2], int(sys.argv[3]))))
    else:
        main()
