"""A sweep's fronts timed together after its trials: speed against the most accurate engine round by round, an engine
no faster than a more accurate one named, and a front that cannot be timed given its reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgeship.sweep.driver import SweepConfig
from edgeship.sweep.together import compare_rounds, time_fronts
from edgeship.sweep.trial import EnginePoint, TrialRecord

from conftest import needs_fashion_mnist


def test_speed_is_against_the_most_accurate_engine_round_by_round_and_a_slower_engine_is_named() -> None:
    accuracy = {"t1 onnxruntime/fp32": 0.92, "t2 onnxruntime/int8": 0.91, "t3 onnxruntime/int8": 0.89}
    rounds = {"t1 onnxruntime/fp32": (1.0, 2.0, 1.0, 2.0, 1.0),  # the machine changes speed from round to round
              "t2 onnxruntime/int8": (0.5, 1.0, 0.5, 1.0, 0.5),  # twice as fast in every round
              "t3 onnxruntime/int8": (0.52, 1.03, 0.5, 1.01, 0.51)}  # less accurate than t2 and no faster
    front = compare_rounds("onnxruntime", 5, accuracy, rounds)
    points = {f"{p.trial} {p.engine}": p for p in front.points}
    assert front.reference == "t1 onnxruntime/fp32" and points["t1 onnxruntime/fp32"].speedup == (1.0, 1.0, 1.0)
    assert points["t2 onnxruntime/int8"].speedup[0] == pytest.approx(2.0) and points["t2 onnxruntime/int8"].no_faster_than is None
    assert points["t3 onnxruntime/int8"].no_faster_than == "t2 onnxruntime/int8"
    assert points["t2 onnxruntime/int8"].p50_ms == 0.5, "the median of its round p50s"


def test_a_contender_joins_the_front_only_by_beating_every_engine_at_least_as_accurate() -> None:
    accuracy = {"t1 onnxruntime/fp32": 0.92, "t2 onnxruntime/int8": 0.91, "t3 onnxruntime/int8": 0.91, "t4 onnxruntime/int8": 0.90}
    rounds = {"t1 onnxruntime/fp32": (1.0, 1.0, 1.0), "t2 onnxruntime/int8": (0.5, 0.5, 0.5),
              "t3 onnxruntime/int8": (0.5, 0.51, 0.49),  # as accurate as t2 and as fast: not beyond the noise
              "t4 onnxruntime/int8": (0.3, 0.3, 0.3)}  # less accurate, faster than both: joins
    front = compare_rounds("onnxruntime", 3, accuracy, rounds, off_front=frozenset({"t3 onnxruntime/int8", "t4 onnxruntime/int8"}))
    points = {f"{p.trial} {p.engine}": p for p in front.points}
    assert points["t2 onnxruntime/int8"].on_front and points["t2 onnxruntime/int8"].no_faster_than is None
    assert not points["t3 onnxruntime/int8"].on_front and points["t3 onnxruntime/int8"].no_faster_than == "t2 onnxruntime/int8"
    assert not points["t4 onnxruntime/int8"].on_front and points["t4 onnxruntime/int8"].no_faster_than is None


def _config(tmp_path: Path, rounds: int) -> SweepConfig:
    base = {"name": "r", "validate": {"together_rounds": rounds, "threads": 1}, "data": {"train_size": 600, "val_size": 100,
                                                                                          "eval_size": 100}}
    return SweepConfig(id="r-1", recipe_path=tmp_path / "r.yaml", space_path=tmp_path / "s.yaml", base=base, space={},
                       target="onnxruntime/int8", trials=2, cpus_per_trial=1, store=tmp_path / "store", created=time.time())


def _record(name: str) -> TrialRecord:
    point = EnginePoint(engine="onnxruntime/int8", backend="onnxruntime", precision="int8", artifact=f"{name}-int8-gone", status="ok",
                        accuracy=0.9, p50_ms=0.1, size_mib=1.0)
    return TrialRecord(name=name, values={}, status="ok", engines=[point], objective=point)


@needs_fashion_mnist
def test_a_front_that_cannot_be_timed_gets_its_reason(tmp_path: Path) -> None:
    from rich.console import Console

    fronts = {"onnxruntime": [("t1", "onnxruntime/int8", 0.9), ("t2", "onnxruntime/int8", 0.8)], "openvino": [("t1", "openvino/fp32", 0.9)]}
    records = [_record("t1"), _record("t2")]
    off = time_fronts(tmp_path, _config(tmp_path, 0), fronts, records, console=Console(quiet=True))
    assert off == {"onnxruntime": off["onnxruntime"]} and "together_rounds is 0" in off["onnxruntime"].reason
    gone = time_fronts(tmp_path, _config(tmp_path, 2), fronts, records, console=Console(quiet=True), lock=None)
    assert gone["onnxruntime"].reason.startswith("t1 onnxruntime/int8: its engine is not in the store"), gone
    assert "openvino" not in gone, "a front of one engine has nothing to be timed against"
