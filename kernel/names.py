"""The names a cluster and its users see: labels, annotations, the sidecar's container and
volume. Shared by the webhook (which writes them), collect and uninstall-sidecars (which look for
them), the lab (which plays the cluster) and analyse. Data only."""

from __future__ import annotations

from typing import Final

# A namespace opts in with CAPTURE_LABEL=CAPTURE_ENABLED (the webhook configuration's
# namespaceSelector); a pod opts out with CAPTURE_LABEL=CAPTURE_DISABLED.
CAPTURE_LABEL: Final = "netpol-sniffer.io/capture"
CAPTURE_ENABLED: Final = "enabled"
CAPTURE_DISABLED: Final = "disabled"
# On an injected pod: what was injected (guards against injecting twice).
STATUS_ANNOTATION: Final = "netpol-sniffer.io/status"
# The capture sidecar and where it writes.
CONTAINER_NAME: Final = "netpol-sniffer-capture"
CAPTURES_VOLUME: Final = "netpol-sniffer-captures"
CAPTURES_DIRECTORY: Final = "/captures"
# The node-capture DaemonSet (manifests/node-capture): its namespace, and the labels collect
# finds its pods by. Its container and volume have the sidecar's names.
NODE_CAPTURE_NAMESPACE: Final = "netpol-sniffer-node-capture"
NODE_CAPTURE_SELECTOR: Final = (
    "app.kubernetes.io/name=netpol-sniffer,app.kubernetes.io/component=node-capture"
)
