from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edgeship.backends import availability
from edgeship.backends.base import CalibrationSet, Precision
from edgeship.errors import BuildError
from edgeship.recipe import TfliteConfig

from backends.contract import BackendContract, onnx_artifact
from conftest import TrainedCnn

pytestmark = pytest.mark.skipif(not availability("tflite").available, reason=f"tflite: {availability('tflite').reason}")


class TestTfliteContract(BackendContract):
    backend = "tflite"
    config = TfliteConfig()
    runtime_modules = ("ai_edge_litert", "onnx2tf", "tensorflow")
    profiles = False  # LiteRT's Python interpreter has no op profiler


@pytest.fixture(scope="module")
def static_rgb_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-channel image model with a *static* batch of 1: the case where onnx2tf downloads sample images."""
    import torch

    from edgeship.zoo import build

    torch.manual_seed(0)
    model = build("resnet_small", in_channels=3, num_classes=10, width=4).eval()
    path = tmp_path_factory.mktemp("static") / "static.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"], output_names=["logits"], opset_version=18,
                      dynamo=True, external_data=False, verbose=False)
    return path


def test_static_batch_image_model_builds_offline(static_rgb_onnx: Path, no_network: list[object], tmp_path: Path) -> None:
    from edgeship.backends.tflite import TfliteBackend

    samples = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    artifact = onnx_artifact(static_rgb_onnx)
    for precision in (Precision.FP32, Precision.INT8):
        (tmp_path / precision).mkdir()
        engine = TfliteBackend().build(artifact, precision, CalibrationSet(samples, "fp"), TfliteConfig(), tmp_path / precision)
        with TfliteBackend().runner(engine, threads=1) as runner:
            assert runner.input_metadata()["input"].shape == (1, 3, 32, 32)
            assert runner.infer({"input": samples[:1]})["logits"].shape == (1, 10)
    assert no_network == [], f"the build tried the network: {no_network}"


def test_feeds_stay_nchw_and_layout_is_recorded(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    from edgeship.backends.tflite import TfliteBackend, _interpreter

    engine = TfliteBackend().build(onnx_artifact(trained_cnn.onnx), Precision.FP32, None, TfliteConfig(), tmp_path)
    layout = json.loads((tmp_path / "io.json").read_text())
    assert layout["inputs"]["input"] == {"perm": [0, 2, 3, 1], "onnx_shape": [-1, 1, 28, 28], "onnx_dtype": "float32"}
    assert layout["outputs"]["logits"]["perm"] is None
    details = _interpreter(engine, threads=1).get_input_details()[0]
    assert list(details["shape_signature"]) == [-1, 28, 28, 1], "the engine itself is NHWC with a dynamic batch"


@pytest.mark.parametrize("io_type", ["int8", "float32"])
def test_int8_is_full_integer_with_the_chosen_io(io_type: str, trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    from edgeship.backends.tflite import TfliteBackend, _interpreter

    calibration = CalibrationSet(trained_cnn.calibration, "fp")
    engine = TfliteBackend().build(onnx_artifact(trained_cnn.onnx), Precision.INT8, calibration,
                                   TfliteConfig(io_type=io_type, calibration_size=100), tmp_path)
    interpreter = _interpreter(engine, threads=1)
    assert np.dtype(interpreter.get_input_details()[0]["dtype"]) == np.dtype(io_type)
    assert np.dtype(interpreter.get_output_details()[0]["dtype"]) == np.dtype(io_type)
    weights = [t for t in interpreter.get_tensor_details() if len(t["shape"]) == 4 and t["quantization_parameters"]["scales"].size > 1]
    assert weights and all(np.dtype(t["dtype"]) == np.int8 for t in weights), "conv weights are per-channel int8"
    with TfliteBackend().runner(engine, threads=1) as runner:
        out = runner.infer({"input": trained_cnn.evaluation[:50]})["logits"]
    assert out.dtype == np.float32 and (out.argmax(1) == trained_cnn.labels[:50]).mean() > 0.9


def test_dynamic_int8_quantizes_the_weights_only_and_calibrates_nothing(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    from edgeship.backends.tflite import TfliteBackend, _interpreter

    one_sample = CalibrationSet(trained_cnn.calibration[:1], "fp")  # never read: a dynamic build calibrates nothing
    engine = TfliteBackend().build(onnx_artifact(trained_cnn.onnx), Precision.INT8, one_sample, TfliteConfig(mode="dynamic"), tmp_path)
    interpreter = _interpreter(engine, threads=1)
    assert np.dtype(interpreter.get_input_details()[0]["dtype"]) == np.float32
    assert np.dtype(interpreter.get_output_details()[0]["dtype"]) == np.float32
    weights = [t for t in interpreter.get_tensor_details() if len(t["shape"]) == 4 and np.dtype(t["dtype"]) == np.int8]
    assert weights, "conv weights are int8"
    activations = [t for t in interpreter.get_tensor_details() if len(t["shape"]) == 4 and np.dtype(t["dtype"]) == np.float32]
    assert activations, "activations stay float"
    with TfliteBackend().runner(engine, threads=1) as runner:
        out = runner.infer({"input": trained_cnn.evaluation[:50]})["logits"]
    assert out.dtype == np.float32 and (out.argmax(1) == trained_cnn.labels[:50]).mean() > 0.9


@pytest.mark.parametrize("key", [{"io_type": "int8"}, {"weight_rounding": "gptq"}, {"keep_float": 2}])
def test_dynamic_int8_refuses_what_shapes_a_full_integer_build(key: dict[str, str]) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=f"{next(iter(key))} shapes a full-integer INT8 build; mode: dynamic"):
        TfliteConfig(mode="dynamic", **key)


def test_float_layers_need_float_io() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="keeps float32 model I/O; use io_type: float32"):
        TfliteConfig(io_type="int8", keep_float=1)


def _op_types(engine: Path) -> list[tuple[str, str]]:
    """Each op's name and the dtype of its first input (an activation or the model's input)."""
    from edgeship.backends.tflite import _interpreter

    interpreter = _interpreter(engine, threads=1)
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    return [(op["op_name"], dtypes[op["inputs"][0]]) for op in interpreter._get_ops_details()]


def test_kept_layers_run_in_float_and_the_rest_in_int8(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    """``keep_float: 1`` (the weight-only ranking's first layer and the convolution feeding it) through TFLite's selective
    quantization: exactly those ops read float, every other convolution reads int8, and the mapping is recorded."""
    from edgeship.backends.sensitivity import FLOAT_LAYERS_FILE
    from edgeship.backends.tflite import FLOAT_OPS_FILE, TfliteBackend

    calibration = CalibrationSet(trained_cnn.calibration, "fp")
    full = tmp_path / "full"
    kept = tmp_path / "kept"
    for folder, keep in ((full, 0), (kept, 1)):
        folder.mkdir()
        TfliteBackend().build(onnx_artifact(trained_cnn.onnx), Precision.INT8, calibration,
                              TfliteConfig(calibration_size=100, keep_float=keep), folder)
    float_nodes = json.loads((kept / FLOAT_LAYERS_FILE).read_text())["nodes"]
    record = json.loads((kept / FLOAT_OPS_FILE).read_text())
    assert list(record["float_ops"]) == float_nodes and len(set(record["float_ops"].values())) == len(float_nodes)
    layers = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    every = [dtype for op, dtype in _op_types(full / "model.int8.tflite") if op in layers]
    some = [dtype for op, dtype in _op_types(kept / "model.int8.tflite") if op in layers]
    assert set(every) == {"int8"}, "without keep_float every layer is int8"
    assert some.count("float32") == len(float_nodes) and some.count("int8") == len(every) - len(float_nodes)
    with TfliteBackend().runner(kept / "model.int8.tflite", threads=1) as runner:
        out = runner.infer({"input": trained_cnn.evaluation[:50]})["logits"]
    assert (out.argmax(1) == trained_cnn.labels[:50]).mean() > 0.9


def test_a_float_search_converts_and_calibrates_once(trained_cnn: TrainedCnn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``keep_float: auto``: every candidate is the same calibrated model quantized with another denylist, so onnx2tf runs
    once for the whole search; the chosen candidate is the engine."""
    from edgeship.backends import tflite
    from edgeship.backends.float_search import SEARCH_FILE
    from edgeship.config import AccuracyTarget
    from edgeship.tensors import SearchSet

    conversions: list[Path] = []
    convert = tflite.onnx_to_saved_model
    monkeypatch.setattr(tflite, "onnx_to_saved_model", lambda source, *rest: conversions.append(source) or convert(source, *rest))
    search = SearchSet(trained_cnn.evaluation[:100], trained_cnn.labels[:100], "v")
    calibration = CalibrationSet(trained_cnn.calibration[:50], "c").with_search(search)
    cfg = TfliteConfig(keep_float="auto", accuracy_target=AccuracyTarget(min_cosine=0.99999))  # beyond the fully quantized engine
    engine = tflite.TfliteBackend().build(onnx_artifact(trained_cnn.onnx), Precision.INT8, calibration, cfg, tmp_path)
    record = json.loads((tmp_path / SEARCH_FILE).read_text())
    assert len(record["candidates"]) >= 2 and len(conversions) == 1
    chosen = next(c for c in record["candidates"] if c["float_layers"] == record["chosen"])
    assert engine == tmp_path / "model.int8.tflite" and (tmp_path / "io.json").is_file()
    layers = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD")  # TFLite's search ranks its Adds too
    assert sum(op in layers and dtype == "float32" for op, dtype in _op_types(engine)) == len(chosen["nodes"])
    assert record["ranked_ops"] == ["Conv", "Gemm", "MatMul", "Add"]
    assert not list(tmp_path.glob(".candidate-*")) and not list(tmp_path.glob(".work-*"))


def test_conversion_failure_is_a_build_error_with_the_converter_message(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from edgeship.backends.tflite import TfliteBackend

    node = helper.make_node("NoSuchOp", ["input"], ["logits"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]), path)
    (tmp_path / "out").mkdir()
    with pytest.raises(BuildError, match=r"tflite/fp32 build failed: onnx2tf") as caught:
        TfliteBackend().build(onnx_artifact(path), Precision.FP32, None, TfliteConfig(), tmp_path / "out")
    assert "NoSuchOp" in str(caught.value) or "exit" in str(caught.value)
    assert not list((tmp_path / "out").glob("*.tflite")), "a failed build leaves no engine"


def test_the_layout_record_of_a_dynamic_image_input_is_channels_last() -> None:
    """(-1, 3, -1, -1) fits (-1, -1, -1, 3) both as it is and channels-last, loosely: only channels-last puts the 3 in
    place. Fixed sizes decide; a tie (nothing fixed, or token ids) keeps the ONNX layout."""
    from edgeship.backends.tflite import _perm

    assert _perm([-1, 3, -1, -1], [-1, -1, -1, 3]) == [0, 2, 3, 1]
    assert _perm([-1, 1, 28, 28], [-1, 28, 28, 1]) == [0, 2, 3, 1]
    assert _perm([-1, 128], [-1, 128]) is None and _perm([-1, -1, -1, -1], [-1, -1, -1, -1]) is None
    with pytest.raises(ValueError, match="cannot map the ONNX shape"):
        _perm([-1, 3, 8, 8], [-1, 5, 5, 3])


def test_fixed_shape_sets_every_dimension_and_names_a_wrong_input(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from edgeship.backends.tflite import with_fixed_shape

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])])
    source = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph), str(source))
    fixed = with_fixed_shape(source, {"x": (1, 3, 32, 48)}, tmp_path / "fixed", Precision.FP32)
    dims = onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 32, 48]
    assert onnx.load(str(source)).graph.input[0].type.tensor_type.shape.dim[2].dim_param == "h", "the source is left as it was"
    with pytest.raises(BuildError, match="fixed_shape: the model has no input 'image'"):
        with_fixed_shape(source, {"image": (1, 3, 32, 32)}, tmp_path / "other", Precision.FP32)
    with pytest.raises(BuildError, match="input 'x' has 4 dimensions; give 4 sizes, the batch first"):
        with_fixed_shape(source, {"x": (3, 32, 32)}, tmp_path / "other", Precision.FP32)


def test_fixed_shape_folds_the_shape_arithmetic_the_sizes_settle(tmp_path: Path) -> None:
    """A reshape to a computed shape (a transformer's heads: Shape → Gather → Concat → Reshape) becomes a reshape to a
    constant once the input's sizes are fixed, which onnx2tf can follow; the values are unchanged."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgeship.backends.tflite import with_fixed_shape

    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Concat", ["batch", "split"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
                                           helper.make_tensor("split", TensorProto.INT64, [2], [3, 4])])
    source = tmp_path / "heads.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    fixed = with_fixed_shape(source, {"x": (2, 12)}, tmp_path / "fixed", Precision.FP32)
    assert [node.op_type for node in onnx.load(str(fixed)).graph.node] == ["Reshape"]
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    (y,) = ort.InferenceSession(str(fixed)).run(None, {"x": x})
    np.testing.assert_array_equal(y, x.reshape(2, 3, 4))


def test_a_model_with_exact_gelu_builds_with_builtin_ops(tmp_path: Path) -> None:
    """PyTorch's erf GELU (a transformer's MLP) needs no Flex op: the converter rejects Erf, the builtin GELU it accepts."""
    import torch

    from edgeship.backends.tflite import TfliteBackend

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(model, (torch.zeros(1, 8),), str(path), input_names=["x"], output_names=["y"], opset_version=18,
                      dynamo=True, external_data=False, verbose=False)
    x = np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32) * 3
    (tmp_path / "fp32").mkdir()
    engine = TfliteBackend().build(onnx_artifact(path), Precision.FP32, None, TfliteConfig(), tmp_path / "fp32")
    with TfliteBackend().runner(engine, threads=1) as runner:
        y = runner.infer({"x": x})["y"]
    np.testing.assert_allclose(y, model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("shape", "planes"), [((2, 3, 96, 96), 3), ((1, 1, 28, 28), 0), ((1, 16, 64, 64), 0), ((1, 3, 8, 8), 0)])
def test_an_input_is_written_channels_last_whichever_way_is_quicker(shape: tuple[int, ...], planes: int) -> None:
    """A large image of a few channels is written one channel at a time, anything else by a transposing copy: the engine
    gets the same channels-last values either way."""
    from edgeship.backends.tflite import TO_CHANNELS_LAST, _Write

    buffer = np.full(tuple(shape[i] for i in TO_CHANNELS_LAST[4]), np.nan, np.float32)  # the interpreter's own input

    class Interpreter:
        def set_tensor(self, index: int, value: np.ndarray) -> None:
            buffer[...] = value

        def tensor(self, index: int) -> Callable[[], np.ndarray]:
            return lambda: buffer

    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    details = {"index": 0, "dtype": np.float32, "quantization": (0.0, 0)}
    write = _Write(Interpreter(), details, list(TO_CHANNELS_LAST[4]), shape)
    write.write(array)
    assert write.planes == planes
    np.testing.assert_array_equal(buffer, array.transpose(0, 2, 3, 1))


def test_with_gptq_a_kept_layer_gets_its_own_weights_back_from_one_shared_conversion(
        trained_cnn: TrainedCnn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``weight_rounding: gptq``: every float set is quantized from one conversion of the fully rounded source, a kept
    layer's weights put back from one float conversion of the unrounded source; the engine's float layer then holds the
    exported model's own weights, not GPTQ's grid values."""
    import onnx
    from onnx import numpy_helper

    from edgeship.backends import tflite
    from edgeship.backends.rounding import WEIGHT_ROUNDING_FILE

    conversions: list[Path] = []
    convert = tflite.onnx_to_saved_model
    monkeypatch.setattr(tflite, "onnx_to_saved_model", lambda source, *rest: conversions.append(source) or convert(source, *rest))
    calibration = CalibrationSet(trained_cnn.calibration[:64], "c")
    cfg = TfliteConfig(weight_rounding="gptq", keep_float=1)
    quantizer = tflite.SelectiveInt8(calibration, cfg, tmp_path / "work")
    nodes = [node.name for node in onnx.load(str(trained_cnn.onnx)).graph.node if node.op_type == "Conv"][:1]
    for name, keep in (("none", []), ("first", nodes)):
        (tmp_path / name).mkdir()
        quantizer.build(trained_cnn.onnx, keep, tmp_path / name)
    assert len(conversions) == 2, "one conversion of the rounded source, one float conversion of the unrounded one"
    assert json.loads((tmp_path / "first" / WEIGHT_ROUNDING_FILE).read_text())["kept_float"] == nodes
    graph = onnx.load(str(trained_cnn.onnx)).graph
    conv = next(node for node in graph.node if node.name == nodes[0])
    exported = next(numpy_helper.to_array(init) for init in graph.initializer if init.name == conv.input[1])
    ohwi = exported.transpose(0, 2, 3, 1)
    for name, kept in (("first", True), ("none", False)):
        interpreter = tflite._interpreter(tmp_path / name / "model.int8.tflite", threads=1)
        float_weights = [interpreter.get_tensor(t["index"]) for t in interpreter.get_tensor_details()
                         if t["dtype"] == np.float32 and tuple(t["shape"]) == ohwi.shape]
        assert any(np.array_equal(w, ohwi) for w in float_weights) is kept, f"{name}: the exported weights in float, OHWI"
    # the fully quantized engine stores GPTQ's integers on every layer, the dense one included (per-channel scales): the
    # weights its search scores alone (``weights_alone``)
    from edgeship.backends.rounding import weights_alone

    rounded = [numpy_helper.to_array(init) for init in weights_alone(trained_cnn.onnx, calibration, "gptq")[0].graph.initializer
               if init.name in {node.input[1] for node in graph.node if node.op_type in ("Conv", "Gemm")}]
    interpreter = tflite._interpreter(tmp_path / "none" / "model.int8.tflite", threads=1)
    stored = 0
    for tensor in interpreter.get_tensor_details():
        scales, axis = tensor["quantization_parameters"]["scales"], tensor["quantization_parameters"]["quantized_dimension"]
        if tensor["dtype"] != np.int8 or len(tensor["shape"]) not in (2, 4) or len(scales) < 2:
            continue
        integers = interpreter.get_tensor(tensor["index"]).astype(np.float64)
        values = np.sort((integers * np.expand_dims(scales, [d for d in range(integers.ndim) if d != axis])).ravel())
        assert any(w.size == values.size and np.allclose(np.sort(w.ravel()), values, rtol=1e-6, atol=1e-6 * np.abs(w).max())
                   for w in rounded), f"{tensor['name']}: not GPTQ's values"
        stored += 1
    assert stored == len(rounded), (stored, len(rounded))
