"""A model that is not an image classifier, end to end: an ONNX entry with two named inputs (float features and int64
token ids) and two outputs, fed named arrays, judged by output fidelity on ONNX Runtime, OpenVINO and TFLite; the one-line
errors of bad arrays and of recipes that ask a generic model for what it cannot do."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from edgeship import RunResult, run
from edgeship.cli import main
from edgeship.pipeline.report import rebuild
from edgeship.recipe import load_recipe

pytestmark = pytest.mark.slow

VOCABULARY, WIDTH, TOKENS = 50, 16, 8


def write_encoder(path: Path) -> Path:
    """A tiny text-and-features encoder: vector = mean(embedding[ids]) + relu(features · W1); score = vector · W2."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5, name)
               for name, shape in (("table", (VOCABULARY, WIDTH)), ("w1", (WIDTH, WIDTH)), ("w2", (WIDTH, 1)))]
    weights.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    nodes = [helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embed"),
             helper.make_node("ReduceMean", ["embedded", "axis1"], ["pooled"], name="pool", keepdims=0),
             helper.make_node("MatMul", ["features", "w1"], ["projected"], name="project"),
             helper.make_node("Relu", ["projected"], ["activated"], name="relu"),
             helper.make_node("Add", ["pooled", "activated"], ["vector"], name="add"),
             helper.make_node("MatMul", ["vector", "w2"], ["score"], name="head")]
    graph = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", WIDTH]),
                                                 helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", TOKENS])],
                              [helper.make_tensor_value_info("vector", TensorProto.FLOAT, ["batch", WIDTH]),
                               helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def write_arrays(path: Path, count: int = 160, **replace: np.ndarray) -> Path:
    rng = np.random.default_rng(1)
    arrays = {"features": rng.standard_normal((count, WIDTH)).astype(np.float32), "ids": rng.integers(0, VOCABULARY, (count, TOKENS))}
    arrays.update(replace)
    np.savez(path, **arrays)
    return path


def write_recipe(folder: Path, **overrides: object) -> Path:
    raw: dict[str, object] = {
        "name": "encoder", "task": "generic", "store": str(folder / "store"), "reports": str(folder / "reports"),
        "model": {"onnx": "encoder.onnx"}, "data": {"dataset": "arrays", "path": "samples.npz"}, "calibration": {"size": 32},
        "backends": {"onnxruntime": {"precisions": ["fp32", "int8"]},
                     "openvino": {"precisions": ["int8"], "keep_float": "auto", "accuracy_target": {"min_cosine": 0.9999}},
                     "tflite": {"precisions": ["fp32"]}, "tensorrt": {"enabled": False}},
        "validate": {"together_rounds": 0, "warmup": 2, "iterations": 20, "min_seconds": 0.05, "threads": 1, "throughput_batch_sizes": [4],
                     "throughput_seconds": 0.02},
        "divergence": {"samples": 4},
        "gates": {"min_cosine": 0.99, "min_sqnr_db": {"score": 15.0}, "required": ["onnxruntime/*", "openvino/*"]},
    }
    raw.update(overrides)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("generic")
    write_encoder(folder / "encoder.onnx")
    write_arrays(folder / "samples.npz")
    return folder


@pytest.fixture(scope="module")
def result(folder: Path) -> RunResult:
    return run(load_recipe(write_recipe(folder)), console=Console(quiet=True))


def test_an_onnx_model_with_named_integer_inputs_is_its_own_reference_and_judged_by_output_fidelity(result: RunResult) -> None:
    report = json.loads(result.report_path.read_text())
    assert report["task"] == "generic" and report["accuracy"]["basis"] == "fidelity"
    assert report["baseline"]["name"] == "onnx/fp32" and report["baseline"]["top1"] is None
    assert report["dataset"]["name"] == "arrays" and report["dataset"]["eval"] == 40  # a quarter of 160, disjoint from the rest
    rows = {row["name"]: row for row in report["engines"]}
    fp32, int8 = rows["onnxruntime/fp32"], rows["onnxruntime/int8"]
    assert set(fp32["fidelity"]) == {"vector", "score"} and fp32["min_cosine"] == pytest.approx(1.0)
    assert fp32["min_sqnr_db"] > 100  # the same file on the same runtime
    assert 0.99 < int8["min_cosine"] < 1.0 and int8["fidelity"]["score"]["sqnr_db"] < fp32["fidelity"]["score"]["sqnr_db"]
    assert rows["openvino/int8"]["status"] == "ok" and rows["openvino/int8"]["min_cosine"] > 0.9
    gates = {g["gate"]: g for g in int8["gates"]}
    assert gates["min_agreement"]["outcome"] == "not-applicable" and gates["min_cosine"]["outcome"] == "pass"
    assert gates["min_sqnr_db"]["limit"] == 15.0 and "'score'" in gates["min_sqnr_db"]["detail"]
    # TFLite too takes both inputs by name, the int64 ids as integers (no layout change, no quantization)
    tflite = rows["tflite/fp32"]
    assert tflite["status"] == "ok" and tflite["min_cosine"] > 0.99999 and tflite["min_sqnr_db"] > 100, tflite.get("reason")
    layout = json.loads((Path(tflite["path"]).parent / "io.json").read_text())
    assert layout["inputs"]["ids"] == {"perm": None, "onnx_shape": [-1, TOKENS], "onnx_dtype": "int64"}
    assert result.exit_code == (0 if report["release"]["passed"] else 1)
    assert set(report["release"]["required"]) == {"onnxruntime/fp32", "onnxruntime/int8", "openvino/int8"}


def test_every_rendering_says_output_fidelity_and_the_report_rebuilds_from_the_manifest(result: RunResult) -> None:
    page = (result.run_dir / "report.html").read_text()
    assert "Output fidelity, not accuracy" in page and "ONNX baseline" in page and "cosine with FP32 (worst output)" in page
    assert "top-1 drop vs FP32" not in page, "the gates matrix has no class-score columns for a generic model"
    junit = (result.run_dir / "junit.xml").read_text()
    assert "min_cosine" in junit
    before = result.report_path.read_text()
    rebuild(result.run_dir)
    assert result.report_path.read_text() == before


def test_keep_float_auto_searches_a_generic_model_against_its_output_cosine_on_validation_arrays(result: RunResult) -> None:
    report = json.loads(result.report_path.read_text())
    row = next(row for row in report["engines"] if row["name"] == "openvino/int8")
    search = row["float_search"]
    assert search["measure"] == "cosine" and search["split"] == "validation" and search["target"] == {"min_cosine": 0.9999}
    assert search["samples"] == report["dataset"]["val"] and {r["node"] for r in search["ranking"]} == {"project", "head"}
    chosen = next(c for c in search["candidates"] if c["float_layers"] == search["chosen"])
    assert chosen["meets"] is search["met"] and (chosen["cosine"] >= 0.9999) is search["met"] and "agreement" not in chosen
    gate = next(g for g in row["gates"] if g["gate"] == "search_min_cosine")
    assert gate["outcome"] == ("pass" if search["met"] else "fail") and gate["value"] == chosen["cosine"]
    page = (result.run_dir / "report.html").read_text()
    assert "openvino/int8: keep_float auto:" in page and "output cosine ≥ 0.9999" in page


def test_every_fp16_and_int8_engine_is_compared_tensor_by_tensor_feeding_every_input(result: RunResult) -> None:
    report = json.loads(result.report_path.read_text())
    divergence = {row["name"]: row.get("divergence") for row in report["engines"]}["onnxruntime/int8"]
    assert divergence is not None and divergence["samples"] == 4 and divergence["rows"]


def _run_cli(folder: Path, capsys: pytest.CaptureFixture[str], **overrides: object) -> str:
    code = main(["run", str(write_recipe(folder, **overrides)), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(("arrays", "expected"), [
    ({"tokens": np.zeros((160, TOKENS), np.int64)},
     r"arrays \['features', 'ids', 'tokens'\]; the model's inputs are \['features', 'ids'\]"),
    ({"ids": np.zeros((160, TOKENS), np.int32)}, r"array 'ids' is int32; the model's input 'ids' takes int64"),
    ({"features": np.zeros((160, WIDTH + 1), np.float32)}, r"array 'features' has shape \(N, 17\); the model's input 'features' takes "
                                                            r"\(N, 16\)"),
    ({"features": np.full((160, WIDTH), np.nan, np.float32)}, r"array 'features' contains NaN or inf"),
    ({"ids": np.zeros((150, TOKENS), np.int64)}, r"the arrays hold different numbers of samples \(features: 160, ids: 150\)"),
])
def test_bad_arrays_are_one_line_errors_naming_the_file(arrays: dict[str, np.ndarray], expected: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    write_encoder(tmp_path / "encoder.onnx")
    write_arrays(tmp_path / "samples.npz", **arrays)
    err = _run_cli(tmp_path, capsys)
    assert "samples.npz" in err
    assert re.search(expected, err), err


def test_too_few_samples_and_a_file_that_is_not_npz_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_encoder(tmp_path / "encoder.onnx")
    write_arrays(tmp_path / "samples.npz", count=6)
    assert "6 samples; at least 10 are needed" in _run_cli(tmp_path, capsys)
    (tmp_path / "samples.npy").write_bytes(b"\x93NUMPY")
    assert "expected an .npz of named arrays" in _run_cli(tmp_path, capsys, data={"dataset": "arrays", "path": "samples.npy"})
    (tmp_path / "broken.npz").write_bytes(b"PK not a zip")
    assert "cannot read array file" in _run_cli(tmp_path, capsys, data={"dataset": "arrays", "path": "broken.npz"})


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"prune": {"enabled": True}}, r"prune.enabled: prune changes a PyTorch model, and model.onnx is an ONNX file"),
    ({"gates": {"min_agreement": 0.9}}, r"gates.min_agreement: a class-score gate, and task is generic"),
    ({"task": "classification"}, r"data.dataset arrays has no labels or class scores to judge: set task: generic"),
    ({"model": {"onnx": "missing.onnx"}}, r"'model.onnx': file not found: .*missing.onnx"),
    ({"model": {"onnx": "package://no_such_package_here/model.onnx"}}, r"'model.onnx': no installed package 'no_such_package_here'"),
    ({"model": {"onnx": "package://edgeship/missing.onnx"}}, r"'model.onnx': package 'edgeship' has no file 'missing.onnx'"),
    ({"model": {"zoo": "resnet_small"}}, r"data.dataset arrays feeds a model's named inputs as they are: give the model as model.onnx"),
    ({"devices": [{"name": "nuc", "url": "http://127.0.0.1:9", "token_env": "T"}]}, r"devices: measuring a generic model"),
    ({"backends": {"onnxruntime": {"precisions": ["int8"], "keep_float": "auto", "accuracy_target": {"min_agreement": 0.9}}}},
     r"backends.onnxruntime.accuracy_target: top-1 needs class scores, and task is generic"),
])
def test_recipes_asking_a_generic_model_for_what_it_cannot_do_are_one_line_errors(
        overrides: dict[str, object], expected: str, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_encoder(tmp_path / "encoder.onnx")
    write_arrays(tmp_path / "samples.npz")
    assert re.search(expected, _run_cli(tmp_path, capsys, **overrides))


def test_an_onnx_entry_found_inside_an_installed_package_without_importing_it(tmp_path: Path) -> None:
    from edgeship.recipe import onnx_file

    found = onnx_file("package://edgeship_deploy/__init__.py")  # any file of a package resolves the same way
    assert found.name == "__init__.py" and found.parent.name == "edgeship_deploy"


def test_dynamic_int8_quantizes_the_weight_products_and_calibrates_nothing(tmp_path: Path) -> None:
    import onnx

    from edgeship.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeConfig
    from edgeship.tensors import Precision

    source = write_encoder(tmp_path / "encoder.onnx")
    out = tmp_path / "engine"
    out.mkdir()
    engine = OnnxRuntimeBackend()._build(source, Precision.INT8, None, OnnxRuntimeConfig(mode="dynamic"), out)
    ops = {node.op_type for node in onnx.load(str(engine)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "QuantizeLinear" not in ops
    with np.load(write_arrays(tmp_path / "samples.npz")) as archive:
        feed = {name: archive[name][:16] for name in archive.files}
    with OnnxRuntimeBackend().runner(source, threads=1) as reference, OnnxRuntimeBackend().runner(engine, threads=1) as quantized:
        expected, got = reference.infer(feed), quantized.infer(feed)
    from edgeship.measure import fidelity

    assert fidelity(got, expected)["vector"]["cosine"] > 0.99



FACTORY = '''import torch


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(50, 16)
        self.project = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 1)

    def forward(self, features, ids):
        vector = self.table(ids).mean(1) + torch.relu(self.project(features))
        return vector, self.head(vector)


def build():
    return Encoder().eval()
'''


def test_a_pytorch_model_with_declared_inputs_is_exported_by_name_and_is_the_fp32_reference(tmp_path: Path) -> None:
    (tmp_path / "encoder.py").write_text(FACTORY)
    write_arrays(tmp_path / "samples.npz")
    declared = {"factory": "encoder.py:build", "outputs": ["embedding", "score"],  # 'embedding' is also the exporter's inner name
                "inputs": [{"name": "features", "shape": ["batch", WIDTH]},
                           {"name": "ids", "dtype": "int64", "shape": ["batch", "tokens"]}]}
    path = write_recipe(tmp_path, model=declared, backends={"onnxruntime": {"precisions": ["fp32", "int8"], "mode": "dynamic"},
                                                             "openvino": {"enabled": False}, "tflite": {"enabled": False},
                                                             "tensorrt": {"enabled": False}},
                        gates={"min_cosine": 0.99}, divergence={"enabled": False})
    result = run(load_recipe(path), console=Console(quiet=True))
    report = json.loads(result.report_path.read_text())
    assert report["baseline"]["name"] == "pytorch/fp32" and report["accuracy"]["basis"] == "fidelity"
    rows = {row["name"]: row for row in report["engines"]}
    assert set(rows["onnxruntime/fp32"]["fidelity"]) == {"embedding", "score"}
    assert rows["onnxruntime/fp32"]["min_sqnr_db"] > 90, "the export follows PyTorch"
    assert rows["onnxruntime/int8"]["verdict"] == "pass" and result.exit_code == 0
    import onnx

    export = next(e for e in result.manifest.entries if e.stage == "export")
    graph = onnx.load(export.path).graph
    assert [value.name for value in graph.input] == ["features", "ids"] and [value.name for value in graph.output] == ["embedding", "score"]
    dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] for value in graph.input]
    assert isinstance(dims[0][0], str) and dims[0][0] == dims[1][0] and isinstance(dims[1][1], str), dims  # batch shared, tokens dynamic
    assert dims[0][1] == WIDTH


def test_openvino_int8_takes_nncfs_transformer_scheme_and_a_smoothquant_strength(tmp_path: Path) -> None:
    from edgeship.backends.openvino import OpenVinoBackend, OpenVinoConfig
    from edgeship.tensors import CalibrationSet, Precision

    pytest.importorskip("nncf")
    source = write_encoder(tmp_path / "encoder.onnx")
    with np.load(write_arrays(tmp_path / "samples.npz")) as archive:
        arrays = {name: archive[name] for name in archive.files}
    calibration = CalibrationSet({name: array[:32] for name, array in arrays.items()}, "encoder")
    out = tmp_path / "engine"
    out.mkdir()
    cfg = OpenVinoConfig(model_type="transformer", smooth_quant_alpha=-1, subset_size=32)
    engine = OpenVinoBackend()._build(source, Precision.INT8, calibration, cfg, out)
    feed = {name: array[32:48] for name, array in arrays.items()}
    with OpenVinoBackend().runner(engine, threads=1) as quantized:
        got = quantized.infer(feed)
    assert set(got) == {"vector", "score"} and all(np.isfinite(value).all() for value in got.values())


def test_a_generic_run_is_not_released_yet_and_says_why_in_one_line(result: RunResult, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["release", str(result.run_dir), "--out", str(tmp_path / "releases")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "task: generic" in err, err
    assert not (tmp_path / "releases").exists()
