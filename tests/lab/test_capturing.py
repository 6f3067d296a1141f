"""The sidecar as the lab runs it: the image's entrypoint, the downward API's environment and
the webhook's own tcpdump argv."""

from __future__ import annotations

from pathlib import Path

from kernel.capture import CaptureMode
from lab import capturing
from webhook.capture import CaptureOptions, tcpdump_argv

POD = capturing.PodInfo(
    name="web-abc12-xyz34",
    namespace="shop",
    uid="0000-1111",
    ips=("10.244.0.5", "fd00:10:244::5"),
    node="lab-node-1",
    labels=(("pod-template-hash", "abc12"), ("app", "web")),
)


def test_labels_file_is_what_the_kubelet_writes() -> None:
    assert capturing.labels_file(POD.labels) == 'app="web"\npod-template-hash="abc12"\n'


def test_the_command_is_the_entrypoint_then_the_webhooks_tcpdump_argv() -> None:
    options = CaptureOptions(mode=CaptureMode.FULL)
    directory = Path("/bundle/captures/shop/web-abc12-xyz34")
    environment = capturing.sidecar_environment(
        POD, options, directory=directory, labels_path=Path("/scratch/labels")
    )
    assert environment["NETPOL_SNIFFER_POD_IPS"] == "10.244.0.5,fd00:10:244::5"
    assert environment["NETPOL_SNIFFER_CAPTURE_MODE"] == "full"
    assert environment["NETPOL_SNIFFER_CAPTURE_DIR"] == str(directory)
    argv = capturing.capture_argv(options, directory, environment)
    entrypoint = argv.index(str(capturing.SIDECAR_ENTRYPOINT))
    assert argv[entrypoint - 1] == "sh" and argv[0] == "env"
    expected = tcpdump_argv(CaptureOptions(mode=CaptureMode.FULL, directory=str(directory)))
    assert argv[entrypoint + 1 :] == expected
    assert capturing.SIDECAR_ENTRYPOINT.is_file()
