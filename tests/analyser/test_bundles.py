"""Bundles: a directory → manifest, snapshot, history, metas and captures; damage reported."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from analyser.bundles import FileProblem, open_bundle, parse_manifest
from kernel.bundles import CaptureEntry, Manifest, Window, entries_for_layout, write_manifest
from kernel.errors import BundleError

WINDOW = {"start": "2026-01-01T10:00:00Z", "end": "2026-01-01T11:00:00+00:00"}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def entry(root: Path, relative: str, namespace: str, pod: str) -> dict[str, object]:
    data = (root / relative).read_bytes()
    return {
        "path": relative,
        "namespace": namespace,
        "pod": pod,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def make_bundle(root: Path, **overrides: object) -> Path:
    write(root / "snapshot.json", b'{"apiVersion": "v1", "kind": "List", "items": []}')
    write(root / "pod-ips.jsonl", b"")
    write(root / "captures/shop/cart-1/capture.pcap0", b"first ring file")
    write(root / "captures/shop/cart-1/capture.pcap1.gz", b"second ring file")
    write(root / "captures/shop/cart-1/meta.json", b'{"pod": "cart-1", "namespace": "shop"}')
    write(root / "captures/web/front-1/capture.pcapng", b"front")
    write(root / "captures/web/front-1/meta.json", b'{"pod": "front-1", "namespace": "web"}')
    document: dict[str, object] = {
        "format_version": 1,
        "producer": "lab",
        "capture_mode": "sidecar",
        "window": WINDOW,
        "captures": [
            entry(root, "captures/shop/cart-1/capture.pcap0", "shop", "cart-1"),
            entry(root, "captures/shop/cart-1/capture.pcap1.gz", "shop", "cart-1"),
            entry(root, "captures/web/front-1/capture.pcapng", "web", "front-1"),
        ],
    }
    document.update(overrides)
    (root / "bundle.json").write_text(json.dumps(document))
    return root


def relative(bundle_root: Path, paths: tuple[Path, ...]) -> list[str]:
    return [p.relative_to(bundle_root).as_posix() for p in paths]


def test_a_complete_bundle_opens_with_every_part(tmp_path: Path) -> None:
    bundle = open_bundle(make_bundle(tmp_path / "b1"))
    assert bundle.name == "b1"
    assert bundle.problems == ()
    assert bundle.snapshot == bundle.root / "snapshot.json"
    assert bundle.pod_ips == bundle.root / "pod-ips.jsonl"
    assert relative(bundle.root, bundle.captures) == [
        "captures/shop/cart-1/capture.pcap0",
        "captures/shop/cart-1/capture.pcap1.gz",
        "captures/web/front-1/capture.pcapng",
    ]
    assert relative(bundle.root, bundle.capture_metas) == [
        "captures/shop/cart-1/meta.json",
        "captures/web/front-1/meta.json",
    ]
    manifest = bundle.manifest
    assert manifest is not None
    assert (manifest.producer, manifest.capture_mode) == ("lab", "sidecar")
    assert manifest.window is not None
    assert (manifest.window.start_text, manifest.window.end_text) == (
        "2026-01-01T10:00:00Z",
        "2026-01-01T11:00:00Z",
    )
    assert manifest.captures[2] == CaptureEntry(
        "captures/web/front-1/capture.pcapng",
        "web",
        "front-1",
        hashlib.sha256(b"front").hexdigest(),
        5,
    )


def test_a_changed_capture_is_reported_as_damaged_and_still_read(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    (root / "captures/web/front-1/capture.pcapng").write_bytes(b"FRONT")  # same size
    (root / "captures/shop/cart-1/capture.pcap0").write_bytes(b"cut")
    bundle = open_bundle(root)
    assert bundle.problems == (
        FileProblem(
            "captures/shop/cart-1/capture.pcap0",
            "size 3 bytes, bundle.json says 15: damaged, read anyway",
        ),
        FileProblem(
            "captures/web/front-1/capture.pcapng",
            "sha256 differs from bundle.json: damaged, read anyway",
        ),
    )
    assert len(bundle.captures) == 3
    assert open_bundle(root, check_sums=False).problems == bundle.problems[:1]


def test_a_missing_capture_is_a_problem_not_a_failure(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    (root / "captures/web/front-1/capture.pcapng").unlink()
    bundle = open_bundle(root)
    assert bundle.problems == (
        FileProblem("captures/web/front-1/capture.pcapng", "listed in bundle.json but missing"),
    )
    assert len(bundle.captures) == 2


def test_a_capture_the_manifest_does_not_list_is_read_too(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    write(root / "captures/web/front-1/late.pcap", b"late")
    bundle = open_bundle(root)
    assert "captures/web/front-1/late.pcap" in relative(root, bundle.captures)
    assert bundle.problems == ()


def test_no_capture_at_all_is_an_error(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    for path in (root / "captures").rglob("capture.*"):
        path.unlink()
    with pytest.raises(BundleError, match=r"no capture files found \(3 listed in bundle.json"):
        open_bundle(root)


def test_a_plain_folder_with_a_snapshot_and_loose_pcaps(tmp_path: Path) -> None:
    write(tmp_path / "snapshot.json", b"{}")
    write(tmp_path / "a.pcap", b"a")
    write(tmp_path / "more/b.pcapng.gz", b"b")
    write(tmp_path / "notes.txt", b"not a capture")
    bundle = open_bundle(tmp_path)
    assert bundle.manifest is None
    assert bundle.pod_ips is None
    assert relative(bundle.root, bundle.captures) == ["a.pcap", "more/b.pcapng.gz"]


def test_a_snapshot_folder_is_accepted(tmp_path: Path) -> None:
    write(tmp_path / "snapshot/pods.json", b"{}")
    write(tmp_path / "a.pcap", b"a")
    assert open_bundle(tmp_path).snapshot == tmp_path.resolve() / "snapshot"


def test_a_yaml_snapshot_is_accepted(tmp_path: Path) -> None:
    write(tmp_path / "snapshot.yaml", b"kind: List\nitems: []\n")
    write(tmp_path / "a.pcap", b"a")
    assert open_bundle(tmp_path).snapshot == tmp_path.resolve() / "snapshot.yaml"


def test_a_bundle_one_level_down_is_pointed_at(tmp_path: Path) -> None:
    """``analyse examples/microservices-demo`` names the bundle inside instead of asking for a
    snapshot."""
    make_bundle(tmp_path / "demo" / "bundle")
    with pytest.raises(BundleError, match=r"but .*demo/bundle is a bundle: give that folder"):
        open_bundle(tmp_path / "demo")


def test_no_snapshot_is_an_error_that_says_how_to_make_one(tmp_path: Path) -> None:
    write(tmp_path / "a.pcap", b"a")
    with pytest.raises(BundleError, match=r"no snapshot\.json .*kubectl get"):
        open_bundle(tmp_path)


def test_a_missing_directory_or_a_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle directory"):
        open_bundle(tmp_path / "nope")
    write(tmp_path / "file.pcap", b"x")
    with pytest.raises(BundleError, match="not a directory"):
        open_bundle(tmp_path / "file.pcap")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"format_version": 3}, "format_version 3 is not supported"),
        ({"format_version": "1"}, "'format_version' must be a whole number"),
        ({"producer": "me"}, "producer must be one of collect, lab"),
        ({"window": {"start": "yesterday", "end": WINDOW["end"]}}, "window.start"),
        ({"window": {"start": "2026-01-01T10:00:00", "end": WINDOW["end"]}}, "no time zone"),
        ({"window": {"start": WINDOW["end"], "end": WINDOW["start"]}}, "ends before it starts"),
        ({"captures": {}}, "'captures' must be a list"),
        (
            {"captures": [{"path": "../x.pcap"}]},
            r"captures\[0\]: path '../x.pcap' must be relative",
        ),
        (
            {"captures": [{"path": "x.pcap", "namespace": "a", "pod": "b", "size": 1}]},
            r"captures\[0\]: 'sha256' must be a non-empty string",
        ),
    ],
)
def test_a_bad_manifest_names_the_field(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    root = make_bundle(tmp_path / "b", **overrides)
    with pytest.raises(BundleError, match=message):
        open_bundle(root)


def test_a_manifest_that_is_not_json(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"bundle\.json: not valid JSON: line 1"):
        parse_manifest("{nope", source="b/bundle.json")


def test_a_manifest_nested_too_deep_is_one_error_line() -> None:
    deep = '{"format_version": 1, "producer": "lab", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(BundleError, match=r"^b/bundle\.json: nested more than 100 lists") as caught:
        parse_manifest(deep, source="b/bundle.json")
    assert "\n" not in str(caught.value)


def test_written_manifests_read_back_and_match_the_files(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    (root / "bundle.json").unlink()
    manifest = Manifest(
        producer="collect",
        capture_mode="sidecar",
        window=Window(1_767_261_600.0, 1_767_265_200.0),
        captures=tuple(entries_for_layout(root)),
    )
    write_manifest(root, manifest)
    bundle = open_bundle(root)
    assert bundle.problems == ()
    assert bundle.manifest == manifest
    assert [(e.namespace, e.pod) for e in manifest.captures] == [
        ("shop", "cart-1"),
        ("shop", "cart-1"),
        ("web", "front-1"),
    ]
    text = json.dumps(manifest.as_json())
    assert parse_manifest(text, source="x").as_json() == manifest.as_json()


def test_a_manifest_written_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    manifest = root / "bundle.json"
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert open_bundle(root).manifest is not None


SECRET = b"root:SECRET-FROM-OUTSIDE:0:0\n"


def test_files_linked_out_of_the_bundle_are_not_read(tmp_path: Path) -> None:
    """A tampered bundle links its files to files of the machine that analyses it: none is read,
    and each is named as such."""
    root = make_bundle(tmp_path / "bundle")
    secret = write(tmp_path / "elsewhere" / "secret", SECRET)
    (root / "captures/web/front-1/other.pcap").symlink_to(secret)
    (root / "captures/web/front-1/meta.json").unlink()
    (root / "captures/web/front-1/meta.json").symlink_to(secret)
    (root / "pod-ips.jsonl").unlink()
    (root / "pod-ips.jsonl").symlink_to(secret)
    # A link that stays inside the bundle is followed as before.
    (root / "captures/web/front-1/again.pcap").symlink_to(
        root / "captures/web/front-1/capture.pcapng"
    )
    bundle = open_bundle(root)
    names = [bundle.relative(p) for p in bundle.captures]
    assert "captures/web/front-1/other.pcap" not in names
    assert "captures/web/front-1/again.pcap" in names
    assert bundle.pod_ips is None
    assert root / "captures/web/front-1/meta.json" not in bundle.capture_metas
    outside = "a symbolic link to outside the bundle: not read (copy the file into the bundle)"
    assert {p for p in bundle.problems if p.problem == outside} == {
        FileProblem("captures/web/front-1/other.pcap", outside),
        FileProblem("captures/web/front-1/meta.json", outside),
        FileProblem("pod-ips.jsonl", outside),
    }


def test_a_capture_listed_in_the_manifest_but_linked_out_is_not_hashed_nor_read(
    tmp_path: Path,
) -> None:
    root = make_bundle(tmp_path / "bundle")
    secret = write(tmp_path / "elsewhere" / "secret", SECRET)
    capture = root / "captures/web/front-1/capture.pcapng"
    capture.unlink()
    capture.symlink_to(secret)
    bundle = open_bundle(root)
    assert capture not in bundle.captures
    assert [p.path for p in bundle.problems] == ["captures/web/front-1/capture.pcapng"]


def test_a_bundle_whose_only_captures_are_linked_out_has_no_capture(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    write(root / "snapshot.json", b'{"kind": "List", "items": []}')
    (root / "a.pcap").symlink_to(write(tmp_path / "elsewhere" / "a.pcap", SECRET))
    with pytest.raises(BundleError, match="1 symbolic links to outside the bundle"):
        open_bundle(root)


def test_a_snapshot_linked_out_of_the_bundle_is_an_error(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "bundle")
    (root / "snapshot.json").unlink()
    (root / "snapshot.json").symlink_to(write(tmp_path / "elsewhere" / "secret", SECRET))
    with pytest.raises(BundleError, match="symbolic link to outside the bundle") as error:
        open_bundle(root)
    assert "SECRET" not in str(error.value)
    (root / "snapshot.json").unlink()
    folder = root / "snapshot"
    write(folder / "a.json", b'{"kind": "List", "items": []}')
    (folder / "b.yaml").symlink_to(tmp_path / "elsewhere" / "secret")
    with pytest.raises(BundleError, match=r"b\.yaml: a symbolic link to outside the bundle"):
        open_bundle(root)
