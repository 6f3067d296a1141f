"""What an installed wheel holds that the code looks for outside Python files: the recorded
example `demo --recorded` analyses (no checkout to find it in)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "microservices-demo"
PIP = (sys.executable, "-m", "pip")


def test_an_installed_wheel_runs_demo_recorded_on_the_example_it_ships(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # Interpreted analyser/packets.py: this is about files, not speed.
    env = {**os.environ, "NETPOL_SNIFFER_COMPILE": "0"}
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        check=True,
        env=env,
        capture_output=True,
    )
    (wheel,) = wheels.glob("netpol_sniffer-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("lab/example/")}
    expected = {
        f"lab/example/{path.relative_to(EXAMPLE).as_posix()}"
        for path in EXAMPLE.rglob("*")
        if path.is_file()
    }
    assert shipped == expected
    installed = tmp_path / "installed"
    subprocess.run(
        [*PIP, "install", "--no-deps", "-q", "--target", str(installed), str(wheel)],
        check=True,
        capture_output=True,
    )
    # The installed copy first on the path, run from elsewhere: not the checkout's packages
    # (its dependencies still come from this environment).
    out = tmp_path / "out"
    script = (
        "import sys, cli.demo; from cli.main import main; "
        "print(cli.demo.EXAMPLE); sys.exit(main(['demo', '--recorded', '--out', sys.argv[1]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(installed / "lab" / "example")
    assert (out / "policies" / "default.frontend.yaml").is_file()
