"""The process that plays one pod: ``ip netns exec NS python -m lab.agent CONFIG.json``.

It listens on the pod's ports (or serves the cluster DNS), then follows the orchestrator's
commands, one JSON object per line on stdin, and reports on stdout:

    → {"event": "ready"}                     after every listener is up
    ← {"cmd": "open"}       → {"event": "opened"}   long-lived connections connected
    ← {"cmd": "start", "duration": S}  → {"event": "done", "results": [...]}  after S seconds
    ← {"cmd": "stop"}                         end the calls early (the pod is being deleted)
    ← {"cmd": "records", "records": {...}}   the DNS pod's new table
    ← {"cmd": "probes", "targets": [[ip, port], ...]}   the kubelet's new probe targets
    ← {"cmd": "reset"}                        the kubelet counts probes from now on (the window)
    ← {"cmd": "exit"} or end of stdin         close everything and exit
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from lab import dns, servers, traffic


def _say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def run(config: dict[str, Any]) -> None:
    listens = [servers.Listen(**entry) for entry in config["listen"]]
    closers = await servers.serve(listens, config.get("identity"))
    dns_server = None
    if config.get("dns_records") is not None:
        dns_server = dns.DnsServer(config["dns_records"])
        await dns_server.start()
    resolver = traffic.Resolver(
        config["resolver"]["nameserver"],
        config["resolver"]["search"],
        config["resolver"].get("hosts"),
    )
    calls = [traffic.CallSpec.from_json(entry) for entry in config["calls"]]
    client = traffic.Client(config["pod"], resolver, calls)
    prober = None
    probing: asyncio.Task[None] | None = None
    if config.get("probes") is not None:
        prober = traffic.Prober([(a, p) for a, p in config["probes"]])
        probing = asyncio.create_task(prober.run())
    commands = await _commands()
    running: asyncio.Task[None] | None = None

    def report() -> None:
        extra = {} if prober is None else {"probes": prober.to_json()}
        _say("done", results=[r.to_json() for r in client.results.values()], **extra)

    async def window(duration: float) -> None:
        try:
            await client.run(duration)
        finally:
            await client.close_long_lived()
            report()

    _say("ready")
    try:
        while line := await commands.readline():
            command = json.loads(line)
            match command["cmd"]:
                case "open":
                    await client.open_long_lived()
                    _say("opened")
                case "start":
                    running = asyncio.create_task(window(float(command["duration"])))
                case "stop":
                    if running is not None and not running.done():
                        running.cancel()
                        await asyncio.gather(running, return_exceptions=True)
                    else:
                        report()
                case "records":
                    if dns_server is not None:
                        dns_server.update(command["records"])
                case "probes":
                    if prober is not None:
                        prober.targets = [(a, p) for a, p in command["targets"]]
                case "reset":
                    if prober is not None:
                        prober.reset()
                case "exit":
                    break
    finally:
        for task in (running, probing):
            if task is not None and not task.done():
                task.cancel()
        for closer in closers:
            closer.close()
        if dns_server is not None:
            dns_server.close()


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as file:
        config = json.load(file)
    asyncio.run(run(config))


if __name__ == "__main__":
    main()
