from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeship.backends.gelu import GELU_OPSET, fuse_erf_gelu


@pytest.fixture(scope="module")
def gelu_mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-layer MLP with exact GELUs as torch.export writes them (x * 0.5 * (1 + erf(x / √2)))."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 16), torch.nn.GELU(),
                                torch.nn.Linear(16, 4)).eval()
    path = tmp_path_factory.mktemp("gelu") / "mlp.onnx"
    torch.onnx.export(model, (torch.zeros(2, 8),), str(path), input_names=["x"], output_names=["y"], opset_version=18,
                      dynamo=True, external_data=False, verbose=False)
    return path


def test_each_erf_gelu_becomes_one_gelu_node_with_the_same_outputs(gelu_mlp: Path) -> None:
    import onnxruntime as ort

    model = onnx.load(str(gelu_mlp))
    assert sum(node.op_type == "Erf" for node in model.graph.node) == 2
    assert fuse_erf_gelu(model) == 2
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Gelu") == 2 and "Erf" not in ops
    assert next(opset.version for opset in model.opset_import if opset.domain == "") == GELU_OPSET
    onnx.checker.check_model(model, full_check=True)
    read = {name for node in model.graph.node for name in node.input}
    assert all(initializer.name in read for initializer in model.graph.initializer), "the fused constants are left behind"

    x = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32) * 3
    (before,) = ort.InferenceSession(str(gelu_mlp)).run(None, {"x": x})
    (after,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def _erf_graph(*, half: float = 0.5, expose_erf: bool = False) -> onnx.ModelProto:
    """x * half * (1 + erf(x / √2)) written by hand, optionally with the erf also a graph output."""
    nodes = [helper.make_node("Div", ["x", "root2"], ["scaled"]),
             helper.make_node("Erf", ["scaled"], ["erf"]),
             helper.make_node("Add", ["erf", "one"], ["plus_one"]),
             helper.make_node("Mul", ["x", "plus_one"], ["times_x"]),
             helper.make_node("Mul", ["times_x", "half"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])]
    if expose_erf:
        outputs.append(helper.make_tensor_value_info("erf", TensorProto.FLOAT, [3]))
    constants = [helper.make_tensor(name, TensorProto.FLOAT, [], [value])
                 for name, value in (("root2", 2 ** 0.5), ("one", 1.0), ("half", half))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])], outputs,
                              initializer=constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_the_operand_order_onnx2tf_knows_is_fused_too() -> None:
    model = _erf_graph()
    assert fuse_erf_gelu(model) == 1
    assert [node.op_type for node in model.graph.node] == ["Gelu"]
    assert [node.output[0] for node in model.graph.node] == ["y"]


@pytest.mark.parametrize("model", [_erf_graph(half=0.4), _erf_graph(expose_erf=True)], ids=["not-gelu", "erf-read-elsewhere"])
def test_what_is_not_exactly_a_private_gelu_is_left_alone(model: onnx.ModelProto) -> None:
    before = model.SerializeToString()
    assert fuse_erf_gelu(model) == 0
    assert model.SerializeToString() == before
