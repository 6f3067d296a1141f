"""A real Kubernetes control plane on 127.0.0.1 for end-to-end tests: build it, start it, stop it.

Test tooling, not product code. ``build`` compiles etcd, kube-apiserver, kube-controller-manager
and kubectl from the ``k8s.io/kubernetes`` Go module at one pinned release, in a throwaway module
whose ``replace`` directives map every ``k8s.io/*`` staging module to its published
``v0.<minor>.<patch>``; the binaries are cached outside the repository, keyed by version, so only
the first run on a machine pays for the build. ``ControlPlane`` starts them with generated
certificates, service-account keys and an admin kubeconfig, waits for ``/readyz`` and removes
everything it made when stopped.

    python tests/e2e/controlplane.py build      # build (or find) the binaries, print the time
    python tests/e2e/controlplane.py up         # run a control plane until Ctrl-C
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KUBERNETES_VERSION = "v1.34.4"
# The etcd release that this Kubernetes release pins in its own go.mod.
ETCD_VERSION = "v3.6.4"
CACHE_ROOT = Path(
    os.environ.get("NETPOL_SNIFFER_CACHE")
    or ("/var/cache/netpol-sniffer" if os.geteuid() == 0 else "~/.cache/netpol-sniffer")
).expanduser()
# Where the Go toolchain lives when it is not on PATH (as installed on the project's machines).
GO_FALLBACK = Path("/usr/local/go/bin/go")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
# What a node adds (tests/e2e/node.py): pods are scheduled, run and reached through Services.
NODE_BINARIES = ("kube-scheduler", "kubelet", "kube-proxy")
_PACKAGES = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    "etcd": "go.etcd.io/etcd/server/v3",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
}
# Go's parallelism: the machine has two cores that other work shares.
GO_PARALLEL = os.environ.get("NETPOL_SNIFFER_GO_PARALLEL", "2")
READY_TIMEOUT_S = 120.0
# Concurrent runs (or other programs) may take a chosen port first: start again on new ports.
START_ATTEMPTS = 3
# Below the NodePort range (30000-32767) too: kube-router lets a pod reach any local port in it
# whatever its policies (KUBE-ROUTER-INPUT), so an API server listening there answered the real
# node's probe of the kubernetes Service under policies that allow no such egress.
_LISTEN_PORTS = (20000, 29999)
# namespace_factory's product: ``make(prefix, labels={...})`` → a ready namespace's name.
NamespaceFactory = Callable[..., str]


class ControlPlaneError(Exception):
    """The control plane could not be built or started."""


# ---------------------------------------------------------------------------------------------
# Building


def binary_dir(version: str = KUBERNETES_VERSION, root: Path = CACHE_ROOT) -> Path:
    """Where the binaries of ``version`` are cached (etcd's version is part of the key too)."""
    return root / "k8s" / f"{version}-etcd-{ETCD_VERSION}" / "bin"


def staging_replacements(kubernetes_go_mod: str, version: str) -> dict[str, str]:
    """The staging ``replace`` lines of k8s.io/kubernetes's go.mod → published module versions.

    Release ``v1.M.P`` publishes each staging module as ``v0.M.P``.
    """
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", version)
    if match is None:
        raise ControlPlaneError(f"not a Kubernetes release version: {version!r}")
    staging_version = f"v0.{match.group(1)}.{match.group(2)}"
    modules = re.findall(
        r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/src/\1\s*$", kubernetes_go_mod, re.MULTILINE
    )
    if not modules:
        raise ControlPlaneError("k8s.io/kubernetes's go.mod has no staging replace directives")
    return {module: staging_version for module in sorted(modules)}


def throwaway_go_mod(version: str, replacements: Mapping[str, str]) -> str:
    """The go.mod of the module that builds the binaries."""
    replace_lines = "".join(f"\t{mod} => {mod} {ver}\n" for mod, ver in replacements.items())
    return (
        "module netpol-sniffer.test/controlplane\n\n"
        "go 1.24.0\n\n"
        # The release builds with these GODEBUG defaults; a dependency's godebug line is ignored.
        "godebug default=go1.24\n\n"
        f"require k8s.io/kubernetes {version}\n\n"
        f"replace (\n{replace_lines})\n"
    )


def _version_ldflags(version: str) -> str:
    """What Kubernetes' own build stamps into its binaries (kubectl and skew checks read it)."""
    major, minor = version.lstrip("v").split(".")[:2]
    stamps = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    flags = [
        f"-X {package}.{name}={value}"
        for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for name, value in stamps.items()
    ]
    return " ".join(["-s", "-w", *flags])


def _go(args: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> str:
    command = ["go", *args]
    print("+", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise ControlPlaneError(
            f"`{' '.join(command)}` failed (exit {result.returncode}):\n{result.stderr.strip()}"
        )
    return result.stdout


def go_toolchain_env(root: Path = CACHE_ROOT) -> dict[str, str]:
    """The environment for ``go``: the toolchain on PATH, static binaries, two parallel jobs."""
    go = shutil.which("go") or (str(GO_FALLBACK) if GO_FALLBACK.is_file() else None)
    if go is None:
        raise ControlPlaneError("building the test cluster needs the Go toolchain (`go`)")
    env = {
        **os.environ,
        "PATH": f"{Path(go).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "CGO_ENABLED": "0",
        "GOFLAGS": f"-p={GO_PARALLEL} -mod=mod",
    }
    if not env.get("HOME"):
        # Go keeps its module and build caches under $HOME; CI may run without one.
        env.setdefault("GOPATH", str(root / "gopath"))
        env.setdefault("GOCACHE", str(root / "go-build"))
    return env


def build(
    version: str = KUBERNETES_VERSION,
    root: Path = CACHE_ROOT,
    names: Sequence[str] = BINARIES,
) -> Path:
    """Build the binaries ``names`` into the cache unless they are there; return their directory.

    One cache directory serves the control plane and the node: a node run adds its binaries
    beside the control plane's, built in the same throwaway module.
    """
    target = binary_dir(version, root)
    missing = [name for name in names if not (target / name).is_file()]
    if not missing:
        print(f"{', '.join(names)} {version}: cached in {target}", flush=True)
        return target
    env = go_toolchain_env(root)
    started = time.monotonic()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="netpol-sniffer-k8s-build-") as work_name:
        work = Path(work_name)
        info = json.loads(
            _go(["mod", "download", "-json", f"k8s.io/kubernetes@{version}"], cwd=work, env=env)
        )
        replacements = staging_replacements(Path(info["GoMod"]).read_text(), version)
        (work / "go.mod").write_text(throwaway_go_mod(version, replacements))
        pinned = [
            f"{_PACKAGES[name]}@{ETCD_VERSION if name == 'etcd' else version}" for name in missing
        ]
        _go(["get", *pinned], cwd=work, env=env)
        staged = Path(tempfile.mkdtemp(prefix="bin-", dir=target.parent))
        try:
            for name in missing:
                step = time.monotonic()
                _go(
                    [
                        "build",
                        "-trimpath",
                        f"-ldflags={_version_ldflags(version)}",
                        "-o",
                        str(staged / name),
                        _PACKAGES[name],
                    ],
                    cwd=work,
                    env=env,
                )
                print(f"built {name} in {time.monotonic() - step:.0f} s", flush=True)
            # Published only when all are built, each by a rename: an interrupted build never
            # leaves a partial binary in the cache.
            for name in missing:
                (staged / name).rename(target / name)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    print(
        f"{', '.join(missing)} {version} (etcd {ETCD_VERSION}) built in "
        f"{time.monotonic() - started:.0f} s into {target}",
        flush=True,
    )
    return target


# ---------------------------------------------------------------------------------------------
# Certificates and keys


def _private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class _Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _issue(
    *,
    subject: x509.Name,
    issuer: _Issued | None,
    usage: x509.ObjectIdentifier | None = None,
    san: Sequence[x509.GeneralName] = (),
) -> _Issued:
    """A CA (issuer None: self-signed) or a leaf with one extended key usage."""
    key = _private_key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    signer = issuer.key if issuer else key
    return _Issued(cert=builder.sign(signer, hashes.SHA256()), key=key)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _kubeconfig(*, server: str, ca: bytes, cert: bytes, key: bytes) -> str:
    """An admin kubeconfig with the credentials inline (JSON is valid kubeconfig YAML)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {"server": server, "certificate-authority-data": b64(ca)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
                }
            ],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
            "current-context": "e2e",
        },
        indent=2,
    )


# ---------------------------------------------------------------------------------------------
# Running


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Chosen below Linux's ephemeral range (32768-60999), where the kernel's own pick for port 0
    would land: outgoing connections take ports from there and could grab it before we listen.
    """
    for _ in range(200):
        port = random.randint(*_LISTEN_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ControlPlaneError(f"no free port on 127.0.0.1 in {_LISTEN_PORTS}")


class _AddressInUse(ControlPlaneError):
    """A component lost the race for its port (another program took it first)."""


def die_with_parent() -> None:
    # Children get SIGTERM when the test process dies, even from SIGKILL.
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def enter_netns(name: str) -> None:
    """Move the calling process (a child before exec) into the named network namespace.

    Only the network: the mount namespace stays the host's, so the kubelet's volume mounts and
    containerd's container mounts see each other.
    """
    clone_newnet = 0x40000000
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL("libc.so.6", use_errno=True).setns(fd, clone_newnet) != 0:
            raise OSError(ctypes.get_errno(), f"setns into network namespace {name}")
    finally:
        os.close(fd)


def child_setup(netns: str | None) -> Callable[[], None]:
    """A ``preexec_fn``: into ``netns`` (when given), then tied to this process's life."""

    def setup() -> None:
        if netns is not None:
            enter_netns(netns)
        die_with_parent()

    return setup


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, in one temporary directory.

    ``start()`` returns when the API server is ready and the controller manager has created the
    ``default`` ServiceAccount; ``stop()`` (idempotent) ends the processes and removes the data.

    A node's control plane (tests/e2e/node.py) runs in the node's network namespace on the node's
    address, gives the node a podCIDR and schedules pods.
    """

    bin_dir: Path
    workdir: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="netpol-sniffer-e2e-"))
    )
    service_cluster_ip_range: str = "10.96.0.0/16"
    # Where etcd and the API server listen (and what the API server advertises).
    address: str = "127.0.0.1"
    # The network namespace every component runs in; None: this process's own.
    netns: str | None = None
    # The pod network: when set, the controller manager gives each node a podCIDR from it.
    cluster_cidr: str | None = None
    # Pods are scheduled only with kube-scheduler: a control plane without nodes needs none.
    with_scheduler: bool = False
    # Chosen by start().
    apiserver_port: int = field(default=0, init=False)
    etcd_url: str = field(default="", init=False)
    _admin_pem: tuple[bytes, bytes] = field(default=(b"", b""), init=False)
    _ca: _Issued | None = field(default=None, init=False)
    _processes: list[_Process] = field(default_factory=list, init=False)
    _stopped: bool = field(default=False, init=False)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_cert(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for kubectl (and clients) that talks to this control plane."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run this control plane's kubectl; on failure raise with its stderr."""
        command = [str(self.bin_dir / "kubectl"), *args]
        result = subprocess.run(
            command, input=stdin, env=self.env, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"`kubectl {' '.join(args)}` failed: {result.stderr.strip()}")
        return result

    def kubectl_json(self, *args: str, stdin: str | None = None) -> dict[str, object]:
        output = self.kubectl(*args, "-o", "json", stdin=stdin).stdout
        document: dict[str, object] = json.loads(output)
        return document

    def start(self) -> ControlPlane:
        for attempt in range(1, START_ATTEMPTS + 1):
            self.apiserver_port = free_port()
            try:
                self._write_credentials()
                self._start_etcd()
                self._start_apiserver()
                self._start_controller_manager()
                if self.with_scheduler:
                    self._start_scheduler()
                self.wait_for_default_service_account("default")
                return self
            except _AddressInUse:
                if attempt == START_ATTEMPTS:
                    self.stop()
                    raise
                self._end_processes()
                shutil.rmtree(self.workdir)
                self.workdir.mkdir()
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        # Marked stopped only at the end: a stop cut short by a signal is redone by atexit.
        if self._stopped:
            return
        self._end_processes()
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._stopped = True

    def _end_processes(self) -> None:
        for process in reversed(self._processes):
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in reversed(self._processes):
            try:
                process.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
        self._processes.clear()

    # -- pieces

    def _write_credentials(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True)
        ca = _issue(subject=_name("netpol-sniffer-e2e-ca"), issuer=None)
        serving = _issue(
            subject=_name("kube-apiserver"),
            issuer=ca,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            san=[
                *(
                    x509.IPAddress(ipaddress.ip_address(address))
                    for address in sorted({"127.0.0.1", self.address, self.kubernetes_service_ip})
                ),
                *(
                    x509.DNSName(name)
                    for name in (
                        "localhost",
                        "kubernetes",
                        "kubernetes.default",
                        "kubernetes.default.svc",
                        "kubernetes.default.svc.cluster.local",
                    )
                ),
            ],
        )
        admin = _issue(
            subject=_name("netpol-sniffer-e2e-admin", "system:masters"),
            issuer=ca,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        # The API server's identity towards kubelets (exec, logs, port-forward).
        kubelet_client = _issue(
            subject=_name("kube-apiserver-kubelet-client", "system:masters"),
            issuer=ca,
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        service_accounts = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write(pki / "ca.crt", _pem_cert(ca.cert))
        _write(pki / "apiserver.crt", _pem_cert(serving.cert))
        _write(pki / "apiserver.key", _pem_key(serving.key))
        _write(pki / "apiserver-kubelet-client.crt", _pem_cert(kubelet_client.cert))
        _write(pki / "apiserver-kubelet-client.key", _pem_key(kubelet_client.key))
        _write(pki / "sa.key", _pem_key(service_accounts))
        _write(
            pki / "sa.pub",
            service_accounts.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        self.kubeconfig.write_text(
            _kubeconfig(
                server=self.server,
                ca=_pem_cert(ca.cert),
                cert=_pem_cert(admin.cert),
                key=_pem_key(admin.key),
            )
        )
        self.kubeconfig.chmod(0o600)
        self._admin_pem = (_pem_cert(admin.cert), _pem_key(admin.key))
        self._ca = ca

    @property
    def kubernetes_service_ip(self) -> str:
        """The ``kubernetes`` Service's ClusterIP: the first address of the Service range."""
        network = ipaddress.ip_network(self.service_cluster_ip_range)
        return str(network.network_address + 1)

    def write_client_kubeconfig(self, path: Path, user: str, group: str | None = None) -> Path:
        """A kubeconfig for ``user`` (in ``group``) with a client certificate of this cluster's CA:
        how a kubelet (``system:node:NAME`` in ``system:nodes``) or kube-proxy authenticates."""
        assert self._ca is not None, "the control plane's credentials are written when it starts"
        client = _issue(
            subject=_name(user, group), issuer=self._ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH
        )
        path.write_text(
            _kubeconfig(
                server=self.server,
                ca=_pem_cert(self._ca.cert),
                cert=_pem_cert(client.cert),
                key=_pem_key(client.key),
            )
        )
        path.chmod(0o600)
        return path

    def _spawn(self, name: str, args: Sequence[str]) -> _Process:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                [str(self.bin_dir / name), *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                preexec_fn=child_setup(self.netns),
            )
        process = _Process(name=name, popen=popen, log=log)
        self._processes.append(process)
        return process

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://{self.address}:{client}"
        process = self._spawn(
            "etcd",
            [
                "--name=e2e",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://{self.address}:{peer}",
                f"--initial-advertise-peer-urls=http://{self.address}:{peer}",
                f"--initial-cluster=e2e=http://{self.address}:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait(process, lambda: _http_ok(f"{self.etcd_url}/health"))

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        process = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={self.address}",
                f"--advertise-address={self.address}",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={self.service_cluster_ip_range}",
                # Node: kubelets (system:node:NAME) may read and write what their pods need.
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
                # The capture sidecar may ask for privileges; the API server must let it through.
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        self._wait(process, self._apiserver_ready)

    def _start_controller_manager(self) -> None:
        pki = self.workdir / "pki"
        node_cidrs = (
            []
            if self.cluster_cidr is None
            else ["--allocate-node-cidrs=true", f"--cluster-cidr={self.cluster_cidr}"]
        )
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--bind-address={self.address}",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={self.service_cluster_ip_range}",
                *node_cidrs,
                "--leader-elect=false",
                "--profiling=false",
            ],
        )

    def _start_scheduler(self) -> None:
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--bind-address={self.address}",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--profiling=false",
            ],
        )

    def _apiserver_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        cert, key = self._admin_pem
        with tempfile.NamedTemporaryFile(dir=self.workdir, suffix=".pem") as bundle:
            bundle.write(cert + key)
            bundle.flush()
            context.load_cert_chain(bundle.name)
        return _http_ok(f"{self.server}/readyz", context=context)

    def _wait(
        self, process: _Process, ready: Callable[[], bool], timeout: float = READY_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                tail = process.log_tail()
                failure = _AddressInUse if "address already in use" in tail else ControlPlaneError
                raise failure(f"{process.name} exited with {process.popen.returncode}:\n{tail}")
            if ready():
                return
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{process.name} not ready after {timeout:.0f} s:\n{process.log_tail()}"
        )

    @contextlib.contextmanager
    def custom_resources(self, crd: Path) -> Iterator[None]:
        """The CustomResourceDefinition in ``crd`` installed and established for the block, then
        deleted. Polled rather than `kubectl wait`: right after the create, the object has no
        status.conditions yet and `kubectl wait --for condition=established` fails on that."""
        name = self.kubectl("apply", "-o", "name", "-f", str(crd)).stdout.strip()
        apiserver = next(p for p in self._processes if p.name == "kube-apiserver")

        def established() -> bool:
            found = self.kubectl(
                "get",
                name,
                "-o",
                'jsonpath={.status.conditions[?(@.type=="Established")].status}',
                check=False,
            )
            return found.stdout.strip() == "True"

        self._wait(apiserver, established)
        try:
            yield
        finally:
            self.kubectl("delete", "--ignore-not-found", "-f", str(crd))

    def wait_for_default_service_account(self, namespace: str) -> None:
        """Pods are admitted only once the namespace's ``default`` ServiceAccount exists (the
        controller manager makes it)."""
        controller_manager = next(p for p in self._processes if p.name == "kube-controller-manager")

        def exists() -> bool:
            found = self.kubectl(
                "get",
                "serviceaccount",
                "default",
                "-n",
                namespace,
                "--ignore-not-found",
                "-o",
                "name",
                check=False,
            )
            return found.stdout.strip() != ""

        self._wait(controller_manager, exists)


def _http_ok(url: str, *, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=["build", "up"])
    args = parser.parse_args(argv)
    try:
        bin_dir = build()
        if args.command == "build":
            print(bin_dir)
            return 0
        control_plane = ControlPlane(bin_dir=bin_dir)
        # SIGTERM ends the run like Ctrl-C does, so the data is removed either way.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            control_plane.start()
            print(f"ready: {control_plane.server}\nexport KUBECONFIG={control_plane.kubeconfig}")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
        finally:
            control_plane.stop()
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
