"""Kubernetes resource quantities (``10m``, ``64Mi``, ``1.5``, ``1e3``): parse and compare.

Settings and per-pod annotations are checked here before they reach a pod spec, so a bad value is
reported by the webhook instead of making the API server reject the pod. Pure: no I/O.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIXES: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
# The API server's grammar: a signed decimal number, then a binary or decimal SI suffix or an
# exponent. Signs are refused here: a resource amount must be positive.
_QUANTITY = re.compile(
    r"(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)|[eE](?P<exponent>[+-]?[0-9]+))?"
)


def parse_quantity(text: str) -> Decimal:
    """The amount a quantity stands for (cores for CPU, bytes for memory).

    Raises ValueError, naming the text, when it is not a positive Kubernetes quantity.
    """
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (like 100m, 64Mi or 0.5)")
    try:
        number = Decimal(match["number"])
        if match["exponent"] is not None:
            amount = number.scaleb(int(match["exponent"]))
        else:
            amount = number * _SUFFIXES[match["suffix"] or ""]
    except InvalidOperation as error:
        raise ValueError(f"{text!r} is not a usable quantity: {error}") from None
    if amount <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return amount
