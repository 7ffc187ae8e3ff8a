from __future__ import annotations

from pathlib import Path

import pytest

from edgeship.artifacts import ArtifactStore
from edgeship.pipeline.validate import _compare, engine_bytes, prediction_label


def test_engine_size_counts_the_files_that_ship(tmp_path: Path) -> None:
    """An IR's .bin counts; edgeship's JSON side files and TensorRT's timing cache do not."""
    store = ArtifactStore(tmp_path / "store")
    aid = "a" * 32
    with store.staging(aid) as folder:
        (folder / "model.engine").write_bytes(b"e" * 100)
        (folder / "weights.bin").write_bytes(b"w" * 30)
        (folder / "engine.json").write_text("{}" * 20)
        (folder / "timing.cache").write_bytes(b"c" * 50)
        artifact = store.commit(folder, aid=aid, kind="engine/tensorrt", stage="build", main_file=folder / "model.engine")
    assert engine_bytes(artifact) == 130


def test_prediction_label_names_both_runtimes() -> None:
    assert prediction_label("tensorrt", "onnxruntime") == "predicted on ONNX Runtime, not measured on TensorRT"


def test_the_cross_check_ratio_is_taken_round_by_round() -> None:
    """A load that doubles every time in the second round moves both sides: the round-by-round ratio stays at ×1.02,
    where the ratio of the pooled medians would say ×0.68."""
    theirs = {"status": "ok", "tool": "benchmark_app", "median_ms": 0.15, "round_medians_ms": [0.1, 0.2, 0.2],
              "ours_round_p50_ms": {"latency": [0.102, 0.204, 0.204], "bare": [0.1, 0.2, 0.2]}}
    check = _compare(theirs, {"p50_ms": 0.102}, {"p50_ms": 0.1})
    assert check["ratio"] == pytest.approx(1.02) and check["within_5pct"]
    assert check["ratio_of_medians"] == pytest.approx(0.68) and check["bare_ratio"] == pytest.approx(1.0)
    assert check["call_overhead_ms"] == pytest.approx(0.002)
    paired = _compare(theirs, {"p50_ms": 0.102}, {"p50_ms": 0.1, "paired_overhead_us": 1.5})  # harness 9: round by round
    assert paired["call_overhead_ms"] == pytest.approx(0.0015)
    older = {key: value for key, value in theirs.items() if key != "ours_round_p50_ms"}  # a result of harness 7
    assert _compare(older, {"p50_ms": 0.102}, None)["ratio"] == pytest.approx(0.68)
    failed = {"status": "failed", "reason": "benchmark_app not found"}
    assert _compare(failed, {"p50_ms": 0.102}, None) == failed


def test_a_device_that_scored_itself_gets_the_interval_over_photos() -> None:
    """The device sends its per-sample hits back; the host, which knows each crop's photo, redoes the interval over
    photos. An agent that sent no hits keeps its own interval, marked as over independent samples."""
    import numpy as np

    from edgeship.measure import pack_hits, scores
    from edgeship.pipeline.validate import _device_scores

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(400, 10))
    outputs = reference.copy()
    outputs[:40] = rng.normal(size=(40, 10))  # the disagreements all in the first photo
    groups = [f"photo{i // 40}" for i in range(400)]
    on_device = scores(outputs, reference, None)  # what the agent computes: no photo names there
    hits = outputs.argmax(1) == reference.argmax(1)
    redone = _device_scores({**on_device, "top1_hits": pack_hits(hits)}, groups)
    assert redone == {**on_device, **{k: scores(outputs, reference, None, groups)[k]
                                      for k in ("top1_agreement_ci95", "top1_agreement_groups")}}
    assert redone["top1_agreement_groups"] == 10 and "top1_hits" not in redone
    assert _device_scores(on_device, groups) == on_device  # an older agent
    for none in (None, ()):  # no groups: the hits are dropped and the device's interval stands
        assert _device_scores({**on_device, "top1_hits": pack_hits(hits)}, none) == on_device
    with pytest.raises(ValueError, match="the device scored 400 samples, the evaluation split has 399"):
        _device_scores({**on_device, "top1_hits": pack_hits(hits)}, groups[:399])
