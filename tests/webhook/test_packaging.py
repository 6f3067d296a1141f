"""The Dockerfiles and docker-compose.yml agree with the code (no container engine here, so these
check the wiring: paths, ports, entrypoint)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import yaml

from certs.make_certs import DEFAULT_OUT
from webhook.app import DEFAULT_PORT
from webhook.capture import ENTRYPOINT

ROOT = Path(__file__).resolve().parents[2]


def instructions(dockerfile: Path, name: str) -> list[str]:
    return [
        line.split(None, 1)[1]
        for line in dockerfile.read_text().splitlines()
        if line.startswith(f"{name} ")
    ]


def test_capture_image_entrypoint_is_the_one_the_webhook_runs() -> None:
    dockerfile = ROOT / "webhook" / "capture-image" / "Dockerfile"
    (entrypoint,) = instructions(dockerfile, "ENTRYPOINT")
    assert json.loads(entrypoint) == [ENTRYPOINT]
    copies = [c.split() for c in instructions(dockerfile, "COPY")]
    assert [c[-2:] for c in copies] == [[Path(ENTRYPOINT).name, ENTRYPOINT]]
    assert (dockerfile.parent / Path(ENTRYPOINT).name).is_file()
    assert re.search(r"FROM debian:bookworm", dockerfile.read_text())  # tcpdump 4.99.x


def test_webhook_image_copies_what_exists_and_is_not_ignored() -> None:
    dockerfile = ROOT / "webhook" / "Dockerfile"
    ignore = (ROOT / "webhook" / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for copy in instructions(dockerfile, "COPY"):
        if copy.startswith("--from="):
            continue
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in kept, f"{source} is excluded by the .dockerignore"


FIRST_PARTY = {"cli", "lab", "collector", "analyser", "webhook", "kernel", "certs"}


def _imported_packages(package: str) -> set[str]:
    """The project's top-level packages that ``package`` needs, itself included: its modules'
    imports, followed through the packages they name."""
    needed, pending = {package}, [package]
    while pending:
        for path in (ROOT / pending.pop()).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and not node.level
                    else []
                )
                for name in names:
                    top = name.split(".")[0]
                    if top in FIRST_PARTY and top not in needed:
                        needed.add(top)
                        pending.append(top)
    return needed


def test_webhook_image_copies_every_package_the_webhook_imports() -> None:
    copied = {
        copy.split()[0].rstrip("/")
        for copy in instructions(ROOT / "webhook" / "Dockerfile", "COPY")
        if not copy.startswith("--from=")
    }
    assert _imported_packages("webhook") <= copied


def test_compose_serves_certs_from_the_certs_tool() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    webhook = compose["services"]["webhook"]
    assert (ROOT / webhook["build"]["dockerfile"]).is_file()
    (volume,) = webhook["volumes"]
    source, target, mode = volume.split(":")
    assert (ROOT / source).resolve() == DEFAULT_OUT
    assert mode == "ro"
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in webhook["command"])
    assert Path(flags["tls-cert"]).parent == Path(target)
    assert Path(flags["tls-key"]).parent == Path(target)
    assert webhook["ports"] == [f"127.0.0.1:{DEFAULT_PORT}:{flags['port']}"]
    assert webhook["read_only"] is True and webhook["cap_drop"] == ["ALL"]
