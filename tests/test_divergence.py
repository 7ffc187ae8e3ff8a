"""Layer-wise divergence figures: SQNR and cosine from running sums, the tensor sites of an ONNX graph, matching renamed
tensors by value, and the ranking ``edgeship debug`` prints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgeship.divergence import (
    CHANNELS_FIRST,
    Accumulator,
    Divergence,
    TensorDivergence,
    TensorSite,
    cosine,
    match_by_value,
    renamed,
    sqnr_db,
    tensor_sites,
)


def test_sqnr_of_known_noise() -> None:
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 1e-4) == pytest.approx(40.0)
    assert sqnr_db(1.0, 0.0) == math.inf
    assert sqnr_db(0.0, 1.0) == -math.inf


def test_sqnr_of_an_overflowed_tensor_is_minus_infinity_not_an_error() -> None:
    assert sqnr_db(1.0, math.inf) == -math.inf and sqnr_db(0.0, 1.0) == -math.inf and sqnr_db(1.0, 0.0) == math.inf


def test_cosine_edge_cases() -> None:
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert cosine(np.zeros(3), np.ones(3)) == 0.0
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == 0.0
    assert cosine(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(1.0)


def test_accumulator_sums_over_samples_before_the_ratio() -> None:
    """SQNR is the ratio of summed energies over every sample, not a mean of per-sample ratios; an exact tensor is
    reported as exact (None), a tensor the engine lacks is left out."""
    rng = np.random.default_rng(0)
    sites = [TensorSite("a", "n0", "Conv", 0), TensorSite("b", "n1", "Relu", 1), TensorSite("c", "n2", "Add", 2)]
    acc = Accumulator()
    signal = noise = 0.0
    for _ in range(3):
        a = rng.normal(size=(1, 4, 5, 5))
        err = rng.normal(scale=0.01 * (1 + _), size=a.shape)
        acc.add({"a": a, "b": a, "c": a}, {"a": a + err, "b": a})
        signal += float((a**2).sum())
        noise += float((err**2).sum())
    rows = {row.tensor: row for row in acc.rows(sites)}
    assert set(rows) == {"a", "b"}
    assert rows["a"].sqnr_db == pytest.approx(10 * math.log10(signal / noise), abs=0.01)
    assert rows["b"].sqnr_db is None and rows["b"].cosine == pytest.approx(1.0)
    assert rows["a"].depth == 0 and rows["a"].op_type == "Conv"


def test_accumulator_refuses_a_tensor_of_another_size() -> None:
    with pytest.raises(ValueError, match="'a'"):
        Accumulator().add({"a": np.ones((1, 4))}, {"a": np.ones((1, 5))})


def test_matching_by_value_finds_transposed_tensors_and_leaves_a_fused_producer_unmatched() -> None:
    """A runtime that renames tensors and keeps them NHWC: each ONNX tensor goes to the engine tensor it matches by
    shape and value; the pre-activation tensor fused away has no partner of its own, since the fused output is taken
    by the activation it equals."""
    rng = np.random.default_rng(1)
    conv = rng.normal(size=(1, 3, 4, 4))
    relu = np.maximum(conv, 0)
    other = rng.normal(size=(1, 3, 4, 4))
    reference = {"conv": conv, "relu": relu, "other": other}
    engine = {"fused": relu.transpose(0, 2, 3, 1) + 1e-3, "x": other.transpose(0, 2, 3, 1), "noise": rng.normal(size=(1, 4, 4, 3))}
    matches = match_by_value(reference, engine)
    assert matches["relu"].engine == "fused" and matches["relu"].perm == CHANNELS_FIRST
    assert matches["other"].engine == "x"
    assert "conv" not in matches  # "fused" is taken by relu; "noise" is another tensor (cosine far below the bar)
    back = renamed(engine, matches)
    np.testing.assert_allclose(back["relu"], relu + 1e-3)
    assert back["other"].shape == other.shape


def _row(tensor: str, depth: int, sqnr: float | None) -> TensorDivergence:
    return TensorDivergence(tensor=tensor, node=tensor, op_type="Conv", depth=depth, sqnr_db=sqnr, cosine=0.99)


def test_worst_and_steepest_rank_the_layers() -> None:
    d = Divergence(method="m", samples=4, split="validation",
                   rows=[_row("a", 0, 40.0), _row("b", 1, None), _row("c", 2, 25.0), _row("d", 3, 24.0), _row("e", 4, 10.0)])
    assert [r.tensor for r in d.worst(3)] == ["e", "d", "c"]
    assert d.worst(10)[-1].tensor == "b"  # exact last
    steepest = d.steepest(2)
    assert [(r.tensor, fall) for r, fall in steepest] == [("c", 15.0), ("e", 14.0)]
    assert Divergence.unavailable("why").available is False


def test_tensor_sites_are_the_float_node_outputs_in_graph_order(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Reshape", ["r", "s"], ["y"], name="reshape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    sites = tensor_sites(path)
    assert [(s.tensor, s.op_type, s.depth) for s in sites] == [("r", "Relu", 0), ("y", "Reshape", 2)]


def test_an_overflowed_engine_tensor_gives_finite_figures_that_survive_json() -> None:
    """An FP16 tensor that overflowed to inf must not become NaN or ±inf: JSON has neither, and pydantic writes them as
    null, which a report would read back as "exact" or fail on."""
    import json

    from edgeship.divergence import SQNR_FLOOR_DB, Accumulator

    accumulator = Accumulator()
    reference = {"t": np.ones((1, 4), np.float32)}
    accumulator.add(reference, {"t": np.array([[1.0, np.inf, 1.0, 1.0]], np.float32)})
    sqnr, cos = accumulator.figures("t")
    assert sqnr == SQNR_FLOOR_DB and cos == 0.0
    json.dumps([sqnr, cos], allow_nan=False)
