"""Network namespaces, veth pairs, addresses and routes: the only module that runs ``ip``.

Topology: one "node" namespace routes between every pod namespace and the outside world
namespace over point-to-point veth pairs (no bridge): a pod has its IPs as /32 and /128 on
``eth0`` and a default route to a link-local gateway whose neighbour entry is the node side of
its veth; the node has a /32 (/128) route per pod IP. Static neighbour entries keep ARP and NDP
out of the way. Nothing is created in the host's own namespace, so removing the lab's namespaces
removes everything (iptables rules live in the node namespace too).

Every name starts with ``nps-<pid>-``: a later run removes the namespaces of runs whose process is
gone (killed runs), and a run removes its own on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kernel.errors import LabError, NeedsRoot

PREFIX = "nps-"
GATEWAY_V4 = "169.254.1.1"
GATEWAY_V6 = "fe80::1"
OUTSIDE_VETH = "vext"  # the node's side of the outside world's veth
REQUIRED_TOOLS = ("ip", "iptables-restore", "ip6tables-restore", "tcpdump")


def require_root() -> None:
    if os.geteuid() != 0:
        raise NeedsRoot(
            "the lab needs root: it creates network namespaces, iptables rules and runs tcpdump "
            "(run it with sudo; 'netpol-sniffer demo' falls back to the recorded bundle)"
        )
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise LabError(
            f"the lab needs {', '.join(missing)} (Debian: apt-get install iproute2 "
            "iptables tcpdump)"
        )


def ipv6_available() -> bool:
    try:
        with open("/proc/sys/net/ipv6/conf/all/disable_ipv6", encoding="ascii") as file:
            return file.read().strip() == "0"
    except OSError:
        return False


def run(argv: Sequence[str], *, input_text: str | None = None) -> str:
    """Run a command, turning a failure into a LabError that shows it and its stderr."""
    try:
        done = subprocess.run(
            list(argv), input=input_text, capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LabError(f"{' '.join(argv)}: {error}") from error
    if done.returncode != 0:
        detail = done.stderr.strip() or done.stdout.strip()
        raise LabError(f"{' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''} failed: {detail}")
    return done.stdout


def in_namespace(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns``."""
    return ["ip", "netns", "exec", netns, *argv]


def batch(netns: str, commands: Iterable[str]) -> None:
    lines = "\n".join(commands) + "\n"
    run(["ip", "-n", netns, "-batch", "-"], input_text=lines)


def sysctl(netns: str, settings: dict[str, str]) -> None:
    run(in_namespace(netns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())]))


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pids(netns: str) -> list[int]:
    try:
        out = run(["ip", "netns", "pids", netns])
    except LabError:
        return []
    return [int(pid) for pid in out.split()]


def delete_namespace(netns: str) -> None:
    """Kill what still runs inside, then delete the namespace (and with it its interfaces)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids(netns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while _pids(netns) and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        run(["ip", "netns", "delete", netns])
    except LabError:
        if netns in list_namespaces():
            raise


def process_alive(pid: int) -> bool:
    """Whether a process of this pid exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(names: Iterable[str], *, own_pid: int) -> list[str]:
    """Lab namespaces of runs that are over: their process is gone (or is this process)."""
    result = []
    for name in names:
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or int(owner) == own_pid or not process_alive(int(owner)):
            result.append(name)
    return result


def remove_leftovers() -> list[str]:
    """Delete the namespaces earlier (killed) runs left behind; returns their names."""
    stale = leftovers(list_namespaces(), own_pid=os.getpid())
    for name in stale:
        delete_namespace(name)
    return stale


def _mac(slot: int, side: int) -> str:
    return f"02:6e:{(slot >> 16) & 0xFF:02x}:{(slot >> 8) & 0xFF:02x}:{slot & 0xFF:02x}:{side:02x}"


def host_prefix(address: str) -> str:
    return f"{address}/128" if ":" in address else f"{address}/32"


@dataclass(frozen=True, slots=True)
class Host:
    """A namespace attached to the node: a pod, or the outside world."""

    netns: str
    veth: str  # the node side's name
    slot: int
    addresses: tuple[str, ...]


class Network:
    """The lab's namespaces, all named ``nps-<pid>-...``; ``close`` removes every one."""

    def __init__(self) -> None:
        self.run_prefix = f"{PREFIX}{os.getpid()}-"
        self.node = f"{self.run_prefix}node"
        self.created: list[str] = []

    def name(self, suffix: str) -> str:
        return f"{self.run_prefix}{suffix}"

    def _add_namespace(self, netns: str) -> None:
        run(["ip", "netns", "add", netns])
        self.created.append(netns)

    def create_node(self, addresses: Sequence[str], *, ipv6: bool) -> None:
        self._add_namespace(self.node)
        settings = {
            "net.ipv4.ip_forward": "1",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
        }
        if ipv6:
            settings["net.ipv6.conf.all.forwarding"] = "1"
        sysctl(self.node, settings)
        batch(
            self.node,
            [
                "link set lo up",
                # the node's own addresses sit on lo (no dummy interfaces without kernel modules)
                *(
                    f"addr add {host_prefix(a)} dev lo{' nodad' if ':' in a else ''}"
                    for a in addresses
                ),
            ],
        )

    def attach(self, host: Host) -> None:
        """Create ``host.netns`` and wire it to the node with its addresses."""
        self._add_namespace(host.netns)
        node_mac, host_mac = _mac(host.slot, 1), _mac(host.slot, 2)
        node_side = [
            f"link add {host.veth} address {node_mac} type veth peer name eth0 "
            f"address {host_mac} netns {host.netns}",
            f"link set {host.veth} up",
        ]
        host_side = [
            "link set lo up",
            "link set eth0 up",
            f"route add {GATEWAY_V4} dev eth0 scope link",
            f"route add default via {GATEWAY_V4} dev eth0",
            f"neigh replace {GATEWAY_V4} lladdr {node_mac} dev eth0 nud permanent",
        ]
        has_v6 = any(":" in a for a in host.addresses)
        if has_v6:
            host_side += [
                f"neigh replace {GATEWAY_V6} lladdr {node_mac} dev eth0 nud permanent",
                f"route add ::/0 via {GATEWAY_V6} dev eth0",
            ]
        for address in host.addresses:
            node_side += [
                f"route replace {host_prefix(address)} dev {host.veth}",
                f"neigh replace {address} lladdr {host_mac} dev {host.veth} nud permanent",
            ]
            host_side.insert(
                2, f"addr add {host_prefix(address)} dev eth0{' nodad' if ':' in address else ''}"
            )
        batch(self.node, node_side)
        batch(host.netns, host_side)

    def detach(self, host: Host) -> None:
        """Delete a host's namespace (its veth and the node's routes through it go with it)."""
        delete_namespace(host.netns)
        if host.netns in self.created:
            self.created.remove(host.netns)

    def close(self) -> None:
        """Remove every namespace this run created, pods first, the node last."""
        errors = []
        for netns in reversed(self.created):
            try:
                delete_namespace(netns)
            except LabError as error:
                errors.append(str(error))
        self.created.clear()
        if errors:
            raise LabError("could not remove: " + "; ".join(errors))
