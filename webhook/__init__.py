"""netpol-sniffer's mutating admission webhook: injects the tcpdump capture sidecar.

The pure core (``capture``, ``mutations``, ``admission``, ``shedding``, ``settings``,
``reviews``, ``quantities``) is data in, data out: no HTTP, no TLS, no files. ``tls``,
``metrics``, ``app``, ``serving`` and ``workers`` are the shell around it (``app`` is the only
module that imports FastAPI, ``serving`` the only one that imports uvicorn, ``workers`` starts
processes). The public surface is listed in ``__all__``.
"""

from kernel.capture import CaptureMode
from webhook.admission import Admission, Outcome, UnreadableReview, admit
from webhook.capture import CaptureOptions, sidecar_container, tcpdump_argv
from webhook.mutations import Injection, Skip, SkipReason, plan_injection
from webhook.settings import ServingLimits, WebhookSettings, build_settings

__all__ = [
    "Admission",
    "CaptureMode",
    "CaptureOptions",
    "Injection",
    "Outcome",
    "ServingLimits",
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
