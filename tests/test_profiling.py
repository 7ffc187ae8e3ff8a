"""Per-layer profiles summarised by op type."""

from __future__ import annotations

import pytest

from edgeship.profiling import TOP_LAYERS, LayerTime, OpProfile


def test_layers_are_summarised_by_op_type_with_shares_kernels_and_the_slowest_layers() -> None:
    layers = [LayerTime(layer=f"conv{i}", op_type="Convolution", kernel="brgconv_avx512_f32" if i else "ref_any_f32", mean_us=10.0 + i)
              for i in range(12)]
    layers.append(LayerTime(layer="fc", op_type="FullyConnected", kernel=None, mean_us=4.0))
    profile = OpProfile.from_layers("test profiler", 7, layers)
    assert profile.tool == "test profiler" and profile.runs == 7 and profile.layer_count == 13
    assert profile.layers_us == pytest.approx(sum(layer.mean_us for layer in layers))
    conv, fc = profile.by_type
    assert (conv.op_type, conv.layers, conv.kernels) == ("Convolution", 12, ["brgconv_avx512_f32", "ref_any_f32"])
    assert conv.share + fc.share == pytest.approx(1.0, abs=1e-3) and fc.kernels == []
    assert [layer.layer for layer in profile.top_layers] == [f"conv{i}" for i in range(11, 11 - TOP_LAYERS, -1)]


def test_a_missing_profile_says_why() -> None:
    profile = OpProfile.unavailable("no profiler")
    assert profile.tool is None and profile.reason == "no profiler" and not profile.by_type
