"""One engine, measured alone: load, first inference, latency, throughput, peak memory and outputs.

``measure`` does the work in the current process; ``measure_isolated`` runs it in a child process
(``python -m edgeship.harness SPEC RESULT``) pinned to the CPUs it is given, so that one engine's
memory, threads or warmed caches never colour another's, and its peak RSS is its own. The validate
stage and the device agent both use this module, so a number means the same thing wherever it is taken.

The child reports progress as JSON lines on stdout and, on failure, one line on stderr.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from edgeship.artifacts import write_atomic
from edgeship.backends import REGISTRY, get_backend
from edgeship.device import usable_cpus
from edgeship.measure import summarize, time_calls
from edgeship.models import TorchRunner
from edgeship.tensors import Feed, drop_mapped_pages

Progress = Callable[[str, int, int], None]  # task, done, total
# 2: runners reuse the runtime's buffers and skip re-checking a feed shaped like the last; the bare runtime call is
# timed for every engine. 3: each timed engine's per-layer profile. 4: the backend's own benchmark tool runs in the
# alternating rounds too. 5: OpenVINO sets a large input (an image) as a tensor on the caller's array instead of
# copying it, and LiteRT writes an image into the interpreter's own buffer. 6: the p50 times ``Runner.timed_call``
# (the feed checked once; OpenVINO's outputs left in the buffers it shares rather than copied out). 7: LiteRT's outputs
# left in the interpreter too, not read out by ``get_tensor``'s copy. 8: OpenVINO's timed and bare calls go through its
# C API, not the Python binding's ``infer``. Part of every validation's store key, so results of an older harness are
# measured anew. 8 also keeps our p50 per round beside the tool's, for a cross-check ratio taken round by round.
# 9: the per-call overhead taken round by round (``bare_latency.paired_overhead_us``), not as a difference of pooled p50s.
HARNESS_VERSION = 9
PAIRED_ROUNDS = 5  # latency and the bare runtime call alternate in this many rounds
THROUGHPUT_WARMUP = 5
THROUGHPUT_MIN_ITERATIONS = 20
SILENCE_S = 1800.0  # a measuring child silent this long (no progress line) is stopped: a hung runtime cannot hang a run or
                    # a device agent's queue; every stage of a measurement reports progress far more often


class HarnessError(RuntimeError):
    """The engine could not be loaded or run; the message is one line."""


class MeasureSettings(BaseModel):
    """How an engine is measured, wherever: here (``HarnessSpec``) or on a device agent (``JobRequest``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: PositiveInt
    warmup: int = Field(default=20, ge=0)
    iterations: PositiveInt = 200
    min_seconds: float = Field(default=2.0, ge=0)
    batch_size: PositiveInt = 1
    throughput_batch_sizes: tuple[PositiveInt, ...] = ()
    throughput_seconds: float = Field(default=1.0, ge=0)
    eval_batch_size: PositiveInt = 250
    bare_call: bool = Field(default=False, description="also time the runtime's own call on a feed set once (runner.bare_call)")
    profile: bool = Field(default=False, description="after timing, each layer's time from the runtime's profiler (runner.profile)")
    cross_check: bool = Field(default=False, description="also run the backend's own benchmark tool (OpenVINO's benchmark_app) "
                              "on the engine, in the same alternating rounds as the bare call")

    def settings(self) -> dict[str, Any]:
        """These fields alone, to build another message from."""
        return {name: getattr(self, name) for name in MeasureSettings.model_fields}


class HarnessSpec(MeasureSettings):
    """What to measure and where to put the raw results."""

    backend: str = Field(description="a registered backend, or 'pytorch' for the FP32 baseline")
    engine: Path = Field(description="the engine's main file; for 'pytorch' the model artifact's artifact.json")
    torch_model_config: dict[str, Any] | None = None
    input_name: str = Field(description="the engine input a .npy of inputs feeds")
    inputs: Path = Field(description=".npy of preprocessed inputs in the ONNX layout (fed as input_name), or .npz of named arrays, one "
                                     "per engine input; latency samples are their first rows")
    outputs: Path | None = Field(default=None, description="write the outputs for every input here: .npy (the one output, class "
                                                           "scores) or .npz (every output, by name); None: not scored")
    timings: Path | None = Field(default=None, description="write per-iteration times here (.npz); None: not timed")
    cpus: tuple[int, ...] | None = Field(default=None, description="CPU affinity of the child; None keeps the parent's")


def measure(spec: HarnessSpec, progress: Progress | None = None) -> dict[str, Any]:
    """Measure ``spec.engine`` in this process; see the module docstring. Raises ``HarnessError``."""
    progress = progress or (lambda task, done, total: None)
    inputs = load_inputs(spec)
    if _count(inputs) == 0:
        raise HarnessError(f"{spec.inputs}: no inputs")
    baseline_rss = _peak_rss()
    started = time.perf_counter()
    runtime_module = _runtime_module(spec.backend)
    if runtime_module:
        try:
            importlib.import_module(runtime_module)
        except ImportError as exc:
            raise HarnessError(f"{spec.backend}: cannot import {runtime_module}: {exc}") from None
    import_ms = (time.perf_counter() - started) * 1e3
    result: dict[str, Any] = {"pid": os.getpid(), "threads": spec.threads, "cpus": usable_cpus(), "import_ms": round(import_ms, 3)}
    try:
        started = time.perf_counter()
        with open_runner(spec) as runner:
            result["load_ms"] = round((time.perf_counter() - started) * 1e3, 3)
            call = _caller(runner, every_output=spec.outputs is not None and spec.outputs.suffix == ".npz")
            sample = first_rows(inputs, spec.batch_size)
            started = time.perf_counter()
            call(sample)
            result["first_inference_ms"] = round((time.perf_counter() - started) * 1e3, 3)
            if spec.timings is not None:
                result.update(_time_engine(spec, runner, inputs, progress))
            result["runtime"] = runner.describe()  # after the timing: it says how the timed call reached the runtime
            result["memory"] = {"baseline_rss_bytes": baseline_rss, "peak_rss_bytes": _peak_rss()}
            if spec.outputs is not None:
                outputs = _score(spec, call, inputs, progress, batch=_fixed_batch(runner) or spec.eval_batch_size)
                result["memory"]["peak_rss_with_eval_bytes"] = _peak_rss()
                if isinstance(outputs, dict):
                    np.savez(spec.outputs, **outputs)
                else:
                    np.save(spec.outputs, outputs)
            if spec.profile and spec.backend != "pytorch":  # last: a profiler slows what it watches, its session adds memory
                progress("per-layer profile", 0, 1)
                result["profile"] = runner.profile(sample).model_dump(mode="json")
                progress("per-layer profile", 1, 1)
    except HarnessError:
        raise
    except (RuntimeError, ValueError, OSError, KeyError, TypeError) as exc:
        raise HarnessError(f"{type(exc).__name__}: {one_line(str(exc))}") from exc
    return result


def measure_isolated(spec: HarnessSpec, work_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """``measure`` in a child process of its own; raises ``HarnessError`` with the child's one-line reason."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = work_dir / "harness-spec.json", work_dir / "harness-result.json"
    spec_path.write_text(spec.model_dump_json(indent=2))
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "edgeship.harness", str(spec_path), str(result_path)]
    log = work_dir / "harness-stderr.log"  # a file, not a pipe: a chatty runtime cannot fill it and stall the child
    last = "starting"
    with log.open("w") as stderr, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=child_environment()) as child:
        assert child.stdout is not None
        try:
            for line in _lines(child.stdout.fileno(), SILENCE_S):
                event = _event(line)
                if event:
                    last = event["task"]
                    if progress:
                        progress(event["task"], event["done"], event["total"])
        except TimeoutError:
            child.kill()
            child.wait()
            raise HarnessError(f"the measuring process gave no sign of progress for {SILENCE_S:.0f} s ({last}) and was stopped: "
                               "the runtime hung?") from None
        code = child.wait()
    if code != 0 or not result_path.is_file():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise HarnessError(lines[-1] if lines else f"the measuring process exited with code {code}")
    return json.loads(result_path.read_text())


def _lines(fd: int, silence_s: float) -> Iterator[str]:
    """The lines written to ``fd`` until it closes; ``TimeoutError`` when nothing comes for ``silence_s`` (read raw, so
    no line waits in a buffer while ``select`` watches the pipe)."""
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], silence_s)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        yield from (line.decode(errors="replace") for line in lines)
    if pending:
        yield pending.decode(errors="replace")


def _time_engine(spec: HarnessSpec, runner: Any, inputs: Feed, progress: Progress) -> dict[str, Any]:
    """Latency at ``batch_size``, throughput at each of ``throughput_batch_sizes``, and, if asked, the bare call and the
    backend's own benchmark tool in the same rounds."""
    sample = first_rows(inputs, spec.batch_size)
    bare = runner.bare_call(sample) if spec.bare_call else None
    # the feed checked once, then the lean call; the outputs it leaves are those ``infer`` scores (the contract test)
    timed: dict[str, tuple[str, Callable[[], object]]] = {"latency": ("latency", runner.timed_call(sample))}
    if bare is not None:
        timed["bare"] = ("runtime call", bare)
    # alternating rounds when there is more than one figure, so a change of background load falls on all alike and
    # their ratios hold
    rounds = PAIRED_ROUNDS if len(timed) > 1 or spec.cross_check else 1
    parts: dict[str, list[np.ndarray]] = {key: [] for key in timed}
    tool_rounds: list[dict[str, Any]] = []
    for index in range(rounds):
        warmup = spec.warmup if index == 0 else min(spec.warmup, 5)
        suffix = f" (round {index + 1}/{rounds})" if rounds > 1 else ""
        for key, (task, function) in timed.items():
            parts[key].append(_timed(task + suffix, function, warmup, -(-spec.iterations // rounds), spec.min_seconds / rounds, progress))
        if spec.cross_check and (not tool_rounds or tool_rounds[-1]["status"] == "ok"):
            progress(f"benchmark tool{suffix}", 0, 1)
            (name, first), *others = sample.items()
            tool_rounds.append(tool_cross_check(spec.backend, spec.engine, threads=spec.threads, batch_size=spec.batch_size,
                                                input_shape=tuple(first.shape[1:]), input_name=name, min_seconds=spec.min_seconds / rounds,
                                                more_inputs={other: tuple(array.shape[1:]) for other, array in others}))
    raw = {key: np.concatenate(chunks) for key, chunks in parts.items()}
    out: dict[str, Any] = {"latency": summarize(raw["latency"], spec.batch_size).as_dict()}
    if "bare" in raw:
        out["bare_latency"] = summarize(raw["bare"], spec.batch_size).as_dict()
        # the call's overhead as the median over rounds of each round's difference of medians: a change of background
        # load between rounds falls on both sides of each difference, as it does not on a difference of pooled p50s
        out["bare_latency"]["paired_overhead_us"] = round(float(np.median(
            [np.median(ours) - np.median(theirs) for ours, theirs in zip(parts["latency"], parts["bare"], strict=True)])) / 1e3, 1)
    if tool_rounds:
        # our p50 in each round beside the tool's median of the same round: the cross-check's ratio is taken round by round,
        # so that a change of background load between rounds falls on both sides of each ratio
        out["cross_check_tool"] = _tool_summary(tool_rounds, {key: [float(np.median(chunk)) / 1e6 for chunk in chunks[:len(tool_rounds)]]
                                                              for key, chunks in parts.items()})
    throughput: dict[str, Any] = {}
    for batch in spec.throughput_batch_sizes:
        rows = first_rows(inputs, batch)
        try:
            times = _timed(f"throughput batch {batch}", runner.timed_call(rows), min(spec.warmup, THROUGHPUT_WARMUP),
                           THROUGHPUT_MIN_ITERATIONS, spec.throughput_seconds, progress)
        except (RuntimeError, ValueError) as exc:  # e.g. a static-batch engine: the other batch sizes still count
            throughput[str(batch)] = {"status": "failed", "reason": one_line(str(exc))}
            continue
        raw[f"batch{batch}"] = times
        stats = summarize(times, batch)
        low, high = stats.ci95["mean_ms"]
        throughput[str(batch)] = {"status": "ok", "samples_per_second": round(stats.throughput, 2),
                                  "ci95": [round(batch * 1000 / high, 2), round(batch * 1000 / low, 2)],
                                  "p50_ms": round(stats.p50_ms, 4), "iterations": stats.iterations}
    out["throughput"] = throughput
    assert spec.timings is not None
    np.savez(spec.timings, **raw)
    return out


def call_overhead_us(latency: dict[str, Any], bare: dict[str, Any]) -> float:
    """What the timed call adds to the runtime's own per call, in µs: round by round where the result has it
    (``paired_overhead_us``, harness 9), else, for an older result, the difference of the pooled p50s."""
    paired = bare.get("paired_overhead_us")
    return paired if paired is not None else round(1e3 * (latency["p50_ms"] - bare["p50_ms"]), 1)


def _tool_summary(rounds: list[dict[str, Any]], ours: dict[str, list[float]]) -> dict[str, Any]:
    """The benchmark tool's rounds as one result: the median of its round medians beside ``ours``, our p50 per round of
    each timed call (``latency``, ``bare``), or the first failure."""
    failed = next((r for r in rounds if r["status"] != "ok"), None)
    if failed is not None:
        return failed
    medians = [r["median_ms"] for r in rounds]
    return {**rounds[0], "median_ms": float(np.median(medians)), "round_medians_ms": medians,
            "ours_round_p50_ms": ours, "iterations": sum(r.get("iterations") or 0 for r in rounds), "rounds": len(rounds)}


def _timed(task: str, call: Callable[[], object], warmup: int, iterations: int, min_seconds: float, progress: Progress) -> np.ndarray:
    done = [0]
    last = [0.0]

    def step() -> None:
        done[0] += 1
        now = time.perf_counter()
        if now - last[0] > 0.1:  # a line every 100 ms at most: reporting must not cost what it measures
            last[0] = now
            progress(task, done[0], max(iterations, done[0]))

    times = time_calls(call, warmup=warmup, iterations=iterations, min_seconds=min_seconds, on_step=step)
    progress(task, len(times), len(times))
    return times


def _score(spec: HarnessSpec, call: Callable[[Feed], Any], inputs: Feed, progress: Progress, *,
           batch: int) -> np.ndarray | dict[str, np.ndarray]:
    """The engine's outputs on every input, ``batch`` at a time: one array, or every output by name."""
    out: list[Any] = []
    total = _count(inputs)
    for start in range(0, total, batch):
        # a copy: a memory map is read-only
        out.append(call({name: np.array(array[start : start + batch]) for name, array in inputs.items()}))
        _peak_rss()  # read before the batch's pages are dropped: the kernel's own peak may not have counted them yet
        for array in inputs.values():
            drop_mapped_pages(array)  # scoring a large evaluation set holds one batch of it
        progress("accuracy", min(start + batch, total), total)
    if isinstance(out[0], dict):
        return {name: np.concatenate([np.asarray(part[name]) for part in out]) for name in out[0]}
    return np.concatenate([np.asarray(part) for part in out])


def open_runner(spec: HarnessSpec) -> Any:
    if spec.backend == "pytorch":
        return TorchRunner(spec.engine, threads=spec.threads, model_config=spec.torch_model_config)
    return get_backend(spec.backend).runner(spec.engine, threads=spec.threads)


def _runtime_module(backend: str) -> str:
    """The runtime package a runner imports, imported before the load is timed so ``load_ms`` is the engine's own."""
    if backend == "pytorch":
        return "torch"
    return REGISTRY[backend].runtime_module


def _caller(runner: Any, *, every_output: bool) -> Callable[[Feed], Any]:
    """``Runner.infer`` on a feed: its one output (class scores), or with ``every_output`` every output by name."""
    if every_output:
        return runner.infer

    def call(feed: Feed) -> np.ndarray:
        outputs = runner.infer(feed)
        if len(outputs) != 1:
            raise ValueError(f"expected one output (logits), the engine gave {sorted(outputs)}")
        return next(iter(outputs.values()))

    return call


def _fixed_batch(runner: Any) -> int | None:
    """The batch size an engine is fixed at (every input's first dimension), or None when it takes any: an engine
    converted at one shape (TFLite's ``fixed_shape``) is scored that many samples at a time."""
    sizes = {meta.shape[0] if meta.shape else None for meta in runner.input_metadata().values()}
    return next(iter(sizes)) if len(sizes) == 1 and None not in sizes else None


def load_inputs(spec: HarnessSpec) -> Feed:
    """The inputs as a feed: a .npy (memory-mapped) under ``input_name``, or every array of a .npz by name."""
    if spec.inputs.suffix == ".npz":
        with np.load(spec.inputs) as archive:
            return {name: archive[name] for name in archive.files}
    return {spec.input_name: np.load(spec.inputs, mmap_mode="r")}


def _count(inputs: Feed) -> int:
    return len(next(iter(inputs.values()))) if inputs else 0


def first_rows(inputs: Feed, count: int) -> Feed:
    """The first ``count`` samples of every input, repeated when there are fewer, as contiguous batches."""
    index = np.arange(count) % _count(inputs)
    return {name: np.ascontiguousarray(array[index]) for name, array in inputs.items()}


_PEAK_SEEN = 0  # the largest peak read so far: Linux's VmHWM can fall when pages are unmapped before it was updated


def _peak_rss() -> int:
    """This process's peak resident set size in bytes, never less than an earlier reading.

    On Linux this is ``VmHWM`` of the process's own memory map: ``ru_maxrss`` is kept across ``execve``, so a
    child started from a large parent (the pipeline, with PyTorch loaded) would report the parent's size.
    """
    global _PEAK_SEEN
    _PEAK_SEEN = max(_PEAK_SEEN, _read_peak_rss())
    return _PEAK_SEEN


def _read_peak_rss() -> int:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def tool_cross_check(backend: str, engine: Path, *, threads: int, batch_size: int, input_shape: tuple[int, ...], input_name: str,
                     min_seconds: float, more_inputs: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """The backend's own benchmark tool (``cross_check``, e.g. OpenVINO's ``benchmark_app``) on ``engine`` with these
    settings: ``{"status": "ok", **its result}``, or ``{"status": "failed", "reason": …}``."""
    implementation = getattr(get_backend(backend), "cross_check", None)
    if implementation is None:
        return {"status": "failed", "reason": f"{backend} has no benchmark tool of its own"}
    try:
        extra = {"more_inputs": more_inputs} if more_inputs else {}
        theirs = implementation(engine, threads=threads, batch_size=batch_size, input_shape=input_shape, input_name=input_name,
                                seconds=max(min_seconds, 1.0), **extra)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return {"status": "failed", "reason": str(exc)}
    return {"status": "ok", **theirs}


def one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _event(line: str) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and {"task", "done", "total"} <= set(event) else None


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this process when its parent dies: a killed run or device agent must not leave a
    measuring process behind, using the CPUs the next measurement is pinned to."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def start_child(args: list[str], usage: str) -> HarnessSpec | None:
    """What a measuring child does first: check its arguments (``usage``: the command after ``python -m``, the spec's
    path first), read its spec, have the kernel end it with its parent, pin it to the spec's CPUs (before any runtime
    starts its thread pool). The spec, or ``None`` once it has said why not in one line on standard error."""
    if len(args) != len(usage.split()) - 1:
        print(f"usage: python -m {usage}", file=sys.stderr)
        return None
    spec_path = Path(args[0])
    try:
        spec = HarnessSpec.model_validate_json(spec_path.read_text())
    except (OSError, ValueError) as exc:
        print(f"{spec_path}: not a harness spec: {one_line(str(exc))}", file=sys.stderr)
        return None
    _die_with_parent()
    if spec.cpus is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, spec.cpus)
        except OSError as exc:
            print(f"cannot pin to CPUs {list(spec.cpus)}: {exc.strerror}", file=sys.stderr)
            return None
    return spec


def child_environment() -> dict[str, str]:
    """A measuring child's environment: it imports what this process imports (a recipe's factory module may be
    importable only through ``sys.path``)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry)}


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m edgeship.harness SPEC.json RESULT.json``."""
    args = sys.argv[1:] if argv is None else argv
    spec = start_child(args, "edgeship.harness SPEC.json RESULT.json")
    if spec is None:
        return 2
    stdout = sys.stdout

    def progress(task: str, done: int, total: int) -> None:
        stdout.write(json.dumps({"task": task, "done": done, "total": total}) + "\n")
        stdout.flush()

    sys.stdout = sys.stderr  # a runtime's own prints must not mix with the progress lines
    try:
        result = measure(spec, progress)
    except HarnessError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    write_atomic(Path(args[1]), json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
