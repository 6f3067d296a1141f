"""netpol-sniffer's mutating admission webhook: injects the tcpdump capture sidecar.

The pure core (``capture``, ``mutations``, ``admission``, ``settings``, ``reviews``,
``quantities``) is data in, data out: no HTTP, no TLS, no files. ``tls``, ``metrics`` and ``app``
are the shell around it (``app`` is the only module that imports FastAPI and uvicorn). The public
surface is listed in ``__all__``.
"""

from kernel.capture import CaptureMode
from webhook.admission import Admission, Outcome, UnreadableReview, admit
from webhook.capture import CaptureOptions, sidecar_container, tcpdump_argv
from webhook.mutations import Injection, Skip, SkipReason, plan_injection
from webhook.settings import WebhookSettings, build_settings

__all__ = [
    "Admission",
    "CaptureMode",
    "CaptureOptions",
    "Injection",
    "Outcome",
    "Skip",
    "SkipReason",
    "UnreadableReview",
    "WebhookSettings",
    "admit",
    "build_settings",
    "plan_injection",
    "sidecar_container",
    "tcpdump_argv",
]
