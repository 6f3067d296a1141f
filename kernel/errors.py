"""The one error tree of netpol-sniffer.

Every error the tool raises on purpose derives from :class:`NetpolSnifferError`; third-party
exceptions (dpkt's ``NeedData``/``UnpackError``, kubernetes' ``ApiException``, jinja2's errors,
yaml's errors) are translated into this tree in the one module that imports that library.

    NetpolSnifferError
     ├── CaptureError            a capture file cannot be (fully) read
     │    ├── TruncatedCapture   the file ends mid-record; packets before the damage still count
     │    ├── MalformedCapture   bytes that are not a capture, or a record that makes no sense
     │    └── CaptureTooLarge    more bytes than the cap on one file; packets before it still count
     ├── BundleError             a bundle directory is missing pieces or is inconsistent
     ├── SnapshotError           snapshot.json (or a folder of lists) is unusable
     ├── PolicyError             a policy file cannot be parsed or is not a NetworkPolicy
     │    └── UnsafePolicies     generated policies would deny an observed flow
     ├── RenderError             a template failed or rendered something invalid
     ├── OutputError             the output directory holds other files, or cannot be written
     ├── CollectError            talking to the cluster failed
     │    ├── NotFound           no such object, or the API (a CRD) is not served at all
     │    ├── AccessDenied       RBAC refuses a verb; names the missing permission
     │    └── ExecFailed         a command run in a pod through the exec API failed
     │         ├── StreamCut     the exec stream ended without a status (retried, resumed)
     │         └── ChecksumMismatch  pulled bytes differ from the sha256 computed in the pod
     ├── LabError                the simulated cluster could not be built or run
     │    └── NeedsRoot          the lab needs root (network namespaces, iptables, tcpdump)
     ├── ConfigError             a configuration file, setting or TLS file is unusable (webhook)
     └── ClusterError            analyse --scheduler: Dask missing, its scheduler unreachable
          └── CaptureUnseen      a Dask worker cannot read a capture file at the shared path
"""

from __future__ import annotations


class NetpolSnifferError(Exception):
    """Base of every error netpol-sniffer raises on purpose."""


class CaptureError(NetpolSnifferError):
    """A capture file cannot be (fully) read."""


class TruncatedCapture(CaptureError):
    """The capture ends in the middle of a record."""


class MalformedCapture(CaptureError):
    """The bytes are not a capture, or a record is nonsensical."""


class CaptureTooLarge(CaptureError):
    """The capture holds more bytes (decompressed) than the cap on one file; the packets before
    the cap still count."""


class BundleError(NetpolSnifferError):
    """A bundle directory is missing pieces or is inconsistent."""


class SnapshotError(NetpolSnifferError):
    """The cluster snapshot is unusable."""


class PolicyError(NetpolSnifferError):
    """A policy file cannot be parsed or is not a NetworkPolicy."""


class UnsafePolicies(PolicyError):
    """Generated policies would deny a flow that was observed."""


class RenderError(NetpolSnifferError):
    """A template failed, or rendered output that does not validate."""


class OutputError(NetpolSnifferError):
    """The output directory holds files netpol-sniffer did not write, or cannot be written."""


class CollectError(NetpolSnifferError):
    """Talking to the cluster failed."""


class NotFound(CollectError):
    """The API server has no such object, or does not serve the resource at all (a CRD that is
    not installed)."""


class AccessDenied(CollectError):
    """The API server refused a request; the message names the missing permission."""


class ExecFailed(CollectError):
    """A command run in a pod through the exec API failed."""


class StreamCut(ExecFailed):
    """The exec stream ended before the command's status arrived."""


class ChecksumMismatch(ExecFailed):
    """A pulled file's sha256 differs from the one computed in the pod."""


class LabError(NetpolSnifferError):
    """The simulated cluster could not be built or run."""


class NeedsRoot(LabError):
    """The lab needs root for network namespaces, iptables and tcpdump."""


class ConfigError(NetpolSnifferError):
    """A configuration file, a setting or a TLS file is unusable; the message names it."""


class ClusterError(NetpolSnifferError):
    """``analyse --scheduler``: Dask is not installed, or its scheduler cannot be reached or
    used; the message names the address."""


class CaptureUnseen(ClusterError):
    """A Dask worker cannot read a capture file at the path this machine gave it (the bundle is
    not shared with it at the same path); the message names the file and the worker."""
