"""The hostile-input suite's set-up: the recorded microservices-demo bundle, copied, with crafted
captures or snapshot edits added by a test, analysed, and compared with the clean run.

Captures come from the pods being analysed, so a hostile workload controls every byte of its own
capture (and, with a tampered bundle, of the snapshot). Each test adds its attack to a copy of the
clean bundle and asserts that the policies come out as the clean run's, that nothing escapes its
place in an output, and that the attack is reported.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

from analyser.analysing import Analysis, analyse
from analyser.bundles import open_bundle
from analyser.rendering import KUSTOMIZATION
from tests.bundle_builders import Frame, write_pcap

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "microservices-demo" / "bundle"
NAMESPACE = "default"


def copy_example(target: Path) -> Path:
    """A fresh copy of the recorded bundle at ``target``."""
    shutil.copytree(EXAMPLE, target)
    return target


def pod_folder(bundle: Path, app: str) -> Path:
    """The capture folder of the pod of Deployment ``app`` (``frontend``, ``redis-cart``)."""
    (folder,) = (
        path
        for path in (bundle / "captures" / NAMESPACE).iterdir()
        if path.name.rsplit("-", 2)[0] == app
    )
    return folder


def pod_ip(bundle: Path, app: str) -> str:
    """The address of the pod of Deployment ``app``, from its meta.json."""
    meta = json.loads((pod_folder(bundle, app) / "meta.json").read_text())
    return str(meta["ips"][0])


def window_start(bundle: Path) -> float:
    """The start of the bundle's capture window (UTC epoch seconds): crafted packets go after."""
    return open_bundle(bundle).manifest.window.start  # type: ignore[union-attr]


def add_capture(
    bundle: Path, app: str, frames: Iterable[Frame], *, name: str = "hostile.pcap"
) -> Path:
    """A crafted capture file in the capture folder of ``app``'s pod (read as that pod's own)."""
    return write_pcap(pod_folder(bundle, app) / name, frames)


def snapshot(bundle: Path) -> dict[str, object]:
    return json.loads((bundle / "snapshot.json").read_text())  # type: ignore[no-any-return]


def write_snapshot(bundle: Path, document: Mapping[str, object]) -> None:
    (bundle / "snapshot.json").write_text(json.dumps(document, indent=1))


def run(bundle: Path, **options: object) -> Analysis:
    """``analyse`` on the bundle, in this process."""
    return analyse(open_bundle(bundle), workers=1, **options)  # type: ignore[arg-type]


def without_comments(text: str) -> str:
    """A policy file's text without its comment lines, which say why each rule exists (the flows
    behind it, counted) and so change with every flow a test adds, dropped or not. Lines are
    split as YAML and Python split them (U+2028 and NEL too): a comment that let a line break
    through would leave a line that is no comment, and a comparison would fail on it."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def policy_files(analysis: Analysis) -> dict[str, str]:
    """The policy files (and the Kustomization) of an analysis, as a cluster admin applies them,
    :func:`without_comments`."""
    return {
        path: without_comments(text)
        for path, text in analysis.files.items()
        if path.endswith(".yaml") or path == KUSTOMIZATION
    }
