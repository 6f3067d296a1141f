"""Orchestration: manifests + plan → a running simulated cluster → a bundle, and everything removed
afterwards (on success, failure, Ctrl-C and SIGTERM alike).

Order of a run: remove what killed runs left; build the node, pod and outside-world namespaces;
load the Service rules; start one agent per pod (servers, DNS, clients) and wait until all listen;
open the long-lived connections; start tcpdump in every captured pod (or once on the node, with
``vantage`` node); start the window; play the restarts at their times; collect the agents'
results; stop the captures; write the bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import lab
from kernel.bundles import CAPTURES, node_capture_folder
from kernel.capture import CaptureMode
from kernel.errors import LabError
from lab import bundling, capturing, netns, services
from lab.layouts import (
    DNS_SERVICE_V4,
    DNS_WORKLOAD,
    NODE_IPV4,
    NODE_IPV6,
    NODE_NAME,
    POD_CIDR_V4,
    POD_CIDR_V6,
    LabPod,
    Layout,
    build_layout,
    dns_records,
    search_path,
)
from lab.manifests import ClusterSpec, read_manifests
from lab.plans import Expect, Family, Restart, TrafficPlan, read_plan
from webhook.capture import CaptureOptions

READY_TIMEOUT = 30.0
SETTLE_SECONDS = 0.5  # after the last call, before the captures stop
OUTSIDE_SLOT = 0xFFFF

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class LabOptions:
    manifests: tuple[Path, ...]
    plan: Path
    out: Path
    capture_mode: CaptureMode = CaptureMode.HANDSHAKE
    duration: float | None = None  # None: the plan's
    vantage: capturing.Vantage = capturing.Vantage.POD  # a sidecar per pod, or the node's capture


@dataclass(frozen=True, slots=True)
class LabResult:
    out: Path
    truth: list[dict[str, Any]]
    report: dict[str, Any]
    seconds: float  # wall time of the whole run, setup and teardown included


def load(options: LabOptions) -> tuple[ClusterSpec, TrafficPlan]:
    """Read and check the inputs (no root needed)."""
    sources = []
    for path in options.manifests:
        try:
            sources.append((str(path), path.read_text(encoding="utf-8")))
        except OSError as error:
            raise LabError(f"cannot read manifests {path}: {error.strerror}") from error
    try:
        plan_text = options.plan.read_text(encoding="utf-8")
    except OSError as error:
        raise LabError(f"cannot read traffic plan {options.plan}: {error.strerror}") from error
    return read_manifests(sources), read_plan(str(options.plan), plan_text)


def prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LabError(f"{out} exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt where the run is, so the clean-up below runs.

    Ctrl-C too, rather than asyncio.run's own handling (which cancels the main task): on Python
    3.11 ``asyncio.wait_for`` can lose a cancellation that comes as the awaited line arrives
    (fixed in 3.12), and the run then went on to its end as if never interrupted."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """A second Ctrl-C (or SIGTERM) during the clean-up must not cut it short."""
    try:
        previous = {
            sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)
        }
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_lab(options: LabOptions, *, log: Log = lambda _: None) -> LabResult:
    """Run the lab and write the bundle to ``options.out``."""
    started = time.monotonic()
    cluster, plan = load(options)
    netns.require_root()
    if plan.dual_stack and not netns.ipv6_available():
        raise LabError(
            "the plan is dual-stack but IPv6 is disabled here (net.ipv6.conf.all.disable_ipv6 = 1)"
        )
    duration = options.duration if options.duration is not None else plan.duration
    prepare_out(options.out)
    with _signals_interrupt():
        stale = netns.remove_leftovers()
        if stale:
            log(f"removed {len(stale)} namespaces left by an earlier run")
        layout = build_layout(cluster, plan, now=time.time())
        network = netns.Network()
        workdir = Path(tempfile.mkdtemp(prefix="nps-lab-"))
        run = _Run(layout, network, workdir, options, duration, log)
        written = False
        try:
            asyncio.run(run.main())
            written = True
        finally:
            with _uninterrupted():
                network.close()
                shutil.rmtree(workdir, ignore_errors=True)
                if not written:  # half a bundle is no bundle: the next run may use --out again
                    shutil.rmtree(options.out, ignore_errors=True)
    unmet = unmet_expectations(plan, run.report["calls"])
    if unmet:
        raise LabError(
            f"the lab did not behave as planned (bundle kept in {options.out}): " + "; ".join(unmet)
        )
    return LabResult(options.out, run.truth, run.report, time.monotonic() - started)


def unmet_expectations(plan: TrafficPlan, calls: list[dict[str, Any]]) -> list[str]:
    unmet = []
    for call, totals in zip(plan.calls, calls, strict=True):
        what = f"{call.client} → {call.host}:{call.port}/{call.protocol}"
        if call.expect is Expect.OK and not totals["ok"]:
            unmet.append(f"{what} never succeeded ({_counts(totals)})")
        elif call.expect is Expect.REFUSED and (totals["ok"] or not totals["refused"]):
            unmet.append(f"{what} was meant to be refused ({_counts(totals)})")
        elif call.expect is Expect.NXDOMAIN and (totals["ok"] or not totals["nxdomain"]):
            unmet.append(f"{what} was meant not to resolve ({_counts(totals)})")
    return unmet


def _counts(totals: dict[str, Any]) -> str:
    counts = ", ".join(
        f"{k} {totals[k]}" for k in ("attempts", "ok", "refused", "nxdomain", "failed")
    )
    return counts + "".join(f"; {error}" for error in totals["errors"])


@dataclass
class _Agent:
    pod: LabPod | None  # None: the outside world or the kubelet
    label: str
    netns: str
    process: asyncio.subprocess.Process
    log_path: Path
    capture: capturing.Capture | None = None
    results: list[dict[str, Any]] | None = None

    async def send(self, command: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"cmd": command, **fields}) + "\n").encode())
        await self.process.stdin.drain()

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = await asyncio.wait_for(
                    self.process.stdout.readline(), max(deadline - time.monotonic(), 0.01)
                )
            except TimeoutError:
                raise LabError(
                    f"agent of {self.name} did not say {event!r} in time{self._stderr()}"
                ) from None
            if not line:
                raise LabError(f"agent of {self.name} exited{self._stderr()}")
            message: dict[str, Any] = json.loads(line)
            if message.get("event") == "done" and self.results is None:
                self.results = message["results"]
            if message.get("event") == event:
                return message

    @property
    def name(self) -> str:
        return self.pod.key if self.pod is not None else self.label

    def _stderr(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return f": {text[-800:]}" if text else ""

    async def finish(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ConnectionError):
                await self.send("exit")
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@dataclass
class _Run:
    layout: Layout
    network: netns.Network
    workdir: Path
    options: LabOptions
    duration: float
    log: Log
    agents: list[_Agent] = field(default_factory=list)
    finished: list[_Agent] = field(default_factory=list)
    pod_events: list[dict[str, Any]] = field(default_factory=list)
    restarts_done: list[dict[str, Any]] = field(default_factory=list)
    truth: list[dict[str, Any]] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    window_start: float = 0.0
    kubelet: _Agent | None = None
    probed: list[tuple[str, int, str]] = field(default_factory=list)  # (server, port, peer)
    node_capture: capturing.Capture | None = None

    @property
    def capture_options(self) -> CaptureOptions:
        return CaptureOptions(mode=self.options.capture_mode)

    def _host(self, pod: LabPod) -> netns.Host:
        return netns.Host(self.network.name(f"p{pod.index}"), f"v{pod.index}", pod.index, pod.ips)

    def _captured(self, pod: LabPod) -> bool:
        """Whether ``pod`` gets a sidecar (on the node's capture, no pod does)."""
        return self.options.vantage is capturing.Vantage.POD and pod.namespace in (
            bundling.captured_namespaces(self.layout)
        )

    async def main(self) -> None:
        try:
            await self._play()
        finally:
            if self.node_capture is not None:
                self.node_capture.stop()
            for agent in [*self.agents, *filter(None, [self.kubelet])]:
                if agent.capture is not None:
                    agent.capture.stop()
                await agent.finish()

    async def _play(self) -> None:
        layout = self.layout
        node_ips = [NODE_IPV4, NODE_IPV6] if layout.dual_stack else [NODE_IPV4]
        self.network.create_node(node_ips, ipv6=layout.dual_stack)
        for pod in layout.pods:
            self.network.attach(self._host(pod))
        if self._outside_addresses():
            self.network.attach(
                netns.Host(
                    self.network.name("ext"),
                    netns.OUTSIDE_VETH,
                    OUTSIDE_SLOT,
                    self._outside_addresses(),
                )
            )
        services.apply(self.network, layout)
        self.log(
            f"cluster built: {len(layout.pods)} pods, {len(layout.services)} Services, "
            f"{len(layout.externals)} outside names"
        )
        for pod in layout.pods:
            self.agents.append(await self._spawn(pod))
        if self._outside_addresses():
            self.agents.append(await self._spawn_outside())
        for agent in self.agents:
            await agent.expect("ready", READY_TIMEOUT)
        self.kubelet = await self._spawn_kubelet()  # once the servers listen
        await self.kubelet.expect("ready", READY_TIMEOUT)
        for agent in self.agents:
            await agent.send("open")
            await agent.expect("opened", READY_TIMEOUT)
        captures = [
            (agent, self._start_capture(agent))
            for agent in self.agents
            if agent.pod is not None and self._captured(agent.pod)
        ]
        for agent, pending in captures:
            agent.capture = await asyncio.to_thread(pending)
        if self.options.vantage is capturing.Vantage.NODE:
            self.node_capture = await asyncio.to_thread(self._start_node_capture)
        self.window_start = time.time()
        for pod in layout.pods:
            self.pod_events.append(bundling.pod_ip_event(pod, "ADDED", pod.created))
        self.log(f"capturing ({self.options.capture_mode}) for {self.duration:g}s")
        for agent in self.agents:
            await agent.send("start", duration=self.duration)
        await self.kubelet.send("reset")
        restarts = [asyncio.create_task(self._restart(r)) for r in layout.plan.restarts]
        await asyncio.gather(*restarts)
        for agent in self.agents:
            if agent.results is None:
                await agent.expect("done", self.duration + READY_TIMEOUT)
        await self.kubelet.send("stop")
        probes = (await self.kubelet.expect("done", READY_TIMEOUT))["probes"]
        await asyncio.sleep(SETTLE_SECONDS)
        for agent in self.agents:
            if agent.capture is not None:
                agent.capture.stop()
        if self.node_capture is not None:
            self.node_capture.stop()
        self.report["probes"] = {"ok": probes["ok"], "failed": probes["failed"]}
        self.probed = [(str(s), int(p), str(peer)) for s, p, peer in probes["servers"]]
        window_end = time.time()
        self._conclude(window_end)

    def _start_capture(self, agent: _Agent) -> Callable[[], capturing.Capture]:
        pod = agent.pod
        assert pod is not None
        directory = self.options.out / CAPTURES / pod.namespace / pod.name

        info = capturing.PodInfo(pod.name, pod.namespace, pod.uid, pod.ips, NODE_NAME, pod.labels)

        def start() -> capturing.Capture:
            return capturing.start(
                agent.netns, directory, self.capture_options, pod=info, scratch=self.workdir
            )

        return start

    def _start_node_capture(self) -> capturing.Capture:
        """The node-capture DaemonSet's tcpdump, on every interface of the node namespace."""
        dual = self.layout.dual_stack
        return capturing.start_on_node(
            self.network.node,
            self.options.out / node_capture_folder(NODE_NAME),
            self.capture_options,
            node=NODE_NAME,
            addresses=(NODE_IPV4, NODE_IPV6) if dual else (NODE_IPV4,),
            networks=(str(POD_CIDR_V4), str(POD_CIDR_V6)) if dual else (str(POD_CIDR_V4),),
        )

    async def _launch(
        self, name: str, netns_name: str, config: dict[str, Any]
    ) -> tuple[asyncio.subprocess.Process, Path]:
        config_path = self.workdir / f"{name}.json"
        config_path.write_text(json.dumps(config))
        log_path = self.workdir / f"{name}.log"
        env = dict(os.environ)
        package_root = str(Path(lab.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        with log_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *netns.in_namespace(
                    netns_name, [sys.executable, "-m", "lab.agent", str(config_path)]
                ),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
                start_new_session=True,
            )
        return process, log_path

    def _outside_addresses(self) -> tuple[str, ...]:
        """The outside world's own addresses: its servers' and its clients'."""
        served = [ip for external in self.layout.externals for ip in external.ips]
        return (*served, *self.layout.outside_clients())

    def _calls(self, client: str) -> list[dict[str, Any]]:
        return [
            {
                "id": number,
                "host": call.host,
                "port": call.port,
                "protocol": call.protocol,
                "every": call.every,
                "ipv6": call.family is Family.IPV6,
                "long_lived": call.long_lived,
                "source": call.outside_address,
            }
            for number, call in enumerate(self.layout.plan.calls)
            if call.client == client
        ]

    async def _spawn(self, pod: LabPod) -> _Agent:
        calls = self._calls(pod.workload.ref)
        is_dns = pod.workload.ref == DNS_WORKLOAD
        config: dict[str, Any] = {
            "pod": pod.key,
            "identity": pod.workload.ref,
            # SCTP is not served (no kernel module to count on); the DNS pod serves 53 itself
            "listen": [
                {"port": p.port, "protocol": p.protocol, "address": None}
                for p in sorted(set(pod.workload.ports))
                if p.protocol != "SCTP" and not (is_dns and p.port == 53)
            ],
            "resolver": {"nameserver": DNS_SERVICE_V4, "search": list(search_path(pod.namespace))},
            "calls": calls,
            "dns_records": dns_records(self.layout) if is_dns else None,
        }
        host = self._host(pod)
        process, log_path = await self._launch(f"p{pod.index}-{pod.name}", host.netns, config)
        return _Agent(pod, pod.key, host.netns, process, log_path)

    async def _spawn_outside(self) -> _Agent:
        listen = [
            {"port": port, "protocol": protocol, "address": ip}
            for external in self.layout.externals
            for ip in external.ips
            for port, protocol in external.host.ports
        ]
        # outside clients know the LoadBalancers' addresses by the names the plan uses
        hosts = {}
        for call in self.layout.plan.calls:
            balancer = self.layout.load_balancer(call.host)
            if call.outside_address is not None and balancer is not None:
                hosts[call.host] = list(balancer.load_balancer_ips)
        config = {
            "pod": "outside",
            "identity": None,
            "listen": listen,
            "resolver": {"nameserver": DNS_SERVICE_V4, "search": [], "hosts": hosts},
            "calls": [c for a in self.layout.outside_clients() for c in self._calls(f"ip:{a}")],
            "dns_records": None,
        }
        netns_name = self.network.name("ext")
        process, log_path = await self._launch("outside", netns_name, config)
        return _Agent(None, "the outside world", netns_name, process, log_path)

    def _probe_targets(self) -> list[tuple[str, int]]:
        return [(pod.ips[0], port) for pod in self.layout.pods for port in pod.workload.probe_ports]

    async def _spawn_kubelet(self) -> _Agent:
        """The node's kubelet, probing every pod's probe ports from the node's address."""
        config = {
            "pod": "kubelet",
            "identity": None,
            "listen": [],
            "resolver": {"nameserver": DNS_SERVICE_V4, "search": []},
            "calls": [],
            "dns_records": None,
            "probes": self._probe_targets(),
        }
        process, log_path = await self._launch("kubelet", self.network.node, config)
        return _Agent(None, "the kubelet", self.network.node, process, log_path)

    async def _publish(self) -> None:
        """Pods changed: reload the Service rules, the DNS table and the kubelet's probes."""
        services.apply(self.network, self.layout)
        if self.kubelet is not None:
            await self.kubelet.send("probes", targets=self._probe_targets())
        for agent in self.agents:
            if agent.pod is not None and agent.pod.workload.ref == DNS_WORKLOAD:
                await agent.send("records", records=dns_records(self.layout))

    async def _delete(self, pod: LabPod) -> None:
        agent = next(a for a in self.agents if a.pod is pod)
        self.layout.remove_pod(pod)
        await self._publish()
        if agent.results is None:
            await agent.send("stop")
            await agent.expect("done", READY_TIMEOUT)
        if agent.capture is not None:
            agent.capture.stop()
        await agent.finish()
        self.agents.remove(agent)
        self.finished.append(agent)
        self.network.detach(self._host(pod))
        self.pod_events.append(bundling.pod_ip_event(pod, "DELETED", time.time()))

    async def _create(self, ref: str, *, reuse_index: int | None) -> LabPod:
        workload = self.layout.cluster.workload(ref)
        pod = self.layout.new_pod(workload, ordinal=0, now=time.time(), reuse_index=reuse_index)
        self.network.attach(self._host(pod))
        agent = await self._spawn(pod)
        self.agents.append(agent)
        await agent.expect("ready", READY_TIMEOUT)
        if self._captured(pod):
            agent.capture = await asyncio.to_thread(self._start_capture(agent))
        await agent.send("open")
        await agent.expect("opened", READY_TIMEOUT)
        await self._publish()
        self.pod_events.append(bundling.pod_ip_event(pod, "ADDED", pod.created))
        remaining = self.window_start + self.duration - time.time()
        await agent.send("start", duration=max(remaining, 0.0))
        return pod

    async def _restart(self, restart: Restart) -> None:
        await asyncio.sleep(max(self.window_start + restart.at - time.time(), 0))
        old = self.layout.pods_of(restart.workload)[0]
        await self._delete(old)
        replaced = None
        if restart.ip_to is not None:
            replaced = self.layout.pods_of(restart.ip_to)[0]
            await self._delete(replaced)
        new = await self._create(restart.workload, reuse_index=None)
        entry: dict[str, Any] = {
            "at": time.time() - self.window_start,
            "deleted": old.key,
            "created": new.key,
            "old_ips": list(old.ips),
            "new_ips": list(new.ips),
        }
        if restart.ip_to is not None and replaced is not None:
            taker = await self._create(restart.ip_to, reuse_index=old.index)
            entry |= {"ip_reused_by": taker.key, "also_deleted": replaced.key}
        self.restarts_done.append(entry)
        self.log(
            f"restarted {old.key} → {new.key}"
            + (f"; {entry['ip_reused_by']} took {old.ips[0]}" if "ip_reused_by" in entry else "")
        )

    def _conclude(self, window_end: float) -> None:
        plan = self.layout.plan
        totals, outcomes = bundling.tally_calls(
            plan,
            (result for agent in [*self.finished, *self.agents] for result in agent.results or []),
        )
        # the kubelet's probes happened too: from the node's address to the probed pods
        outcomes.append(
            bundling.CallOutcome(
                client=f"ip:{NODE_IPV4}",
                protocol="TCP",
                ok=len(self.probed),
                dns_answered=False,
                servers=tuple(self.probed),
            )
        )
        self.truth = bundling.truth_flows(outcomes)
        self.report |= {
            "duration": self.duration,
            "capture_mode": str(self.options.capture_mode),
            "calls": totals,
            "restarts": self.restarts_done,
        }
        bundling.write_bundle(
            self.options.out,
            layout=self.layout,
            window=(self.window_start, window_end),
            capture_mode=str(self.options.capture_mode),
            sidecars=self.options.vantage is capturing.Vantage.POD,
            pod_events=self.pod_events,
            truth=self.truth,
            report=self.report,
        )
