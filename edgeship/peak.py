"""The machine's limit: the multiply-accumulate rate of one large FP32 and one large INT8 matrix product, through ONNX
Runtime itself (``MatMul`` and ``MatMulInteger``, MLAS's tuned GEMM kernels), on the threads and CPUs engines get.

An engine's achieved rate (its MACs per inference / its p50) over the matching peak says how far it is from what the
machine can do on dense work. Convolutions on small feature maps, depthwise layers, and the per-call cost around the
kernels never reach a GEMM's rate, so a small model's fraction is low by nature; the figure says where the remaining
speed is (kernels, memory, overhead), not a grade.

``measure_peak_isolated`` runs ``main`` in a child process pinned like an engine's measuring process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, PositiveInt

from edgeship.artifacts import write_atomic
from edgeship.device import usable_cpus
from edgeship.measure import time_calls

PEAK_VERSION = 1  # part of the store key of a peak measurement
SIZE = 1024  # M = N = K: large enough that the kernels, not the call, set the rate
SECONDS = 1.0  # per product


class PeakRate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    op: str  # the ONNX operator timed
    gmacs: float  # 1e9 multiply-accumulates per second, from the median call
    median_ms: float
    iterations: PositiveInt


class Peak(BaseModel):
    """The machine's FP32 and INT8 GEMM rates on ``threads`` threads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: PositiveInt
    cpus: list[int] | None
    shape: tuple[int, int, int]  # M, N, K
    runtime: str
    fp32: PeakRate
    int8: PeakRate

    def for_precision(self, precision: str) -> PeakRate:
        """The rate an engine of ``precision`` is held against: INT8 engines run integer GEMMs; FP16 engines on a CPU
        without FP16 arithmetic run FP32 kernels on widened weights, so they are held against FP32."""
        return self.int8 if precision == "int8" else self.fp32


def measure_peak(threads: int) -> Peak:
    """Time both products in this process; see the module docstring."""
    import onnxruntime as ort

    from edgeship.backends.onnxruntime import OnnxRuntimeRunner

    rng = np.random.default_rng(0)
    m = n = k = SIZE
    rates = {}
    operands = {"fp32": ("MatMul", rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)),
                "int8": ("MatMulInteger", rng.integers(0, 256, (m, k), dtype=np.uint8), rng.integers(-128, 128, (k, n), dtype=np.int8))}
    for label, (op, a, b) in operands.items():
        with tempfile.TemporaryDirectory(prefix="edgeship-peak-") as folder:
            path = Path(folder) / f"{op}.onnx"
            path.write_bytes(_product(op, a, b))
            # edgeship's own runner: the session is set up (threads, sequential execution) exactly as an engine's is
            with OnnxRuntimeRunner(path, threads=threads) as runner:
                times = time_calls(runner.bare_call({"a": a}), warmup=3, iterations=5, min_seconds=SECONDS)
        median_ms = float(np.median(times)) / 1e6
        rates[label] = PeakRate(op=op, gmacs=round(m * n * k / (median_ms * 1e-3) / 1e9, 2), median_ms=round(median_ms, 3),
                                iterations=len(times))
    return Peak(threads=threads, cpus=usable_cpus(), shape=(m, n, k), runtime=f"ONNX Runtime {ort.__version__}", **rates)


def _product(op: str, a: np.ndarray, b: np.ndarray) -> bytes:
    """An ONNX model computing ``a @ b`` with ``b`` a constant weight, as a layer's GEMM is."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out_type = TensorProto.FLOAT if op == "MatMul" else TensorProto.INT32
    in_type = TensorProto.FLOAT if op == "MatMul" else TensorProto.UINT8
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "peak",
                              [helper.make_tensor_value_info("a", in_type, list(a.shape))],
                              [helper.make_tensor_value_info("y", out_type, [a.shape[0], b.shape[1]])],
                              [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def measure_peak_isolated(threads: int, cpus: tuple[int, ...] | None, work_dir: Path) -> Peak:
    """``measure_peak`` in a child process pinned to ``cpus``; ``RuntimeError`` with its one-line reason."""
    work_dir.mkdir(parents=True, exist_ok=True)
    result = work_dir / "peak.json"
    result.unlink(missing_ok=True)
    # not ``-m edgeship.peak``: ``import edgeship`` imports this module first, and runpy warns about running it twice
    command = [sys.executable, "-c", "import sys; from edgeship.peak import main; sys.exit(main())", str(threads), str(result),
               ",".join(map(str, cpus or ()))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not result.is_file():
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"the peak measurement exited with code {done.returncode}")
    return Peak.model_validate_json(result.read_text())


def main(argv: list[str] | None = None) -> int:
    """Child entry point, arguments ``THREADS RESULT.json [CPUS]``: CPUS comma-separated, empty to keep the parent's."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or not args[0].isdigit() or int(args[0]) < 1:
        print("usage: edgeship.peak.main THREADS RESULT.json [CPU,CPU,...]", file=sys.stderr)
        return 2
    if len(args) == 3 and args[2] and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, [int(c) for c in args[2].split(",")])  # before ONNX Runtime starts its thread pool
    peak = measure_peak(int(args[0]))
    write_atomic(Path(args[1]), json.dumps(peak.model_dump(mode="json"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
