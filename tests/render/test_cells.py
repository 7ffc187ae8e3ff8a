"""Figures as every rendering writes them."""

from __future__ import annotations

from edgeship.render.cells import overhead_text


def test_a_negative_call_overhead_is_said_to_be_noise_not_a_saving() -> None:
    assert overhead_text(12.34) == "12.3" and overhead_text(0.0) == "0.0" and overhead_text(None) == "—"
    assert overhead_text(-41.3) == "-41.3 (below the noise)"
