"""A tampered or hand-edited snapshot whose fields have the wrong type: the analysis stops with an
error naming the file, the object and the field, instead of reading the field as something else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kernel.errors import SnapshotError
from tests.hostile.hostile_helpers import run, snapshot, write_snapshot


def _deployment(document: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = (
        item
        for item in document["items"]
        if item["kind"] == "Deployment" and item["metadata"]["name"] == name
    )
    return found  # type: ignore[no-any-return]


def test_a_template_host_network_written_as_text_is_refused_not_taken_for_true(
    bundle: Path,
) -> None:
    """``hostNetwork: "false"`` is text, and any non-empty text is true to Python: read as it
    was, the workload counted as host-network and silently got no policy."""
    document = snapshot(bundle)
    _deployment(document, "frontend")["spec"]["template"]["spec"]["hostNetwork"] = "false"
    write_snapshot(bundle, document)
    with pytest.raises(SnapshotError) as caught:
        run(bundle)
    message = str(caught.value)
    assert message.startswith(f"{bundle / 'snapshot.json'}: items[")
    assert "(Deployment default/frontend): spec.template.spec.hostNetwork must be a boolean" in (
        message
    )
    assert message.endswith("got 'false'")
