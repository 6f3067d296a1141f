"""Record the websocket frames of two exec streams as they cross the wire, for replay tests.

    .venv/bin/python tests/data/exec/record.py

The fetch command of ``collector.pulling`` runs against ``sample.pcap`` (a real tcpdump capture,
60 UDP packets on loopback) and against a missing file, behind ``tests/collector/fakeapiserver.py``
speaking ``v4.channel.k8s.io``; a plain websocket client reads each frame and its channel byte.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from urllib.parse import urlencode

import websocket

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from collector.pulling import PullTarget, fetch_command  # noqa: E402
from tests.collector.fakeapiserver import FakeAPIServer  # noqa: E402

PROTOCOL = "v4.channel.k8s.io"


def record(api: FakeAPIServer, command: list[str]) -> dict[str, object]:
    query = urlencode(
        [("container", "netpol-sniffer-capture"), ("stdout", "true"), ("stderr", "true")]
        + [("command", part) for part in command]
    )
    url = api.host.replace("http://", "ws://") + f"/api/v1/namespaces/shop/pods/web-1/exec?{query}"
    connection = websocket.create_connection(url, subprotocols=[PROTOCOL])
    frames = []
    while True:
        opcode, frame = connection.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
        channel, data = frame.data[0], frame.data[1:]
        if channel == 3:  # the Status quotes the command: name the pod's directory, not ours
            data = data.replace(str(HERE).encode(), b"/captures")
        frames.append({"channel": channel, "data": base64.b64encode(data).decode("ascii")})
    connection.close()
    return {"protocol": PROTOCOL, "command": command, "frames": frames}


def main() -> None:
    target = PullTarget(
        namespace="shop", pod="web-1", container="netpol-sniffer-capture", directory=str(HERE)
    )
    size = (HERE / "sample.pcap").stat().st_size
    recordings = {
        "fetch-success.json": fetch_command(target, "sample.pcap", offset=0, count=size),
        "fetch-missing-file.json": fetch_command(target, "capture.pcap7", offset=0, count=10),
    }
    with FakeAPIServer() as api:
        for name, command in recordings.items():
            recorded = record(api, command)
            # the directory is this machine's; in a pod it is /captures
            recorded["command"] = [part.replace(str(HERE), "/captures") for part in command]
            (HERE / name).write_text(json.dumps(recorded, indent=1) + "\n")


if __name__ == "__main__":
    main()
