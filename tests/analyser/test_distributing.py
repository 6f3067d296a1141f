"""``analyse --scheduler``: the map step on a real Dask cluster (``dask scheduler`` and ``dask
worker`` processes on loopback, started here), the output byte for byte the local run's; a worker
killed mid-file, a scheduler lost mid-run, an unreachable scheduler, one without workers, a worker
that cannot see the bundle (root: a mount namespace hides it), a worker running other code, and
Dask missing.

The tests that start a cluster carry the marker ``e2e`` (CI's second stage, ``make test``): each
cluster costs seconds of CPU. The rest are fast."""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import dask.config
import pytest

from analyser.bundles import open_bundle
from analyser.distributing import dask_capture_map
from analyser.periods import DAY
from analyser.reading import read_captures
from cli.analyse import SCHEDULER_VARIABLE
from cli.main import ExitStatus, main
from kernel.bundles import CAPTURES, entries_for_layout, find_captures, write_manifest
from kernel.errors import ClusterError
from tests.bundle_builders import T0, make_bundle
from tests.dask_cluster import START_DEADLINE, DaskCluster, dask_cluster, free_port
from tests.hostile.hostile_helpers import EXAMPLE, copy_example

REPO = Path(__file__).resolve().parents[2]
STALLING = Path(__file__).with_name("dask_stalling.py")
NETPOL_SNIFFER = str(Path(sys.executable).parent / "netpol-sniffer")
_PCAP_MAGIC = b"\xd4\xc3\xb2\xa1"  # little-endian, microseconds: what the lab's tcpdump writes
_RECORD = struct.Struct("<IIII")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A scheduler and two workers, shared by the tests that only read through it."""
    with dask_cluster(tmp_path_factory.mktemp("cluster")) as started:
        started.start_worker("one")
        started.start_worker("two")
        started.wait_for_workers(2)
        yield started


@dataclass(frozen=True)
class Output:
    files: dict[str, bytes]  # every file analyse wrote, by its path under --out
    stderr: str


def analyse_output(
    bundle: Path | list[Path], out: Path, capsys: pytest.CaptureFixture[str], *options: str
) -> Output:
    bundles = bundle if isinstance(bundle, list) else [bundle]
    status = main(["analyse", *map(str, bundles), "--out", str(out), *options])
    stderr = capsys.readouterr().err
    assert status == ExitStatus.OK, stderr
    return Output(output_files(out), stderr)


def output_files(out: Path) -> dict[str, bytes]:
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in out.rglob("*")}


def analyse_error(
    bundle: Path, out: Path, capsys: pytest.CaptureFixture[str], *options: str
) -> str:
    """What analyse says on stderr when it fails, as it must here, writing nothing."""
    status = main(["analyse", str(bundle), "--out", str(out), *options])
    stderr = capsys.readouterr().err
    assert status == ExitStatus.ERROR, stderr
    assert not out.exists()
    return stderr


def split_into_rings(bundle: Path) -> Path:
    """Each pod's capture as a ring of three files, the last gzipped, as a tcpdump ring
    (``-C -W``) and ``collect`` leave them; one pod's middle file cut short mid-record."""
    manifest = open_bundle(bundle).manifest
    assert manifest is not None
    for path in find_captures(bundle / CAPTURES):
        data = path.read_bytes()
        assert data[:4] == _PCAP_MAGIC
        header, records, offset = data[:24], [], 24
        while offset < len(data):
            length = _RECORD.unpack_from(data, offset)[2]
            records.append(data[offset : offset + 16 + length])
            offset += 16 + length
        third = len(records) // 3 + 1
        parts = [header + b"".join(records[i : i + third]) for i in range(0, 3 * third, third)]
        path.unlink()
        (path.parent / "capture.pcap0").write_bytes(parts[0])
        (path.parent / "capture.pcap1").write_bytes(parts[1])
        (path.parent / "capture.pcap2.gz").write_bytes(gzip.compress(parts[2], mtime=0))
    cut = find_captures(bundle / CAPTURES)[0].with_name("capture.pcap1")
    cut.write_bytes(cut.read_bytes()[:-5])
    write_manifest(bundle, replace(manifest, captures=tuple(entries_for_layout(bundle))))
    return bundle


@pytest.mark.e2e
def test_the_example_bundle_gives_the_local_runs_output_byte_for_byte(
    cluster: DaskCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = copy_example(tmp_path / "bundle")
    local = analyse_output(bundle, tmp_path / "local", capsys, "--workers", "1")
    distributed = analyse_output(bundle, tmp_path / "dask", capsys, "--scheduler", cluster.address)
    assert distributed.files == local.files
    assert sum(name.endswith(".yaml") for name in local.files) == 12  # a policy per workload
    assert f"12 capture files on the Dask cluster at {cluster.address}" in distributed.stderr


@pytest.mark.e2e
def test_a_bundle_of_many_files_gives_the_local_runs_output_byte_for_byte(
    cluster: DaskCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = split_into_rings(copy_example(tmp_path / "bundle"))
    local = analyse_output(bundle, tmp_path / "local", capsys, "--workers", "1")
    # The scheduler from the environment, as a deployment would set it.
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv(SCHEDULER_VARIABLE, cluster.address)
        distributed = analyse_output(bundle, tmp_path / "dask", capsys)
    assert distributed.files == local.files
    assert "36 capture files on the Dask cluster" in distributed.stderr
    # The file cut short is a warning in both, the packets before the damage counted alike.
    warnings = [line for line in local.stderr.splitlines() if "warning" in line]
    assert any("capture.pcap1: the file ends inside record" in line for line in warnings), warnings
    assert [line for line in distributed.stderr.splitlines() if "warning" in line] == warnings


@dataclass(frozen=True)
class Background:
    command: subprocess.Popen[bytes]
    log: Path

    def wait_for(self, stalled: Path, cluster: DaskCluster) -> str:
        """Until a stalling worker has started a file (``dask_stalling.py``): its name."""
        deadline = time.monotonic() + START_DEADLINE
        while not stalled.exists() and self.command.poll() is None:
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.05)
        assert stalled.exists(), self.log.read_text()
        return stalled.read_text()

    def finish(self) -> int:
        return self.command.wait(timeout=START_DEADLINE)


@contextmanager
def analysing_elsewhere(bundle: Path, out: Path, address: str) -> Iterator[Background]:
    """``netpol-sniffer analyse --scheduler`` in a process of its own, killed after if still
    running; its output in ``out.log``."""
    log = out.with_name(f"{out.name}.log")
    argv = [NETPOL_SNIFFER, "analyse", str(bundle), "-o", str(out), "--scheduler", address]
    with log.open("wb") as output:
        command = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield Background(command, log)
    finally:
        if command.poll() is None:
            command.kill()
            command.wait()


def start_stalling_worker(cluster: DaskCluster, stalled: Path) -> None:
    """A worker whose reading of a file starts, writes the file's name to ``stalled`` and never
    ends (``dask_stalling.py``)."""
    env = {"NETPOL_SNIFFER_TEST_STALLED": str(stalled)}
    cluster.start_worker("stalling", preload=STALLING, env=env)


@pytest.mark.e2e
def test_several_capture_windows_give_the_local_runs_output_byte_for_byte(
    cluster: DaskCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monday = make_bundle(tmp_path / "monday", damaged=True)
    tuesday = make_bundle(tmp_path / "tuesday", start=T0 + DAY)
    local = analyse_output([monday, tuesday], tmp_path / "local", capsys, "--workers", "1")
    distributed = analyse_output(
        [monday, tuesday], tmp_path / "dask", capsys, "--scheduler", cluster.address
    )
    assert distributed.files == local.files
    assert "reading 5 capture files on the Dask cluster" in distributed.stderr


@pytest.mark.e2e
def test_a_worker_killed_mid_file_loses_nothing_its_files_are_read_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = copy_example(tmp_path / "bundle")
    local = analyse_output(bundle, tmp_path / "local", capsys, "--workers", "1")
    stalled = tmp_path / "stalled"
    with dask_cluster(tmp_path / "cluster") as cluster:
        # The stalling worker alone at first, so that it surely has files when it is killed.
        start_stalling_worker(cluster, stalled)
        cluster.wait_for_workers(1)
        with analysing_elsewhere(bundle, tmp_path / "dask", cluster.address) as analysing:
            assert analysing.wait_for(stalled, cluster).startswith("captures/default/")
            cluster.start_worker("healthy")
            cluster.wait_for_workers(2)
            cluster.kill("stalling")
            assert analysing.finish() == 0, analysing.log.read_text() + cluster.logs()
    assert output_files(tmp_path / "dask") == local.files


@pytest.mark.e2e
def test_a_scheduler_lost_mid_run_is_an_error_naming_the_file_and_writes_nothing(
    tmp_path: Path,
) -> None:
    bundle = copy_example(tmp_path / "bundle")
    stalled = tmp_path / "stalled"
    with dask_cluster(tmp_path / "cluster") as cluster:
        start_stalling_worker(cluster, stalled)
        cluster.wait_for_workers(1)
        with analysing_elsewhere(bundle, tmp_path / "dask", cluster.address) as analysing:
            name = analysing.wait_for(stalled, cluster)
            cluster.kill("scheduler")
            assert analysing.finish() == ExitStatus.ERROR
    said = analysing.log.read_text()
    assert f"error: {name}: the Dask cluster at {cluster.address} stopped reading it" in said
    assert "Traceback" not in said  # Dask's own logs of it are held back (shown with --debug)
    assert not (tmp_path / "dask").exists()


def test_an_unreachable_scheduler_is_an_error_naming_its_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        stderr = analyse_error(EXAMPLE, tmp_path / "out", capsys, "--scheduler", address)
    assert f"error: cannot reach the Dask scheduler at {address}: " in stderr
    assert "Traceback" not in stderr


@pytest.mark.e2e
def test_a_cluster_left_without_workers_mid_run_is_an_error_not_a_wait_for_ever(
    tmp_path: Path,
) -> None:
    bundle = copy_example(tmp_path / "bundle")
    stalled = tmp_path / "stalled"

    def kill_once_stalled(started: DaskCluster) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while not stalled.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        started.kill("stalling")

    with dask_cluster(tmp_path / "cluster") as cluster:
        start_stalling_worker(cluster, stalled)
        cluster.wait_for_workers(1)
        killer = threading.Thread(target=kill_once_stalled, args=(cluster,))
        with dask_capture_map(cluster.address, no_worker_grace=1) as capture_map:
            killer.start()
            with pytest.raises(ClusterError) as raised:
                read_captures(
                    find_captures(bundle / CAPTURES), root=bundle, capture_map=capture_map
                )
        killer.join()
    name = stalled.read_text()
    assert str(raised.value).startswith(
        f"{name}: the Dask scheduler at {cluster.address} has had no worker for 1 s while this "
        "file waits to be read"
    )


@pytest.mark.e2e
def test_a_scheduler_without_workers_is_an_error_saying_how_to_start_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with dask_cluster(tmp_path / "cluster") as cluster:
        stderr = analyse_error(EXAMPLE, tmp_path / "out", capsys, "--scheduler", cluster.address)
    assert f"the Dask scheduler at {cluster.address} has no worker: " in stderr
    assert f"`dask worker {cluster.address}`" in stderr


@pytest.mark.e2e
@pytest.mark.root
@pytest.mark.parametrize("view", ["hidden", "another"])
def test_a_worker_that_does_not_see_the_bundle_is_an_error_naming_the_file(
    view: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "shared"
    bundle = copy_example(shared / "bundle")
    first = find_captures(bundle / CAPTURES)[0]
    size = first.stat().st_size
    # The worker in a mount namespace of its own, where the shared folder is empty (a machine
    # without the share mounted) or holds another copy of the bundle, its first file shorter (a
    # stale copy, another bundle at the same path).
    if view == "hidden":
        mount = ['mount -t tmpfs tmpfs "$1" && shift && exec "$@"', "sh", str(shared)]
        said = f"cannot read {first}: No such file or directory; every worker must see"
    else:
        elsewhere = tmp_path / "elsewhere"
        copy_example(elsewhere / "bundle")
        other = elsewhere / first.relative_to(shared)
        other.write_bytes(other.read_bytes()[:-100])
        mount = ['mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(elsewhere)]
        mount.append(str(shared))
        said = f"sees another file at {first}: {size - 100:,} bytes there, {size:,} here; every"
    wrapper = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", *mount]
    with dask_cluster(tmp_path / "cluster") as cluster:
        cluster.start_worker("elsewhere", wrapper=wrapper)
        cluster.wait_for_workers(1)
        stderr = analyse_error(bundle, tmp_path / "out", capsys, "--scheduler", cluster.address)
    name = first.relative_to(bundle).as_posix()
    assert f"error: {name}: the Dask worker tcp://127.0.0.1:" in stderr
    assert said in stderr


@pytest.mark.e2e
def test_a_worker_running_other_code_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A worker importing another copy of netpol-sniffer, one comment apart: an older install.
    other = tmp_path / "other"
    for package in ("analyser", "kernel"):
        shutil.copytree(
            REPO / package, other / package, ignore=shutil.ignore_patterns("*.so", "__pycache__")
        )
    with (other / "analyser" / "reading.py").open("a") as source:
        source.write("# another version\n")
    with dask_cluster(tmp_path / "cluster") as cluster:
        cluster.start_worker("older", env={"PYTHONPATH": str(other)})
        cluster.wait_for_workers(1)
        stderr = analyse_error(EXAMPLE, tmp_path / "out", capsys, "--scheduler", cluster.address)
    assert "error: the Dask worker tcp://127.0.0.1:" in stderr
    assert "runs other netpol-sniffer code than this machine" in stderr


def test_workers_on_the_command_line_beat_the_scheduler_in_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SCHEDULER_VARIABLE, f"tcp://127.0.0.1:{free_port()}")
    output = analyse_output(EXAMPLE, tmp_path / "out", capsys, "--workers", "1")
    assert "Dask" not in output.stderr


def test_without_dask_the_scheduler_option_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed: ImportError
    address = "tcp://127.0.0.1:8786"
    stderr = analyse_error(EXAMPLE, tmp_path / "out", capsys, "--scheduler", address)
    assert f"the Dask cluster at {address} needs Dask" in stderr
    assert "pip install 'netpol-sniffer[dask]'" in stderr


def test_workers_and_a_scheduler_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["analyse", str(EXAMPLE), "-o", "out", "--workers", "2", "--scheduler", "tcp://a:1"])
    assert exit_.value.code == ExitStatus.USAGE
    assert "--scheduler: not allowed with argument --workers" in capsys.readouterr().err
