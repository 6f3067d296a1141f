"""The node harness's pure parts (no root, no node): where debootstrap's mirror comes from, and
which stand-in replaces which image of the users' manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.node import DebianSources, NodeError, debian_sources
from tests.e2e.test_node_e2e import stand_ins


def _apt(tmp_path: Path, sources: str = "", one_line: str = "") -> Path:
    (tmp_path / "sources.list.d").mkdir()
    if sources:
        (tmp_path / "sources.list.d" / "debian.sources").write_text(sources)
    if one_line:
        (tmp_path / "sources.list").write_text(one_line)
    return tmp_path


def test_the_mirror_and_the_sources_come_from_this_machines_deb822_sources(tmp_path: Path) -> None:
    apt = _apt(
        tmp_path,
        sources=(
            "Types: deb\n# a comment\nURIs: http://mirror.test/debian\n"
            "Suites: bookworm bookworm-updates\nComponents: main\n\n"
            "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\n"
            "Components: main\n\n"
            "Types: deb-src\nURIs: http://mirror.test/src\nSuites: bookworm\n"
        ),
    )
    found = debian_sources(apt)
    assert found.mirror == "http://mirror.test/debian"
    assert "Suites: bookworm bookworm-updates\n" in found.sources
    assert "URIs: http://mirror.test/debian-security\nSuites: bookworm-security\n" in found.sources
    assert "src" not in found.sources


def test_one_line_sources_are_read_too(tmp_path: Path) -> None:
    apt = _apt(tmp_path, one_line="deb [arch=amd64] http://mirror.test/debian bookworm main\n")
    assert debian_sources(apt) == DebianSources(
        mirror="http://mirror.test/debian",
        sources=(
            "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )


def test_no_bookworm_source_is_a_clear_error(tmp_path: Path) -> None:
    apt = _apt(tmp_path, one_line="deb http://mirror.test/debian trixie main\n")
    with pytest.raises(NodeError, match="no Debian bookworm source"):
        debian_sources(apt)


def test_every_image_gets_a_stand_in_listening_on_its_containers_ports() -> None:
    manifests = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    spec:
      initContainers:
        - {name: check, image: "busybox:1.38.0@sha256:fd8d"}
      containers:
        - name: web
          image: registry.test/shop/web:v1
          ports: [{containerPort: 8080}, {containerPort: 53, protocol: UDP}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers: [{name: job, image: "redis:alpine"}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
"""
    assert stand_ins(manifests) == {
        "busybox:1.38.0@sha256:fd8d": ("busybox-1.38.0", ""),
        "redis:alpine": ("redis-alpine", ""),
        "registry.test/shop/web:v1": ("web-v1", "53/UDP 8080/TCP"),
    }
