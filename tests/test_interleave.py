"""Engines loaded once, each in a pinned process of its own, timed in turns: slices, orders, failures as one line."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from edgeship.harness import HarnessError, HarnessSpec
from edgeship.interleave import serve, time_interleaved_isolated


def spec_for(engine: Path, tmp_path: Path, **changes: object) -> HarnessSpec:
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.random.default_rng(0).normal(size=(4, 1, 28, 28)).astype(np.float32))
    fields: dict[str, object] = {"backend": "onnxruntime", "engine": engine, "input_name": "input", "inputs": inputs, "threads": 1,
                                 "cpus": (sorted(os.sched_getaffinity(0))[-1],), "warmup": 2, "iterations": 30, "min_seconds": 0.03}
    fields.update(changes)
    return HarnessSpec.model_validate(fields)


def test_each_engine_is_timed_in_its_own_process_a_slice_per_round_in_rotating_order(tiny_cnn_onnx: Path, tmp_path: Path) -> None:
    specs = {"a": spec_for(tiny_cnn_onnx, tmp_path), "b": spec_for(tiny_cnn_onnx, tmp_path, iterations=60),
             "c": spec_for(tiny_cnn_onnx, tmp_path)}
    told: list[tuple[int, str]] = []
    times, orders = time_interleaved_isolated(specs, rounds=3, work=tmp_path / "work", on_slice=lambda i, name: told.append((i, name)))
    assert [sorted(order) for order in orders] == [["a", "b", "c"]] * 3
    assert {order[0] for order in orders} == {"a", "b", "c"} and orders[1] == orders[0][1:] + orders[0][:1], "each takes each place"
    assert told == [(i, name) for i, order in enumerate(orders) for name in order]
    for name, chunks in times.items():
        assert len(chunks) == 3 and all(chunk.dtype == np.int64 and (chunk > 0).all() for chunk in chunks)
        assert all(len(chunk) >= (20 if name == "b" else 10) for chunk in chunks), "iterations shared out among the rounds"
    assert not list((tmp_path / "work").rglob("*.npy")), "a slice's file is read and removed"
    assert (tmp_path / "work" / "a" / "interleave-stderr.log").is_file()


def test_an_engine_that_cannot_load_is_named_with_its_reason(tiny_cnn_onnx: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    specs = {"good": spec_for(tiny_cnn_onnx, tmp_path), "onnxruntime/int8": spec_for(broken, tmp_path)}
    with pytest.raises(HarnessError, match=r"^onnxruntime/int8: ") as caught:
        time_interleaved_isolated(specs, rounds=2, work=tmp_path / "work")
    assert "\n" not in str(caught.value)


def test_a_slice_is_timed_on_command_after_its_warmup(tiny_cnn_onnx: Path, tmp_path: Path) -> None:
    spec = spec_for(tiny_cnn_onnx, tmp_path, warmup=3)
    replies = io.StringIO()
    commands = io.StringIO(f"0 7 {tmp_path / 'one.npy'}\n0.01 1 {tmp_path / 'two with space.npy'}\n")
    serve(spec, commands, replies)
    assert replies.getvalue() == "ready\nok\nok\n"
    assert len(np.load(tmp_path / "one.npy")) == 7 and len(np.load(tmp_path / "two with space.npy")) >= 1


@pytest.mark.parametrize("stage", ["slice", "load"])
def test_a_child_that_does_not_answer_in_time_is_stopped_and_named(stage: str, tiny_cnn_onnx: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeship.interleave as interleave

    if stage == "slice":  # a 60 s slice allowed half a second stands for a runtime hung in a call
        monkeypatch.setattr(interleave, "SLICE_GRACE_S", 0.5)
        monkeypatch.setattr(interleave, "SLICE_SLACK", 0.0)
    else:
        monkeypatch.setattr(interleave, "READY_TIMEOUT_S", 0.01)
    specs = {"quick": spec_for(tiny_cnn_onnx, tmp_path), "onnxruntime/hung": spec_for(tiny_cnn_onnx, tmp_path, min_seconds=60.0)}
    with pytest.raises(HarnessError, match=r"gave no answer within .* and was stopped") as caught:
        time_interleaved_isolated({"onnxruntime/hung": specs["onnxruntime/hung"]} if stage == "load" else specs, rounds=1,
                                  work=tmp_path / "work")
    assert str(caught.value).startswith("onnxruntime/hung: ") and "\n" not in str(caught.value)
