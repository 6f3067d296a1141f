"""A real single-node Kubernetes cluster on this machine, in its own network namespace.

Test tooling, not product code. The control plane of ``controlplane.py`` plus what runs pods:
containerd, runc and the CNI plugins (Debian packages), kubelet, kube-proxy (iptables mode) and
kube-scheduler (built with the control plane from ``k8s.io/kubernetes``), CoreDNS (built from its
Go module, run as the usual ``coredns`` Deployment behind the ``kube-dns`` Service) and kube-router
with only its NetworkPolicy firewall. Images are built without a Docker daemon: a Debian bookworm
root file system made by debootstrap is the base the Dockerfiles' FROM lines name, and buildah
builds ``webhook/Dockerfile``, ``webhook/capture-image`` and the test images (``images/``).
Binaries and images are cached under the control plane's cache directory, keyed by version (by
content for the images made from this repository), so only the first run on a machine builds.

Everything the node runs lives in one network namespace (``npsnode-<pid>``) reached from this
machine through one veth pair, and in one mount namespace of its own (pod network namespaces,
container and volume mounts, the CNI plugins' state); the "outside world" (an address that serves,
a client of LoadBalancers) is a second network namespace behind the node. ``stop()`` removes all of
it, ``clean`` what a killed run left.

    python -m tests.e2e.node build   # build (or find) binaries and images; print the times
    python -m tests.e2e.node up      # run a node until Ctrl-C; prints the KUBECONFIG line
    python -m tests.e2e.node down    # stop a node that `up` runs, then clean
    python -m tests.e2e.node clean   # remove what killed runs left behind
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from lab.netns import process_alive
from tests.e2e import controlplane
from tests.e2e.controlplane import (
    BINARIES,
    CACHE_ROOT,
    ETCD_VERSION,
    KUBERNETES_VERSION,
    NODE_BINARIES,
    ControlPlane,
    ControlPlaneError,
    die_with_parent,
    enter_netns,
)

REPO = Path(__file__).resolve().parents[2]
IMAGES_DIR = Path(__file__).resolve().parent / "images"
MANIFESTS_DIR = Path(__file__).resolve().parent / "node-manifests"

KUBE_ROUTER = ("github.com/cloudnativelabs/kube-router/v2/cmd/kube-router", "v2.1.0")
COREDNS = ("github.com/coredns/coredns", "v1.14.7")
DEBIAN_SUITE = "bookworm"
# Part of the base image's cache key: bump it when the recipe below changes.
DEBIAN_RECIPE = "minbase-slim-1"

NODE_NAME = "netpol-sniffer-node"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
DNS_SERVICE_IP = "10.96.0.10"
# The links: this machine ↔ node (a /30 chosen per run from here) and node ↔ outside world.
HOST_LINKS = ipaddress.IPv4Network("172.31.254.0/24")
OUTSIDE_LINK = ("100.64.0.1", "100.64.0.2")  # node side, outside side (inside the namespaces)
# The outside world's own addresses (documentation ranges, as in the lab).
OUTSIDE_SERVER = "203.0.113.50"
OUTSIDE_SERVER_PORTS = (443, 80)
OUTSIDE_CLIENT = "198.51.100.200"
LOAD_BALANCER_RANGE = ipaddress.ip_network("198.51.100.96/28")
NETNS_PREFIX = "npsnode-"
WORKDIR_PREFIX = "netpol-sniffer-node-"
OWNER_FILE = "owner.json"
READY_TIMEOUT_S = 300.0


T = TypeVar("T")
# Lines for pytest's terminal summary (the journey's result), printed by conftest.py.
SUMMARY_LINES: list[str] = []


class NodeError(ControlPlaneError):
    """The node could not be built or started."""


def _log(message: str) -> None:
    print(f"[node] {message}", flush=True)


def _run(
    command: Sequence[str],
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        input=stdin,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise NodeError(
            f"`{' '.join(command)}` failed (exit {result.returncode}):\n"
            f"{(result.stderr or result.stdout).strip()[-3000:]}"
        )
    return result


# ---------------------------------------------------------------------------------------------
# Building: Go programs


def go_install(package: str, version: str, root: Path = CACHE_ROOT) -> Path:
    """``go install PACKAGE@VERSION`` into the cache (a module's own go.mod, no replace needed);
    the binary's path."""
    name = package.rstrip("/").rsplit("/", 1)[-1]
    target = root / "go-install" / f"{name}-{version}" / name
    if target.is_file():
        return target
    env = controlplane.go_toolchain_env(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    staged = Path(tempfile.mkdtemp(prefix="bin-", dir=target.parent))
    try:
        _run(
            ["go", "install", "-trimpath", "-ldflags=-s -w", f"{package}@{version}"],
            env={**env, "GOBIN": str(staged)},
            cwd=staged,
        )
        (staged / name).rename(target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    _log(f"built {name} {version} in {time.monotonic() - started:.0f} s")
    return target


def go_build_local(source: Path, name: str, root: Path = CACHE_ROOT) -> Path:
    """A small Go program of this repository (its own go.mod, no dependencies), cached by the
    hash of its source."""
    key = content_key([source])
    target = root / "go-build-local" / f"{name}-{key}" / name
    if target.is_file():
        return target
    env = controlplane.go_toolchain_env(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    # unique per build: two runs may build at once; the rename publishes a whole binary
    staged = target.parent / f".{name}.{os.getpid()}.tmp"
    _run(
        ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(staged), "."], env=env, cwd=source
    )
    staged.rename(target)
    return target


def content_key(paths: Iterable[Path], *extra: str) -> str:
    """A short hash of files (directories: every file under them, as the build context's
    .dockerignore would keep them) and extra strings."""
    digest = hashlib.sha256()
    for part in extra:
        digest.update(part.encode() + b"\0")
    for path in paths:
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if not file.is_file() or _ignored(file):
                continue
            name = file.relative_to(path) if path.is_dir() else Path(file.name)
            digest.update(str(name).encode() + b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _ignored(file: Path) -> bool:
    return "__pycache__" in file.parts or file.suffix in (".pyc", ".so")


# ---------------------------------------------------------------------------------------------
# Building: images


@dataclass(frozen=True)
class DebianSources:
    """Where this machine's apt gets Debian bookworm: the mirror debootstrap uses, and the
    sources file the images' apt uses."""

    mirror: str
    sources: str  # deb822 text for /etc/apt/sources.list.d/debian.sources


def debian_sources(apt: Path = Path("/etc/apt")) -> DebianSources:
    """The Debian ``bookworm`` entries of this machine's apt configuration (deb822 or one-line)."""
    entries: list[tuple[str, list[str], str]] = []  # (uri, suites, components)
    for file in sorted((apt / "sources.list.d").glob("*.sources")):
        for block in re.split(r"\n\s*\n", file.read_text()):
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, _, value in (
                    line.partition(":")
                    for line in block.splitlines()
                    if line and not line.startswith("#") and ":" in line
                )
            )
            if fields.get("types", "").split()[:1] != ["deb"] or "uris" not in fields:
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            entries += [
                (uri, fields.get("suites", "").split(), fields.get("components", "main"))
                for uri in fields["uris"].split()
            ]
    lists = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for file in lists:
        if not file.is_file():
            continue
        for line in file.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb":
                entries.append((words[1], [words[2]], " ".join(words[3:]) or "main"))
    debian = [e for e in entries if any(s.startswith(DEBIAN_SUITE) for s in e[1])]
    main = [e for e in debian if DEBIAN_SUITE in e[1]]
    if not main:
        raise NodeError(f"no Debian {DEBIAN_SUITE} source in {apt}: debootstrap needs a mirror")
    stanzas = [
        f"Types: deb\nURIs: {uri}\n"
        f"Suites: {' '.join(s for s in suites if s.startswith(DEBIAN_SUITE))}\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        for uri, suites, _ in debian
    ]
    return DebianSources(mirror=main[0][0], sources="\n".join(stanzas))


@dataclass(frozen=True)
class ImageSpec:
    """One image: its name (what a FROM line or a pod spec says), how it is built, and what
    its cache key covers."""

    name: str
    dockerfile: Path | None  # None: the debootstrapped Debian base
    context: Path
    inputs: tuple[Path, ...]  # files whose content is part of the key
    bases: tuple[str, ...] = ()  # names of the images it is built FROM


@dataclass
class Images:
    """buildah's storage and the image archives, under the cache; ``archive(name)`` builds what
    is missing (bases first) and returns the docker-archive containerd imports."""

    specs: dict[str, ImageSpec]
    root: Path = CACHE_ROOT / "node-images"
    _keys: dict[str, str] = field(default_factory=dict)

    @property
    def buildah(self) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.root / "storage"),
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "overlay",
        ]

    def key(self, name: str) -> str:
        if name not in self._keys:
            spec = self.specs[name]
            base_keys = [self.key(base) for base in spec.bases]
            recipe = DEBIAN_RECIPE if spec.dockerfile is None else ""
            self._keys[name] = content_key(spec.inputs, name, recipe, *base_keys)
        return self._keys[name]

    def archive_path(self, name: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        return self.root / "archives" / f"{safe}-{self.key(name)}.tar"

    def archive(self, name: str) -> Path:
        path = self.archive_path(name)
        if path.is_file():
            return path
        spec = self.specs[name]
        for base in spec.bases:
            self._ensure_in_storage(base)
        started = time.monotonic()
        if spec.dockerfile is None:
            self._debootstrap(name)
        else:
            self._bud(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        # unique per build: two runs may build at once; the rename publishes a whole archive
        staged = path.with_suffix(f".{os.getpid()}.tmp")
        staged.unlink(missing_ok=True)
        _run([*self.buildah, "push", "-q", name, f"docker-archive:{staged}:{name}"])
        staged.rename(path)
        _log(f"image {name} built in {time.monotonic() - started:.0f} s")
        return path

    def _in_storage(self, name: str) -> bool:
        found = _run([*self.buildah, "images", "-q", name], check=False)
        return found.returncode == 0 and bool(found.stdout.strip())

    def _ensure_in_storage(self, name: str) -> None:
        path = self.archive(name)
        if not self._in_storage(name):
            # the archive outlived the storage (or came from elsewhere): load it back
            _run([*self.buildah, "pull", "-q", f"docker-archive:{path}"])
            _run([*self.buildah, "tag", _loaded_name(name), name], check=False)

    def _bud(self, spec: ImageSpec) -> None:
        assert spec.dockerfile is not None
        # RUN steps reach the package registries with this machine's network, and pip trusts
        # what this machine trusts (a TLS-inspecting proxy's CA, say); the image's own trust
        # store stays the image's.
        mounts = []
        if HOST_CA_BUNDLE.is_file():
            pip_conf = self.root / "build-pip.conf"
            pip_conf.parent.mkdir(parents=True, exist_ok=True)
            pip_conf.write_text(f"[global]\ncert = {BUILD_CA_BUNDLE}\n")
            mounts = [
                f"--volume={HOST_CA_BUNDLE}:{BUILD_CA_BUNDLE}:ro",
                f"--volume={pip_conf}:/etc/pip.conf:ro",
            ]
        _run(
            [
                *self.buildah,
                "bud",
                "-q",
                "--pull-never",
                "--isolation",
                "chroot",
                "--network",
                "host",
                *mounts,
                "-f",
                str(spec.dockerfile),
                "-t",
                spec.name,
                str(spec.context),
            ],
            timeout=1800,
        )

    def _debootstrap(self, name: str) -> None:
        sources = debian_sources()
        with tempfile.TemporaryDirectory(prefix="netpol-sniffer-debootstrap-") as work:
            rootfs = Path(work) / "rootfs"
            _run(
                ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), sources.mirror],
                timeout=1800,
            )
            _slim(rootfs, sources)
            container = _run([*self.buildah, "from", "scratch"]).stdout.strip()
            try:
                mount = Path(_run([*self.buildah, "mount", container]).stdout.strip())
                _run(["cp", "-a", f"{rootfs}/.", f"{mount}/"])
                _run(
                    [
                        *self.buildah,
                        "config",
                        "--env",
                        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "--cmd",
                        "bash",
                        container,
                    ]
                )
                _run([*self.buildah, "commit", "-q", container, name])
            finally:
                _run([*self.buildah, "rm", container], check=False)

    def variant(self, base: str, name: str, env: dict[str, str]) -> None:
        """``name``: ``base`` with ``env`` set (the agent's stand-ins), in buildah's storage."""
        self._ensure_in_storage(base)
        container = _run([*self.buildah, "from", "--pull-never", base]).stdout.strip()
        try:
            settings = [f"--env={key}={value}" for key, value in sorted(env.items())]
            _run([*self.buildah, "config", *settings, container])
            _run([*self.buildah, "commit", "-q", container, name])
        finally:
            _run([*self.buildah, "rm", container], check=False)

    def oci_archive(self, names: Sequence[str], path: Path) -> Path:
        """Several images in one OCI layout archive (layers stored once), each annotated with its
        full name for ``ctr images import``."""
        with tempfile.TemporaryDirectory(prefix="netpol-sniffer-oci-") as work:
            layout = Path(work) / "layout"
            for name in names:
                _run([*self.buildah, "push", "-q", name, f"oci:{layout}:{name}"])
            _run(["tar", "-C", str(layout), "-cf", str(path), "."])
        return path


def _loaded_name(name: str) -> str:
    return name if "/" in name.split(":")[0] else f"localhost/{name}"


def _slim(rootfs: Path, sources: DebianSources) -> None:
    """Like the official slim image: no package lists, caches, documentation or translations,
    and apt pointed at the same Debian sources as this machine's."""
    for pattern in (
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/*.bin",
        "var/lib/apt/lists/*",
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
    ):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name not in ("lock", "partial"):
                path.unlink()
    (rootfs / "etc/dpkg/dpkg.cfg.d/slim").write_text(
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n"
        "path-exclude /usr/share/locale/*\n"
    )
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(sources.sources)


HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA_BUNDLE = "/run/netpol-sniffer-build-ca.crt"
DEBIAN_IMAGE = "debian:bookworm-slim"
PYTHON_IMAGE = "python:3.11-slim-bookworm"
WEBHOOK_IMAGE = "netpol-sniffer-webhook:0.1.0"
CAPTURE_IMAGE = "netpol-sniffer-capture:0.1.0"
AGENT_IMAGE = "netpol-sniffer-node-agent:latest"
PAUSE_IMAGE = "netpol-sniffer-node-pause:1"
COREDNS_IMAGE = f"netpol-sniffer-node-coredns:{COREDNS[1]}"
# What the node imports into containerd (the agent's stand-ins come with the test).
NODE_IMAGES = (PAUSE_IMAGE, COREDNS_IMAGE, CAPTURE_IMAGE, WEBHOOK_IMAGE, AGENT_IMAGE)


def repository_image_specs() -> dict[str, ImageSpec]:
    """The images made from this repository's Dockerfiles (and their bases)."""
    webhook_sources = tuple(
        REPO / p for p in ("pyproject.toml", "setup.py", "README.md", "kernel", "webhook")
    )
    specs = [
        ImageSpec(DEBIAN_IMAGE, None, REPO, ()),
        ImageSpec(
            PYTHON_IMAGE,
            IMAGES_DIR / "python/Dockerfile",
            IMAGES_DIR / "python",
            (IMAGES_DIR / "python",),
            (DEBIAN_IMAGE,),
        ),
        ImageSpec(
            CAPTURE_IMAGE,
            REPO / "webhook/capture-image/Dockerfile",
            REPO / "webhook/capture-image",
            (REPO / "webhook/capture-image",),
            (DEBIAN_IMAGE,),
        ),
        ImageSpec(
            WEBHOOK_IMAGE,
            REPO / "webhook/Dockerfile",
            REPO,
            (*webhook_sources, REPO / ".dockerignore"),
            (PYTHON_IMAGE,),
        ),
        ImageSpec(
            AGENT_IMAGE,
            IMAGES_DIR / "agent/Dockerfile",
            REPO,
            (REPO / "lab", IMAGES_DIR / "agent"),
            (PYTHON_IMAGE,),
        ),
    ]
    return {spec.name: spec for spec in specs}


def binary_image_spec(name: str, context: Path) -> ImageSpec:
    """An image of one binary built here (its context: the Dockerfile and the binary)."""
    return ImageSpec(name, context / "Dockerfile", context, (context,))


@dataclass(frozen=True)
class Built:
    """Everything a node runs, found or built."""

    k8s_bin: Path
    kube_router: Path
    coredns: Path
    images: Images
    archives: dict[str, Path]


def build(root: Path = CACHE_ROOT) -> Built:
    """Build (or find) the binaries and images; print what took how long. The Go builds (the
    CPU) and the repository's images (mostly the network and the disk) go side by side."""
    started = time.monotonic()
    timings: dict[str, float] = {}

    def timed(label: str, step: Callable[[], T]) -> T:
        begin = time.monotonic()
        result = step()
        timings[label] = time.monotonic() - begin
        return result

    images = Images(repository_image_specs(), root=root / "node-images")
    with ThreadPoolExecutor(max_workers=1) as pool:
        repository_images = pool.submit(
            timed, "images", lambda: {name: images.archive(name) for name in list(images.specs)}
        )
        k8s_bin = timed(
            "kubernetes",
            lambda: controlplane.build(root=root, names=(*BINARIES, *NODE_BINARIES)),
        )
        kube_router = timed("kube-router", lambda: go_install(*KUBE_ROUTER, root=root))
        coredns = timed("coredns", lambda: go_install(*COREDNS, root=root))
        pause = timed("pause", lambda: go_build_local(IMAGES_DIR / "pause", "pause", root=root))
        archives = repository_images.result()
    contexts = root / "node-images" / "contexts"
    for name, dockerfile, binary in (
        (PAUSE_IMAGE, IMAGES_DIR / "pause/Dockerfile", pause),
        (COREDNS_IMAGE, IMAGES_DIR / "coredns/Dockerfile", coredns),
    ):
        images.specs[name] = binary_image_spec(name, _binary_context(contexts, dockerfile, binary))
        archives[name] = images.archive(name)
    timings["total"] = time.monotonic() - started
    _log("build: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return Built(k8s_bin, kube_router, coredns, images, archives)


def _binary_context(contexts: Path, dockerfile: Path, binary: Path) -> Path:
    """A build context of a Dockerfile and the binary it copies (named after the binary's cache
    directory, which carries its version or content hash)."""
    context = contexts / f"{binary.name}-{binary.parent.name}"
    if not (context / binary.name).is_file():
        contexts.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=".ctx-", dir=contexts))
        shutil.copy2(dockerfile, staged / "Dockerfile")
        shutil.copy2(binary, staged / binary.name)
        shutil.rmtree(context, ignore_errors=True)
        staged.rename(context)
    return context


def versions() -> dict[str, str]:
    """What the node runs, for reports."""

    def package(name: str) -> str:
        found = _run(["dpkg-query", "-W", "-f=${Version}", name], check=False)
        return found.stdout.strip() or "unknown"

    return {
        "kubernetes": KUBERNETES_VERSION,
        "etcd": ETCD_VERSION,
        "containerd": package("containerd"),
        "runc": package("runc"),
        "cni-plugins": package("containernetworking-plugins"),
        "kube-router": KUBE_ROUTER[1],
        "coredns": COREDNS[1],
        "buildah": package("buildah"),
        "debian-base": DEBIAN_SUITE,
        "python-base": "3.11 (Debian bookworm)",
    }


# ---------------------------------------------------------------------------------------------
# Running


def _setns(path: str, nstype: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL("libc.so.6", use_errno=True).setns(fd, nstype) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


CLONE_NEWNS = 0x00020000


def _node_child(netns: str, mount_ns: str, cwd: Path) -> Callable[[], None]:
    """``preexec_fn`` for the node's processes: its network and mount namespaces."""

    def setup() -> None:
        enter_netns(netns)
        _setns(mount_ns, CLONE_NEWNS)
        os.chdir(cwd)
        die_with_parent()

    return setup


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


_node_numbers = itertools.count(1)


@dataclass
class Node:
    """One node and its control plane; ``start()`` returns when the node is Ready and CoreDNS
    answers, ``stop()`` (idempotent) removes everything."""

    built: Built
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX)))
    owner_pid: int = field(default_factory=os.getpid)
    # several nodes of one process have distinct names: PID-N
    number: int = field(default_factory=lambda: next(_node_numbers))
    control_plane: ControlPlane | None = field(default=None, init=False)
    host_address: str = field(default="", init=False)
    node_address: str = field(default="", init=False)
    pod_cidr: str = field(default="", init=False)
    _procs: list[_Proc] = field(default_factory=list, init=False)
    _holder: subprocess.Popen[bytes] | None = field(default=None, init=False)
    # "mnt:[inode]" of the node's mount namespace: it outlives its holder while shims run in it
    _mount_ns_id: str = field(default="", init=False)
    _stopped: bool = field(default=False, init=False)

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.owner_pid}-{self.number}"

    @property
    def outside_netns(self) -> str:
        return f"{self.netns}-out"

    @property
    def host_veth(self) -> str:
        return f"npsn-{self.owner_pid}-{self.number}"

    @property
    def cgroup_root(self) -> str:
        return f"/{self.netns}"

    @property
    def kubeconfig(self) -> Path:
        assert self.control_plane is not None
        return self.control_plane.kubeconfig

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        assert self.control_plane is not None
        return self.control_plane.kubectl(*args, stdin=stdin, check=check)

    # -- life cycle

    def start(self) -> Node:
        try:
            clean_leftovers()
            self._write_owner()
            timings: dict[str, float] = {}
            for label, step in (
                ("network", self._network),
                ("mount namespace", self._mount_namespace),
                ("control plane", self._control_plane),
                ("containerd", self._containerd),
                ("images", self._import_images),
                ("kubelet", self._kubelet),
                ("kube-proxy", self._kube_proxy),
                ("kube-router", self._kube_router),
                ("coredns", self._coredns),
                ("outside world", self._outside_server),
            ):
                begin = time.monotonic()
                step()
                timings[label] = time.monotonic() - begin
            _log("started: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._stopped:
            return
        for proc in reversed(self._procs):
            if proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in reversed(self._procs):
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        self._procs.clear()
        _remove_node(self.workdir, self.cgroup_root, self._mount_ns_id)
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()
        for name in (self.outside_netns, self.netns):
            _run(["ip", "netns", "delete", name], check=False)
        if self.control_plane is not None:
            self.control_plane.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._stopped = True

    def _write_owner(self) -> None:
        """What ``clean`` needs to remove this node if this process dies without ``stop()``."""
        (self.workdir / OWNER_FILE).write_text(
            json.dumps(
                {
                    "pid": self.owner_pid,
                    "netns": [self.netns, self.outside_netns],
                    "cgroup_root": self.cgroup_root,
                    "mount_ns": self._mount_ns_id,
                }
            )
        )

    def _spawn(self, name: str, args: Sequence[str], *, env: dict[str, str] | None = None) -> _Proc:
        assert self._holder is not None
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                list(args),
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=env,
                preexec_fn=_node_child(
                    self.netns, f"/proc/{self._holder.pid}/ns/mnt", self.workdir
                ),
            )
        proc = _Proc(name, popen, log)
        self._procs.append(proc)
        return proc

    def _wait(
        self,
        what: str,
        ready: Callable[[], bool],
        proc: _Proc | None = None,
        timeout: float = READY_TIMEOUT_S,
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.popen.poll() is not None:
                raise NodeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
            if ready():
                return
            time.sleep(0.5)
        tail = f":\n{proc.tail()}" if proc is not None else ""
        raise NodeError(f"{what} not ready after {timeout:.0f} s{tail}")

    # -- pieces

    def _network(self) -> None:
        with _network_lock():
            link = _free_link()
            self.host_address, self.node_address = (str(a) for a in list(link.hosts())[:2])
            inside = ["ip", "netns", "exec", self.netns]
            outside = ["ip", "netns", "exec", self.outside_netns]
            commands = [
                ["ip", "netns", "add", self.netns],
                ["ip", "netns", "add", self.outside_netns],
                [
                    "ip",
                    "link",
                    "add",
                    self.host_veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    self.netns,
                ],
                [
                    "ip",
                    "addr",
                    "add",
                    f"{self.host_address}/{link.prefixlen}",
                    "dev",
                    self.host_veth,
                ],
                ["ip", "link", "set", self.host_veth, "up"],
            ]
            for command in commands:
                _run(command)
        commands = [
            [*inside, "ip", "addr", "add", f"{self.node_address}/{link.prefixlen}", "dev", "eth0"],
            [*inside, "ip", "link", "set", "eth0", "up"],
            [*inside, "ip", "link", "set", "lo", "up"],
            [
                *inside,
                "ip",
                "link",
                "add",
                "outside",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.outside_netns,
            ],
            [*inside, "ip", "addr", "add", f"{OUTSIDE_LINK[0]}/30", "dev", "outside"],
            [*inside, "ip", "link", "set", "outside", "up"],
            # the node's own connections to ClusterIPs need a route before kube-proxy's DNAT
            [*inside, "ip", "route", "add", SERVICE_CIDR, "dev", "eth0"],
            [*inside, "ip", "route", "add", "203.0.113.0/24", "via", OUTSIDE_LINK[1]],
            [*inside, "ip", "route", "add", f"{OUTSIDE_CLIENT}/32", "via", OUTSIDE_LINK[1]],
            [
                *inside,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.bridge.bridge-nf-call-iptables=1",
                "net.bridge.bridge-nf-call-ip6tables=1",
            ],
            [*outside, "ip", "link", "set", "lo", "up"],
            [*outside, "ip", "addr", "add", f"{OUTSIDE_LINK[1]}/30", "dev", "eth0"],
            [*outside, "ip", "addr", "add", f"{OUTSIDE_SERVER}/32", "dev", "eth0"],
            [*outside, "ip", "addr", "add", f"{OUTSIDE_CLIENT}/32", "dev", "eth0"],
            [*outside, "ip", "link", "set", "eth0", "up"],
            [*outside, "ip", "route", "add", "default", "via", OUTSIDE_LINK[0]],
        ]
        for command in commands:
            _run(command)

    def _mount_namespace(self) -> None:
        """A mount namespace for the node's processes, a slave of this machine's: containerd's
        and the kubelet's mounts, the pods' network namespaces and the CNI plugins' state stay
        in it and go with it."""
        for path in ("/run/netns", "/run/containerd", "/var/lib/cni"):
            Path(path).mkdir(parents=True, exist_ok=True)
        self._holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "sleep", "infinity"],
            preexec_fn=die_with_parent,
            # its own process group: a signal to ours (a timeout's) must not end it first
            start_new_session=True,
        )
        mount_ns = f"/proc/{self._holder.pid}/ns/mnt"
        deadline = time.monotonic() + 10
        while os.readlink(mount_ns) == os.readlink("/proc/self/ns/mnt"):
            if time.monotonic() > deadline:
                raise NodeError("the node's mount namespace did not appear")
            time.sleep(0.05)
        self._mount_ns_id = os.readlink(mount_ns)
        self._write_owner()
        script = "\n".join(
            [
                "set -e",
                *(
                    f"mount -t tmpfs -o mode=0755 nps-node {p}"
                    for p in ("/run/netns", "/run/containerd", "/var/lib/cni")
                ),
            ]
        )
        _run(["nsenter", f"--mount={mount_ns}", "--", "sh", "-c", script])

    def _control_plane(self) -> None:
        self.control_plane = ControlPlane(
            bin_dir=self.built.k8s_bin,
            workdir=self.workdir / "control-plane",
            service_cluster_ip_range=SERVICE_CIDR,
            address=self.node_address,
            netns=self.netns,
            cluster_cidr=CLUSTER_CIDR,
            with_scheduler=True,
        )
        self.control_plane.workdir.mkdir()
        self.control_plane.start()

    def _containerd(self) -> None:
        base = self.workdir / "containerd"
        base.mkdir()
        (self.workdir / "cni").mkdir()
        config = f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / "opt"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # This machine gives root no CAP_SYS_RESOURCE: no process may lower its OOM score below
  # containerd's own, so the sandboxes' -998 would make runc fail.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.workdir / "cni"}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"""
        (base / "config.toml").write_text(config)
        proc = self._spawn("containerd", ["containerd", "--config", str(base / "config.toml")])
        self._wait("containerd", lambda: self._ctr("version", check=False).returncode == 0, proc)

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(
            ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
            check=check,
        )

    def _import_images(self) -> None:
        for name in NODE_IMAGES:
            self.import_archive(self.built.archives[name])

    def import_archive(self, archive: Path) -> None:
        self._ctr("images", "import", str(archive))

    def _kubelet(self) -> None:
        assert self.control_plane is not None
        kubelet = self.workdir / "kubelet"
        kubelet.mkdir()
        kubeconfig = self.control_plane.write_client_kubeconfig(
            kubelet / "kubeconfig", f"system:node:{NODE_NAME}", "system:nodes"
        )
        (kubelet / "resolv.conf").write_text("# the test node has no upstream DNS\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.control_plane.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDomain": "cluster.local",
            "clusterDNS": [DNS_SERVICE_IP],
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "resolvConf": str(kubelet / "resolv.conf"),
            "podLogsDir": str(kubelet / "pod-logs"),
            "volumePluginDir": str(kubelet / "volume-plugins"),
            "healthzBindAddress": "127.0.0.1",
            "readOnlyPort": 0,
            "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
        }
        (kubelet / "config.json").write_text(json.dumps(config, indent=2))
        _make_cgroup(self.cgroup_root)
        proc = self._spawn(
            "kubelet",
            [
                str(self.built.k8s_bin / "kubelet"),
                f"--config={kubelet / 'config.json'}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={kubelet / 'root'}",
                f"--cert-dir={kubelet / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={self.node_address}",
            ],
        )

        def pod_cidr() -> bool:
            found = self.kubectl(
                "get", "node", NODE_NAME, "-o", "jsonpath={.spec.podCIDR}", check=False
            )
            self.pod_cidr = found.stdout.strip() if found.returncode == 0 else ""
            return bool(self.pod_cidr)

        self._wait("the node's podCIDR", pod_cidr, proc)
        self._write_cni_config()
        self._wait("node Ready", self._node_ready, proc)

    def _node_ready(self) -> bool:
        found = self.kubectl(
            "get",
            "node",
            NODE_NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            check=False,
        )
        return found.stdout.strip() == "True"

    def _write_cni_config(self) -> None:
        conflist = {
            "cniVersion": "0.4.0",
            "name": "nps-pods",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.workdir / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        staged = self.workdir / "cni" / ".10-pods.conflist"
        staged.write_text(json.dumps(conflist, indent=2))
        staged.rename(self.workdir / "cni" / "10-pods.conflist")

    def _kube_proxy(self) -> None:
        assert self.control_plane is not None
        base = self.workdir / "kube-proxy"
        base.mkdir()
        kubeconfig = self.control_plane.write_client_kubeconfig(
            base / "kubeconfig", "system:kube-proxy"
        )
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": CLUSTER_CIDR,
            "hostnameOverride": NODE_NAME,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # the conntrack table size is the machine's, not this namespace's: leave it
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        (base / "config.json").write_text(json.dumps(config, indent=2))
        proc = self._spawn(
            "kube-proxy",
            [
                str(self.built.k8s_bin / "kube-proxy"),
                f"--config={base / 'config.json'}",
            ],
        )
        self._wait("kube-proxy's rules", lambda: self._has_chain("nat", "KUBE-SERVICES"), proc)

    def _has_chain(self, table: str, chain: str) -> bool:
        found = _run(
            ["ip", "netns", "exec", self.netns, "iptables", "-t", table, "-S", chain], check=False
        )
        return found.returncode == 0 and "KUBE-SVC" in found.stdout

    def _kube_router(self) -> None:
        assert self.control_plane is not None
        proc = self._spawn(
            "kube-router",
            [
                str(self.built.kube_router),
                f"--kubeconfig={self.control_plane.kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--metrics-port=0",
                "--v=1",
            ],
        )
        self._wait("kube-router's firewall", lambda: self._has_kube_router_chain(), proc)

    def _has_kube_router_chain(self) -> bool:
        found = _run(["ip", "netns", "exec", self.netns, "iptables", "-S"], check=False)
        return "KUBE-ROUTER-FORWARD" in found.stdout

    def _coredns(self) -> None:
        manifest = (MANIFESTS_DIR / "coredns.yaml").read_text()
        manifest = manifest.replace("COREDNS_IMAGE", COREDNS_IMAGE)
        manifest = manifest.replace("DNS_SERVICE_IP", DNS_SERVICE_IP)
        self.kubectl("apply", "-f", "-", stdin=manifest)
        self.wait_rollout("kube-system", "deployment/coredns")
        assert self.control_plane is not None
        api = self.control_plane.kubernetes_service_ip
        # kube-proxy programs the Service's endpoints a moment after the pod is ready
        self._wait(
            "CoreDNS through the kube-dns Service",
            lambda: self.resolve("kubernetes.default.svc.cluster.local") == api,
        )

    def resolve(self, name: str) -> str | None:
        """``name``'s first A record, asked from the node's network namespace through the
        kube-dns Service (the lab's stub resolver); None when there is no answer."""
        query = (
            "import asyncio; from lab import traffic;"
            f"resolver = traffic.Resolver({DNS_SERVICE_IP!r}, []);"
            f"print(asyncio.run(resolver.resolve({name!r}, ipv6=False,"
            " result=traffic.CallResult(0)))[0])"
        )
        found = self.run_inside(
            ["env", f"PYTHONPATH={REPO}", sys.executable, "-c", query], check=False
        )
        return found.stdout.strip() or None if found.returncode == 0 else None

    def _outside_server(self) -> None:
        """The outside world's server: the agent answering on OUTSIDE_SERVER's ports."""
        agent = IMAGES_DIR / "agent" / "node_agent.py"
        log = self.workdir / "logs" / "outside.log"
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                [sys.executable, str(agent), "serve"],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={
                    **os.environ,
                    "PYTHONPATH": str(REPO),
                    "NETPOL_SNIFFER_AGENT_LISTEN": " ".join(
                        f"{p}/TCP" for p in OUTSIDE_SERVER_PORTS
                    ),
                    "NETPOL_SNIFFER_AGENT_IDENTITY": f"ip:{OUTSIDE_SERVER}",
                },
                preexec_fn=controlplane.child_setup(self.outside_netns),
            )
        proc = _Proc("outside", popen, log)
        self._procs.append(proc)

        def answers() -> bool:
            address = (OUTSIDE_SERVER, OUTSIDE_SERVER_PORTS[0])
            probe = f"import socket; socket.create_connection({address!r}, 2).close()"
            return self.run_inside([sys.executable, "-c", probe], check=False).returncode == 0

        self._wait("the outside world's server", answers, proc)

    def wait_rollout(self, namespace: str, what: str, timeout: float = READY_TIMEOUT_S) -> None:
        assert self.control_plane is not None
        _run(
            [
                str(self.built.k8s_bin / "kubectl"),
                "-n",
                namespace,
                "rollout",
                "status",
                what,
                f"--timeout={timeout:.0f}s",
            ],
            env=self.control_plane.env,
            timeout=timeout + 30,
        )

    # -- helpers for tests

    def run_outside(
        self, command: Sequence[str], *, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """A command in the outside world's network namespace."""
        return _run(
            ["ip", "netns", "exec", self.outside_netns, *command], timeout=timeout, check=check
        )

    def run_inside(
        self, command: Sequence[str], *, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """A command in the node's network namespace."""
        return _run(["ip", "netns", "exec", self.netns, *command], timeout=timeout, check=check)


@contextlib.contextmanager
def _network_lock() -> Iterator[None]:
    """Runs choose their link addresses one at a time."""
    lock_path = Path(tempfile.gettempdir()) / "netpol-sniffer-node.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_link() -> ipaddress.IPv4Network:
    """A /30 of HOST_LINKS that no address or route of this machine overlaps."""
    used = []
    for command in (["ip", "-4", "-o", "addr"], ["ip", "-4", "route"]):
        for word in _run(command).stdout.split():
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(word, strict=False))
    for link in HOST_LINKS.subnets(new_prefix=30):
        if not any(link.overlaps(net) for net in used if net.prefixlen > 0):
            return link
    raise NodeError(f"no free /30 in {HOST_LINKS} for the node's link")


def _cgroup_dirs(root: str) -> list[Path]:
    """Every directory of ``root`` in every cgroup hierarchy, deepest first."""
    found: list[Path] = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / root.lstrip("/")
        if top.is_dir():
            found += [top, *(p for p in top.rglob("*") if p.is_dir())]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _make_cgroup(root: str) -> None:
    """The kubelet's cgroupRoot in every hierarchy (a new cpuset starts with its parent's CPUs
    and memory nodes)."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if not hierarchy.is_dir() or hierarchy.name == "unified":
            continue
        directory = hierarchy / root.lstrip("/")
        directory.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (directory / name).exists() and not (directory / name).read_text().strip():
                (directory / name).write_text((hierarchy / name).read_text())


def _kill_cgroup_tree(root: str) -> None:
    for _ in range(20):
        pids = set()
        for directory in _cgroup_dirs(root):
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _remove_cgroup_tree(root: str) -> None:
    for directory in _cgroup_dirs(root):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _remove_node(workdir: Path, cgroup_root: str, mount_ns_id: str) -> None:
    """Kill what a node left running and remove its cgroups: the containers (by cgroup), then
    every process in its mount namespace or naming its directory (containerd's shims outlive
    containerd; the namespace outlives its holder while they run)."""
    _kill_cgroup_tree(cgroup_root)
    own = {os.getpid(), os.getppid()}
    for _ in range(20):
        victims = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in own:
                continue
            with contextlib.suppress(OSError):
                in_namespace = bool(mount_ns_id) and os.readlink(proc / "ns" / "mnt") == mount_ns_id
                if in_namespace or str(workdir) in (proc / "cmdline").read_text(errors="replace"):
                    victims.append(int(proc.name))
        if not victims:
            break
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    _remove_cgroup_tree(cgroup_root)


def clean_leftovers() -> list[str]:
    """Remove what runs whose process is gone left behind: their containers and shims, cgroups,
    network namespaces and directories. Returns what was removed."""
    removed = []
    for owner_file in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*/{OWNER_FILE}"):
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if process_alive(int(owner["pid"])):
            continue
        _remove_node(owner_file.parent, owner["cgroup_root"], owner.get("mount_ns", ""))
        for name in owner["netns"]:
            _run(["ip", "netns", "delete", name], check=False)
        shutil.rmtree(owner_file.parent, ignore_errors=True)
        removed.append(str(owner_file.parent))
    names = _run(["ip", "netns", "list"], check=False).stdout.split()
    for name in names:
        match = re.fullmatch(rf"{NETNS_PREFIX}(\d+)-\d+(-out)?", name)
        if match and not process_alive(int(match.group(1))):
            _run(["ip", "netns", "delete", name], check=False)
            removed.append(name)
    return removed


def stop_started_by_hand(timeout: float = 60) -> list[int]:
    """SIGTERM every running ``node.py up`` (found by its node's owner file, by process id) and
    wait for it to remove its node; returns their ids."""
    stopped = []
    for owner_file in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*/{OWNER_FILE}"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = int(json.loads(owner_file.read_text())["pid"])
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if any(arg.endswith(b"node.py") for arg in command) and b"up" in command:
                os.kill(pid, signal.SIGTERM)
                stopped.append(pid)
    deadline = time.monotonic() + timeout
    while any(process_alive(pid) for pid in stopped) and time.monotonic() < deadline:
        time.sleep(0.5)
    return stopped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["build", "up", "down", "clean"])
    args = parser.parse_args(argv)
    if args.command == "down":
        for pid in stop_started_by_hand():
            print(f"stopped the node of process {pid}")
    if args.command in ("down", "clean"):
        for what in clean_leftovers():
            print(f"removed {what}")
        return 0
    try:
        built = build()
        if args.command == "build":
            return 0
        node = Node(built)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        # Ctrl-C stops it even when started in the background (where SIGINT starts ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            node.start()
            print(
                f"node {NODE_NAME} ready at {node.node_address}\n"
                f"export KUBECONFIG={node.kubeconfig}\n"
                f"export PATH={built.k8s_bin}:$PATH\n"
                f"(the outside world: ip netns exec {node.outside_netns} ...; Ctrl-C stops)",
                flush=True,
            )
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
        finally:
            node.stop()
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
