"""``keep_float: auto``: the recipe keys, the ranking on the quantized model, the bisection and its record, and a real
search on ONNX Runtime."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError
from test_sensitivity import two_convs

from edgeship.backends import float_search
from edgeship.backends.float_search import SEARCH_FILE, _reverted, choose_float_layers, rank_by_reverting
from edgeship.backends.onnxruntime import OnnxRuntimeBackend, quantize_qdq, weight_grid
from edgeship.backends.rounding import eligible_layers, weights_alone
from edgeship.backends.sensitivity import FLOAT_LAYERS_FILE, run_onnx
from edgeship.config import AccuracyTarget
from edgeship.device import describe_device, saturates_u8s8
from edgeship.measure import agreement
from edgeship.recipe import OnnxRuntimeConfig, OpenVinoConfig, TensorRtConfig
from edgeship.tensors import CalibrationSet, SearchSet

from conftest import TrainedCnn


@pytest.mark.parametrize(("section", "keys", "pattern"), [
    (OnnxRuntimeConfig, {"keep_float": "auto"}, "give one, e.g. accuracy_target"),
    (OpenVinoConfig, {"keep_float": 3, "accuracy_target": {"min_agreement": 0.97}}, "steers keep_float: auto"),
    (OnnxRuntimeConfig, {"precisions": ["fp32"], "keep_float": "auto", "accuracy_target": {"min_agreement": 0.97}}, "no INT8 engine"),
    (TensorRtConfig, {"keep_float": "auto", "accuracy_target": {}}, "exactly one of min_agreement, max_drop_points and min_cosine"),
    (OpenVinoConfig, {"keep_float": "auto", "accuracy_target": {"min_cosine": 0.99, "min_agreement": 0.9}}, "exactly one"),
    (OpenVinoConfig, {"keep_float": "auto", "accuracy_target": {"min_cosine": 1.5}}, "less than or equal to 1"),
    (OnnxRuntimeConfig, {"keep_float": "auto", "accuracy_target": {"min_agreement": 0.97, "max_drop_points": 1}}, "exactly one"),
    (OnnxRuntimeConfig, {"keep_float": "all"}, "auto"),
    (OnnxRuntimeConfig, {"keep_float": "auto", "accuracy_target": {"min_cosine": 0.99, "beyond_noise": True}}, "goes with min_agreement"),
    (OnnxRuntimeConfig, {"keep_float": "auto", "accuracy_target": {"min_agreement": 0.97, "max_slowdown": 0.9}}, "greater than or equal"),
    (TensorRtConfig, {"keep_float": "auto", "accuracy_target": {"min_agreement": 0.97, "max_slowdown": 1.3}}, "says nothing of TensorRT"),
])
def test_bad_float_search_keys_are_recipe_errors(section: Any, keys: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValidationError, match=pattern):
        section.model_validate(keys)


def test_a_number_of_float_layers_keeps_working() -> None:
    assert OnnxRuntimeConfig.model_validate({"keep_float": 6}).keep_float == 6
    cfg = OnnxRuntimeConfig.model_validate({"keep_float": "auto", "accuracy_target": {"max_drop_points": 0.5}})
    assert cfg.accuracy_target is not None and cfg.accuracy_target.describe() == "top-1 drop ≤ 0.5 pt"


def test_a_target_without_beyond_noise_dumps_as_before() -> None:
    """Engines are keyed by their section's dump: a target that does not ask for the margin keeps its old key."""
    assert AccuracyTarget(min_agreement=0.97).model_dump() == {"min_agreement": 0.97, "max_drop_points": None, "min_cosine": None}
    strict = AccuracyTarget(min_agreement=0.97, beyond_noise=True)
    assert strict.model_dump(exclude_none=True) == {"min_agreement": 0.97, "beyond_noise": True}
    assert strict.measure == "agreement_low" and strict.describe() == "top-1 agreement ≥ 97% at the lower end of its 95% interval"
    budget = AccuracyTarget(min_agreement=0.97, max_slowdown=1.3)
    assert budget.model_dump(exclude_none=True) == {"min_agreement": 0.97, "max_slowdown": 1.3}
    assert budget.describe() == "top-1 agreement ≥ 97%, within 1.3× the fully quantized engine's p50"


@pytest.mark.parametrize(("activations", "start"), [("int8", "ra"), ("uint8", "ya")])
def test_a_reverted_layer_reads_float_again(tmp_path: Path, activations: str, start: str) -> None:
    """In the fully quantized model, the layer given back its float input and FP32 weights computes what the FP32 model
    computes from the same (quantized) values before it. With uint8 activations the quantizer folds the Relu into the
    Q/DQ range and leaves its name on the Conv before it: reverting the next layer puts the Relu back on the float path."""
    source = two_convs(tmp_path / "two.onnx")
    samples = np.abs(np.random.default_rng(0).normal(size=(16, 1, 8, 8))).astype(np.float32)
    quantized = tmp_path / "q.onnx"
    quantize_qdq(source, quantized, CalibrationSet(samples, "t"), method="minmax", per_channel=True, activation_type=activations,
                 float_outputs=True)
    model, original = onnx.load(str(quantized)), onnx.load(str(source))
    folded = not any(n.op_type == "Relu" for n in model.graph.node)
    assert folded is (activations == "uint8")
    reverted = _reverted(model, "conv_b", original)
    node = next(n for n in reverted.graph.node if n.name == "conv_b")
    assert node.input[1] == "wb__float" and not node.input[0].endswith("DequantizeLinear_Output")
    assert any(n.name == "relu__float" for n in reverted.graph.node) is folded
    probe = onnx.ModelProto()  # the quantized model's own value of the float tensor conv_b's path starts from
    probe.CopyFrom(model)
    probe.graph.output[0].name = "ra"
    before = run_onnx(probe, samples)
    tail = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(original)).extract_model([start], ["logits"])
    np.testing.assert_allclose(run_onnx(reverted, samples), run_onnx(tail, before), rtol=1e-5, atol=1e-4)
    assert not np.allclose(run_onnx(model, samples), run_onnx(tail, before), atol=1e-3)


def test_the_ranking_puts_the_layer_int8_hurts_most_first(tmp_path: Path) -> None:
    source = two_convs(tmp_path / "two.onnx")
    rng = np.random.default_rng(1)
    samples = np.abs(rng.normal(size=(32, 1, 8, 8))).astype(np.float32)
    reference = run_onnx(onnx.load(str(source)), samples)
    ranking = rank_by_reverting(source, CalibrationSet(samples[:16], "r"), samples[16:], [reference[16:]])
    assert [row["node"] for row in ranking] == ["conv_b", "conv_a"]
    assert ranking[0]["cosine_gain"] > 100 * abs(ranking[1]["cosine_gain"])


def test_the_ranking_is_computed_once_for_backends_calibrating_on_the_same_samples(tmp_path: Path) -> None:
    """Backends name their calibration sets differently (a subset, the search samples in the fingerprint); the ranking
    reads the same samples and is shared, not computed again."""
    source = two_convs(tmp_path / "two.onnx")
    samples = np.abs(np.random.default_rng(2).normal(size=(24, 1, 8, 8))).astype(np.float32)
    reference = run_onnx(onnx.load(str(source)), samples[16:])
    float_search._rank.cache_clear()
    first = rank_by_reverting(source, CalibrationSet(samples[:16], "ort[:100]+search:v"), samples[16:], [reference])
    second = rank_by_reverting(source, CalibrationSet(samples[:16], "openvino+search:v"), samples[16:], [reference])
    assert first == second and float_search._rank.cache_info().hits == 1


def _fake_search(monkeypatch: pytest.MonkeyPatch, layers: int, needed: int | None) -> list[int]:
    """A ranking of ``layers`` nodes and candidates that meet the target from ``needed`` float layers on (None: never)."""
    built: list[int] = []
    monkeypatch.setattr(float_search, "rank_by_reverting", lambda *a: [{"node": f"n{i}", "op": "Conv"} for i in range(layers)])
    monkeypatch.setattr(float_search, "with_producers", lambda source, nodes: list(nodes))
    monkeypatch.setattr(float_search, "_outputs_of", lambda source, samples: [np.zeros((len(samples), 2), np.float32)])

    def score(nodes: list[str], count: int, *args: Any) -> dict[str, Any]:
        built.append(count)
        meets = needed is not None and count >= needed
        return {"float_layers": count, "nodes": nodes, "agreement": 0.9 + count / 1000, "top1_drop_points": None, "meets": meets,
                "p50_ms": 1.0, "build_seconds": 0.0, "seconds": 0.0}

    monkeypatch.setattr(float_search, "_score", score)
    return built


@pytest.mark.parametrize(("needed", "chosen"), [(0, 0), (1, 1), (13, 13), (40, 40), (None, 40)])
def test_bisection_finds_the_fewest_float_layers_in_few_builds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, needed: int | None,
                                                              chosen: int) -> None:
    from edgeship.progress import step_notes

    built = _fake_search(monkeypatch, 40, needed)
    search = SearchSet(np.zeros((8, 1, 4, 4), np.float32), None, "s")
    calibration = CalibrationSet(np.zeros((4, 1, 4, 4), np.float32), "c").with_search(search)
    notes: list[str] = []
    with step_notes(notes.append):
        choice = choose_float_layers(tmp_path / "m.onnx", calibration, "auto", AccuracyTarget(min_agreement=0.95), tmp_path,
                                     build=lambda *a: tmp_path, runner=lambda *a: None, reuse=True)  # type: ignore[arg-type,return-value]
    assert notes[0].startswith("keep_float auto: ranking") and len(notes) == 1 + len(built), "the spinner says what the search does"
    assert notes[-1].startswith(f"keep_float auto: candidate {len(built)} ({built[-1]} of 40")
    assert ("; so far 0: 90.00%" in notes[-1]) is (len(built) > 1), "with the figures of the candidates before"
    assert choice.nodes == [f"n{i}" for i in range(chosen)] and choice.engine is None  # nothing was built to reuse
    assert len(built) == len(set(built)) <= 2 + 6  # the two ends, then log2(40) rounded up
    record = json.loads((tmp_path / SEARCH_FILE).read_text())
    assert record["chosen"] == chosen and record["met"] is (needed is not None) and record["split"] == "validation"
    assert [c["float_layers"] for c in record["candidates"]] == sorted(built)
    assert json.loads((tmp_path / FLOAT_LAYERS_FILE).read_text())["auto"] is True


@pytest.mark.parametrize(("meets", "fits", "chosen", "met"), [
    ({0: False, 10: False, 20: True, 40: True}, {0: True, 10: True, 20: True, 40: False}, 20, True),
    ({0: False, 10: False, 20: True, 40: True}, {0: True, 10: True, 20: False, 40: False}, 10, False),
    ({0: True, 10: True, 20: True, 40: True}, {0: True, 10: True, 20: True, 40: True}, 0, True),
    ({0: False, 10: False, 20: False, 40: False}, {0: True, 10: True, 20: True, 40: True}, 40, False),
], ids=["fewest meeting fits", "over budget: the best that fits", "fully quantized meets", "nothing meets: the best"])
def test_the_choice_is_the_fewest_layers_meeting_the_target_within_the_budget(meets: dict[int, bool], fits: dict[int, bool],
                                                                               chosen: int, met: bool) -> None:
    candidates = {k: {"float_layers": k, "agreement": 0.9 + k / 1000, "meets": meets[k], "within_budget": fits[k]} for k in meets}
    choice, ok = float_search.choose(candidates, AccuracyTarget(min_agreement=0.95, max_slowdown=1.3))
    assert (choice["float_layers"], ok) == (chosen, met)


class FakeRunner:
    """What the search asks of a runner, one input named ``input``; a fake's ``infer`` says what its engine does."""

    def __enter__(self) -> FakeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def input_metadata(self) -> dict[str, Any]:
        return {"input": None}


class SleepingRunner(FakeRunner):
    """A runner whose call takes longer the more layers its candidate keeps in float (the engine's name is the count):
    1 + k²/20 times the fully quantized one's, up to 3 times; 2 float layers fit a 1.3× budget, 3 do not."""

    def __init__(self, engine: Path, threads: int) -> None:
        self.seconds = 0.002 * min(1 + int(engine.name) ** 2 / 20, 3.0)

    def infer(self, feed: Any) -> dict[str, Any]:
        time.sleep(self.seconds)
        return {}


def test_a_candidate_over_the_latency_budget_is_not_chosen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each candidate timed in rounds with the fully quantized one: the fewest layers that meet the figure
    (13, 3× slower) are over a 1.3× budget, so a second bisection finds the most float layers that fit (2), which are
    kept, the target unmet, and the record says why; a budget they fit leaves the first answer alone."""
    built = _fake_search(monkeypatch, 40, 13)
    monkeypatch.setattr(float_search, "_score", _scored_with_engines(float_search._score, tmp_path))
    for name, value in (("TOGETHER_ROUNDS", 5), ("TOGETHER_SECONDS", 0.01), ("TOGETHER_WARMUP_SECONDS", 0.01)):
        monkeypatch.setattr(float_search, name, value)  # shorter rounds: the sleeps are steadier than engines
    search = SearchSet(np.zeros((8, 1, 4, 4), np.float32), None, "s")
    calibration = CalibrationSet(np.zeros((4, 1, 4, 4), np.float32), "c").with_search(search)
    by_figure = [0, 40, 20, 10, 15, 12, 13]
    for budget, chosen, met, also_built in ((1.3, 2, False, [5, 2, 3]), (20.0, 13, True, [])):
        out = tmp_path / str(budget)
        out.mkdir()
        built.clear()
        choice = choose_float_layers(tmp_path / "m.onnx", calibration, "auto", AccuracyTarget(min_agreement=0.95, max_slowdown=budget),
                                     out, build=lambda *a: tmp_path, runner=SleepingRunner)  # type: ignore[arg-type]
        assert built == by_figure + also_built
        record = json.loads((out / SEARCH_FILE).read_text())
        assert (record["chosen"], record["met"], len(choice.nodes)) == (chosen, met, chosen)
        assert record["together"]["rounds"] == float_search.TOGETHER_ROUNDS and record["together"]["max_slowdown"] == budget
        assert record["together"]["pairs"] == len(built) - 1, "each candidate timed with the fully quantized one alone"
        by_count = {c["float_layers"]: c for c in record["candidates"]}
        assert by_count[0]["slowdown"] == 1.0 and by_count[0]["within_budget"]
        assert 2.0 < by_count[13]["slowdown"] < 3.5 and by_count[13]["within_budget"] is (budget > 3.5)  # 3, and a sleep overshoots
        assert all(c["slowdown_ci95"][0] <= c["slowdown"] <= c["slowdown_ci95"][1] for c in record["candidates"])
        assert all(c["within_budget"] is (c["slowdown"] <= budget) for c in record["candidates"])


def _scored_with_engines(score: Any, tmp_path: Path) -> Any:
    """``_fake_search``'s candidates with an engine each, named by its count, for the timing rounds to open."""
    def with_engine(nodes: list[str], count: int, *args: Any) -> dict[str, Any]:
        folder = tmp_path / f".candidate-{count}"
        folder.mkdir(exist_ok=True)
        return {**score(nodes, count, *args), "engine": str(folder / str(count))}
    return with_engine


def test_a_real_search_on_onnx_runtime_meets_its_target_on_validation_samples(trained_cnn: TrainedCnn, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend's own build with the chosen layers left out of the Q/DQ; the record says what each candidate scored,
    and an unreachable target keeps the best candidate, unmet. The candidates share one calibration of the ranges."""
    import importlib

    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the module, which its function shadows
    calibrations: list[str] = []
    create = ort_quantize.create_calibrator

    def counted(model: Any, *args: Any, **kwargs: Any) -> Any:
        calibrations.append(str(model))
        return create(model, *args, **kwargs)

    monkeypatch.setattr(ort_quantize, "create_calibrator", counted)
    backend = OnnxRuntimeBackend()
    search = SearchSet(trained_cnn.evaluation[:100], trained_cnn.labels[:100], "v")
    calibration = CalibrationSet(trained_cnn.calibration[:50], "c").with_search(search)
    unreachable = AccuracyTarget.model_construct(min_agreement=None, max_drop_points=-50.0)  # a gain of 50 points
    for target, met in ((AccuracyTarget(min_agreement=0.9), True), (unreachable, False)):
        out = tmp_path / str(met)
        out.mkdir()
        cfg = OnnxRuntimeConfig(keep_float="auto", accuracy_target=target)
        calibrations.clear()
        engine = backend._build_int8(trained_cnn.onnx, calibration, cfg, out)
        assert engine == out / "model.int8.onnx" and engine.is_file()  # the chosen candidate itself, not built twice
        record = json.loads((out / SEARCH_FILE).read_text())
        assert record["met"] is met and record["samples"] == 100 and len(record["ranking"]) >= 3
        chosen = next(c for c in record["candidates"] if c["float_layers"] == record["chosen"])
        assert 0 <= chosen["agreement"] <= 1 and chosen["p50_ms"] > 0 and chosen["top1_drop_points"] is not None
        if met:
            assert chosen["agreement"] >= 0.9
        else:
            assert chosen == max(record["candidates"], key=lambda c: (c["agreement"], -c["float_layers"]))
        assert not list(out.glob(".candidate-*")), "candidate folders are removed"
        # the ranking calibrates once per process (in the first search at most), the candidates once per search
        assert 1 <= len(calibrations) <= (2 if met else 1) and "share the activation ranges" in record["method"]
        assert met or len(record["candidates"]) >= 2, "an unmet target builds the whole ranking in float too"
        assert not list(out.glob(".activation-ranges*")), "the shared ranges are a work file"
        full = record["candidates"][0]  # scored on the integer kernels and with its Q/DQ as written: what the kernels cost
        assert full["float_layers"] == 0 and [c for c in record["candidates"] if "as_written" in c] == [full]
        written = full["as_written"]
        assert set(written) == {"cosine", "agreement", "agreement_ci95", "agreement_low", "agreement_groups", "top1_drop_points"}
        assert 0 <= written["agreement"] <= 1
        alone = full["weights_alone"]  # its weights alone in INT8, the activations in float: the other half of its loss
        assert set(alone) == {*written, "layers"} and alone["layers"] == len(eligible_layers(onnx.load(str(trained_cnn.onnx)), set())[0])
        weights, _ = weights_alone(trained_cnn.onnx, calibration, cfg.weight_rounding, weight_grid(cfg))  # 7 bits here
        expected = agreement(run_onnx(weights, search.inputs), run_onnx(onnx.load(str(trained_cnn.onnx)), search.inputs))
        assert alone["cosine"] == pytest.approx(expected["mean_cosine"], abs=1e-6) and alone["cosine"] < 1
        assert alone["agreement"] == pytest.approx(expected["top1_agreement"], abs=1e-6)
        assert [c for c in record["candidates"] if "weights_alone" in c] == [full]
        for candidate in record["candidates"]:  # independent samples: Wilson's interval, around the figure itself
            low, high = candidate["agreement_ci95"]
            assert low == candidate["agreement_low"] <= candidate["agreement"] <= high and candidate["agreement_groups"] is None
        if not saturates_u8s8(describe_device()):  # exact integer kernels compute what the Q/DQ says, up to rounding
            assert abs(written["cosine"] - full["cosine"]) < 1e-3 and abs(written["agreement"] - full["agreement"]) <= 0.03


def test_a_search_beyond_the_noise_records_intervals_over_whole_groups(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    """A real search with ``beyond_noise``: every candidate's interval is taken over the samples' groups, and a candidate
    meets the target by its interval's lower end."""
    groups = tuple(f"photo{i % 10}" for i in range(100))
    search = SearchSet(trained_cnn.evaluation[:100], trained_cnn.labels[:100], "v", groups)
    calibration = CalibrationSet(trained_cnn.calibration[:50], "c").with_search(search)
    cfg = OnnxRuntimeConfig(keep_float="auto", accuracy_target=AccuracyTarget(min_agreement=0.9, beyond_noise=True))
    OnnxRuntimeBackend()._build_int8(trained_cnn.onnx, calibration, cfg, tmp_path)
    record = json.loads((tmp_path / SEARCH_FILE).read_text())
    assert record["target"] == {"min_agreement": 0.9, "beyond_noise": True} and "lower end" in record["target_text"]
    for candidate in record["candidates"]:
        low, high = candidate["agreement_ci95"]
        assert candidate["agreement_groups"] == 10 and low <= candidate["agreement"] <= high
        assert candidate["meets"] is (low >= 0.9)


def test_a_real_search_times_each_candidate_against_the_fully_quantized_one(trained_cnn: TrainedCnn, tmp_path: Path) -> None:
    """A latency budget on ONNX Runtime itself: an unreachable figure builds the ends of the ranking, and each candidate
    beyond the fully quantized one is timed with it in rounds of its own."""
    search = SearchSet(trained_cnn.evaluation[:100], trained_cnn.labels[:100], "v")
    calibration = CalibrationSet(trained_cnn.calibration[:50], "c").with_search(search)
    unreachable = AccuracyTarget.model_construct(min_agreement=None, min_cosine=None, beyond_noise=False, max_drop_points=-50.0,
                                                 max_slowdown=50.0)  # a gain of 50 points
    OnnxRuntimeBackend()._build_int8(trained_cnn.onnx, calibration, OnnxRuntimeConfig(keep_float="auto", accuracy_target=unreachable),
                                     tmp_path)
    record = json.loads((tmp_path / SEARCH_FILE).read_text())
    assert record["together"]["rounds"] == float_search.TOGETHER_ROUNDS and record["met"] is False
    assert len(record["candidates"]) >= 2 and record["together"]["pairs"] == len(record["candidates"]) - 1
    for candidate in record["candidates"]:
        assert candidate["p50_together_ms"] > 0 and candidate["within_budget"] is (candidate["slowdown"] <= 50)
        low, high = candidate["slowdown_ci95"]
        assert 0 < low <= candidate["slowdown"] <= high
    assert record["candidates"][0]["float_layers"] == 0 and record["candidates"][0]["slowdown"] == 1.0


class _Outputs(FakeRunner):
    """A runner whose engine answers ``hits`` (True: the reference's class 0; False: class 1) in the order asked."""

    def __init__(self, hits: np.ndarray) -> None:
        self.hits, self.given = hits, 0

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(feed["input"])
        hits = self.hits[self.given:self.given + count] if count > 1 else self.hits[:1]
        self.given += count if count > 1 else 0
        return {"logits": np.stack([hits, ~hits], axis=1).astype(np.float32)}


@pytest.mark.parametrize(("spread", "meets_strictly"), [(True, True), (False, False)])
def test_beyond_the_noise_a_figure_met_by_correlated_samples_is_not_met(tmp_path: Path, spread: bool, meets_strictly: bool) -> None:
    """Ten photos of 30 crops, 97% agreement: with the misses spread over the photos the interval is narrow and its lower
    end meets 95%; with all of them in one photo, resampling whole photos puts its lower end below 95%. Judged by the
    figure alone, both meet it."""
    hits = np.ones(300, bool)
    hits[np.arange(9) * 30 + 3 if spread else np.arange(9)] = False
    search = SearchSet(np.zeros((300, 1, 2, 2), np.float32), None, "v", tuple(f"photo{i // 30}" for i in range(300)))
    reference = [np.tile(np.array([[1.0, 0.0]], np.float32), (300, 1))]
    for strict, expected in ((False, True), (True, meets_strictly)):
        target = AccuracyTarget(min_agreement=0.95, beyond_noise=strict)
        scored = float_search._score([], 0, lambda nodes, folder: folder / "engine", lambda engine, threads: _Outputs(hits),
                                     1, search, reference, target, tmp_path)
        assert scored["agreement"] == 0.97 and scored["agreement_groups"] == 10
        assert scored["meets"] is expected, (strict, scored["agreement_ci95"])


def two_matmuls(path: Path) -> Path:
    """A model with two named inputs and no class scores: ``left @ wa + right @ wb``. Each column of ``wb`` has one huge
    weight on an input that is always zero beside small ones that carry the signal: INT8 with one scale per column rounds
    the small ones away, so ``mm_b`` is the layer to keep in float."""
    rng = np.random.default_rng(0)
    wa = rng.normal(0, 0.3, (8, 4)).astype(np.float32)
    wb = rng.normal(0, 1.0, (8, 4)).astype(np.float32)
    wb[0] = 400.0
    nodes = [helper.make_node("MatMul", ["left", "wa"], ["ya"], name="mm_a"),
             helper.make_node("MatMul", ["right", "wb"], ["yb"], name="mm_b"),
             helper.make_node("Add", ["ya", "yb"], ["vector"], name="add")]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 8]) for name in ("left", "right")]
    graph = helper.make_graph(nodes, "two_matmuls", inputs, [helper.make_tensor_value_info("vector", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(wa, "wa"), numpy_helper.from_array(wb, "wb")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def named_arrays(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    right = rng.normal(size=(count, 8)).astype(np.float32)
    right[:, 0] = 0.0  # the input wb's outliers read
    return {"left": rng.normal(size=(count, 8)).astype(np.float32), "right": right}


@pytest.mark.parametrize("placement", ["layer_inputs", "every_op"])
def test_a_model_with_named_inputs_ranks_its_matmuls(tmp_path: Path, placement: float_search.Placement) -> None:
    source = two_matmuls(tmp_path / "mm.onnx")
    samples = named_arrays(16, 1)
    reference = float_search._outputs_of(source, samples)
    ranking = rank_by_reverting(source, CalibrationSet(named_arrays(16, 2), "c"), samples, reference, placement)
    assert [(row["node"], row["op"]) for row in ranking] == [("mm_b", "MatMul"), ("mm_a", "MatMul")]
    assert ranking[0]["cosine_gain"] > 0.01 > abs(ranking[1]["cosine_gain"])


def test_a_backend_may_rank_its_adds_too(tmp_path: Path) -> None:
    """``also_ranked``: an Add the every-op model quantizes is ranked beside the layers (TFLite's int8 Adds), and keeping
    it in float does not pull in the layers feeding it."""
    from edgeship.backends.sensitivity import with_producers

    model = onnx.load(str(two_matmuls(tmp_path / "mm.onnx")))
    nodes = list(model.graph.node)  # a Relu after each MatMul: the Add is a sum of activations, not a MatMul's bias
    nodes[0].output[0], nodes[1].output[0] = "ya_", "yb_"
    nodes[2:2] = [helper.make_node("Relu", ["ya_"], ["ya"], name="relu_a"), helper.make_node("Relu", ["yb_"], ["yb"], name="relu_b")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    source = tmp_path / "relu.onnx"
    onnx.save(model, source)
    samples = named_arrays(16, 1)
    reference = float_search._outputs_of(source, samples)
    calibration = CalibrationSet(named_arrays(16, 2), "c")
    layers = rank_by_reverting(source, calibration, samples, reference, "every_op")
    with_adds = rank_by_reverting(source, calibration, samples, reference, "every_op", ("Add",))
    assert {row["node"] for row in layers} == {"mm_a", "mm_b"}
    assert {(row["node"], row["op"]) for row in with_adds} == {("mm_a", "MatMul"), ("mm_b", "MatMul"), ("add", "Add")}
    assert with_producers(source, ["add"]) == ["add"]


def test_a_search_on_named_inputs_meets_an_output_cosine_target(tmp_path: Path) -> None:
    """Without class scores the target is the outputs' cosine with FP32; the record and the gate say so."""
    from edgeship.gates import _float_search_gate, format_value

    source = two_matmuls(tmp_path / "mm.onnx")
    search = SearchSet(named_arrays(32, 3), None, "v")
    calibration = CalibrationSet(named_arrays(32, 4), "c").with_search(search)
    cfg = OnnxRuntimeConfig(keep_float="auto", accuracy_target=AccuracyTarget(min_cosine=0.999))
    engine = OnnxRuntimeBackend()._build_int8(source, calibration, cfg, tmp_path)
    record = json.loads((tmp_path / SEARCH_FILE).read_text())
    assert record["measure"] == "cosine" and record["met"] is True and record["nodes"] == ["mm_b"] and record["samples"] == 32
    assert record["placement"] == "every_op", "ranked on a model quantized as ONNX Runtime's quantize_static quantizes"
    first = record["candidates"][0]
    assert first["float_layers"] == 0 and first["cosine"] < 0.999 and "agreement" not in first
    kept = onnx.load(str(engine))
    assert any(n.name.startswith("mm_b") and n.input[1] == "wb" for n in kept.graph.node), "mm_b (fused with the Add) reads FP32 weights"
    gate = _float_search_gate(record)
    assert gate.gate == "search_min_cosine" and gate.outcome == "pass" and gate.value >= 0.999
    assert format_value(gate.gate, gate.limit) == "0.99900"


def test_a_model_whose_layers_have_no_names_says_why_nothing_was_ranked(tmp_path: Path) -> None:
    """An unnamed node cannot be named to a backend's exclusion list: the search keeps the fully quantized engine, and the
    record, the gate and the terminal line say why no layer was ranked."""
    from edgeship.gates import _float_search_gate

    model = onnx.load(str(two_matmuls(tmp_path / "mm.onnx")))
    for node in model.graph.node:
        node.name = ""
    source = tmp_path / "unnamed.onnx"
    onnx.save(model, source)
    search = SearchSet(named_arrays(32, 3), None, "v")
    calibration = CalibrationSet(named_arrays(32, 4), "c").with_search(search)
    cfg = OnnxRuntimeConfig(keep_float="auto", accuracy_target=AccuracyTarget(min_cosine=0.999999))
    OnnxRuntimeBackend()._build_int8(source, calibration, cfg, tmp_path)
    record = json.loads((tmp_path / SEARCH_FILE).read_text())
    assert record["ranking"] == [] and record["met"] is False and record["chosen"] == 0
    assert record["unranked"] == ("no layer to rank: 2 of the model's 2 Conv/Gemm/MatMul nodes have no name, and a node without "
                                  "one cannot be named to a backend; give the ONNX nodes names")
    assert record["unranked"] in _float_search_gate(record).detail
