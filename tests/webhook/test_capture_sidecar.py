"""The capture image's entrypoint (meta.json, then exec) and tcpdump under the sidecar's exact
capabilities."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from analyser.snapshot import parse_capture_meta
from webhook.capture import CaptureOptions, SidecarResources, sidecar_container
from webhook.settings import DEFAULT_RESOURCES

ENTRYPOINT = (
    Path(__file__).resolve().parents[2] / "webhook" / "capture-image" / "netpol-sniffer-capture"
)
# The image's /bin/sh is dash, like this machine's.
SHELL = "/bin/sh"


def container_env(tmp_path: Path, **values: str) -> dict[str, str]:
    """The environment the kubelet gives the sidecar, with the downward API values filled in."""
    container = sidecar_container(
        CaptureOptions(directory=str(tmp_path / "captures")),
        image="capture:test",
        image_pull_policy="IfNotPresent",
        resources=DEFAULT_RESOURCES,
        native=True,
    )
    env: dict[str, str] = {"PATH": os.environ["PATH"]}
    entries: list[dict[str, Any]] = container["env"]  # type: ignore[assignment]
    for entry in entries:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
    env["NETPOL_SNIFFER_LABELS_FILE"] = str(tmp_path / "labels")
    env.update(values)
    return env


def run_entrypoint(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHELL, str(ENTRYPOINT), *argv], env=env, capture_output=True, text=True, timeout=30
    )


def test_meta_json_from_the_downward_api_then_exec(tmp_path: Path) -> None:
    (tmp_path / "labels").write_text(
        'app="frontend"\npod-template-hash="7c9d8b6f5d"\nexample.com/tier="web"'  # no final newline
    )
    env = container_env(
        tmp_path,
        NETPOL_SNIFFER_POD_NAME="frontend-7c9d8b6f5d-x2b7q",
        NETPOL_SNIFFER_POD_NAMESPACE="shop",
        NETPOL_SNIFFER_POD_UID="0f4c8a2e-1d3b-4c5a-9e7f-8b6d4a2c0e1f",
        NETPOL_SNIFFER_POD_IPS="10.244.1.17,fd00:10:244:1::11",
        NETPOL_SNIFFER_NODE_NAME="worker-1",
    )
    # The command reports its pid: exec means the shell's pid is the command's.
    script = "import os; print(os.getpid())"
    process = subprocess.Popen(
        [SHELL, str(ENTRYPOINT), sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert int(out) == process.pid
    meta_path = tmp_path / "captures" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["pod"] == "frontend-7c9d8b6f5d-x2b7q"
    assert meta["ips"] == ["10.244.1.17", "fd00:10:244:1::11"]
    assert meta["labels"] == {
        "app": "frontend",
        "pod-template-hash": "7c9d8b6f5d",
        "example.com/tier": "web",
    }
    assert meta["capture_mode"] == "handshake"
    # The analyser reads it as the bundle format says.
    parsed = parse_capture_meta(meta, source=str(meta_path))
    assert (parsed.namespace, parsed.pod, parsed.node) == ("shop", meta["pod"], "worker-1")
    assert parsed.uid == "0f4c8a2e-1d3b-4c5a-9e7f-8b6d4a2c0e1f"
    assert parsed.start_time is not None and abs(parsed.start_time - time.time()) < 120
    assert not list((tmp_path / "captures").glob("*.tmp"))


def test_missing_inputs_still_give_valid_json(tmp_path: Path) -> None:
    env = container_env(tmp_path, NETPOL_SNIFFER_POD_NAME='odd"name\\')
    result = run_entrypoint(env, "true")
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "captures" / "meta.json").read_text())
    assert meta["pod"] == 'odd"name\\'
    assert meta["ips"] == [] and meta["labels"] == {} and meta["namespace"] == ""


def test_no_command_is_an_error(tmp_path: Path) -> None:
    result = run_entrypoint(container_env(tmp_path))
    assert result.returncode == 64
    assert "no command" in result.stderr


def pcap_records(data: bytes) -> int:
    """How many whole records a classic pcap file holds (its 24-byte header, then records of a
    16-byte header and incl_len bytes)."""
    assert data[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"), "not a pcap file"
    order = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    offset, count = 24, 0
    while offset + 16 <= len(data):
        (captured,) = struct.unpack_from(f"{order}I", data, offset + 8)
        offset += 16 + captured
        count += offset <= len(data)
    return count


def _capture_with(capabilities: list[str], tmp_path: Path) -> tuple[int, str, Path]:
    """Run the sidecar's entrypoint + tcpdump argv on loopback with only these capabilities (as
    root, no_new_privs), make a TCP handshake, stop it; → (exit status, stderr, captures dir)."""
    options = CaptureOptions(directory=str(tmp_path / "captures"), interface="lo")
    resources = SidecarResources("10m", "16Mi", "200m", "64Mi")
    container = sidecar_container(
        options, image="capture:test", image_pull_policy="Never", resources=resources, native=True
    )
    args: list[str] = container["args"]  # type: ignore[assignment]
    (tmp_path / "captures").mkdir(mode=0o777)
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in capabilities)])
    process = subprocess.Popen(
        [
            "setpriv",
            f"--bounding-set={bounding}",
            "--inh-caps=-all",
            "--no-new-privs",
            SHELL,
            str(ENTRYPOINT),
            *args,
        ],
        env=container_env(tmp_path),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            port = server.getsockname()[1]
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.3)  # tcpdump attaches its filter, then delivers in blocks
                with socket.create_connection(("127.0.0.1", port)):
                    server.accept()[0].close()
                # More than the 24-byte pcap header: a packet was written.
                if any(
                    f.stat().st_size > 24 for f in (tmp_path / "captures").glob("capture.pcap*")
                ):
                    break
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    return process.returncode, stderr, tmp_path / "captures"


@pytest.mark.root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_tcpdump_runs_with_exactly_the_sidecars_capabilities(tmp_path: Path) -> None:
    container = sidecar_container(
        CaptureOptions(),
        image="i",
        image_pull_policy="Never",
        resources=DEFAULT_RESOURCES,
        native=True,
    )
    security: dict[str, Any] = container["securityContext"]  # type: ignore[assignment]
    assert security["capabilities"]["drop"] == ["ALL"]
    _, stderr, captures = _capture_with(security["capabilities"]["add"], tmp_path)
    files = sorted(captures.glob("capture.pcap*"))
    assert files, stderr
    assert pcap_records(files[0].read_bytes()) >= 1, stderr  # at least the SYN
    assert json.loads((captures / "meta.json").read_text())["capture_mode"] == "handshake"


@pytest.mark.root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_net_raw_alone_is_not_enough_for_tcpdump(tmp_path: Path) -> None:
    # Why the sidecar also keeps SETGID: tcpdump -Z root still calls initgroups().
    status, stderr, captures = _capture_with(["NET_RAW"], tmp_path)
    assert status != 0
    assert "Couldn't change to 'root'" in stderr
    assert not list(captures.glob("capture.pcap*"))
