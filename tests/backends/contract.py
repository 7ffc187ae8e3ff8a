"""The contract every backend passes. A backend's test module subclasses ``BackendContract``.

The engines are built from a small CNN trained on real data (scikit-learn's digits), so the
INT8 agreement bound means something. Tests needing the backend's runtime are skipped where it
is missing, with the reason and install command ``edgeship backends`` prints; the availability
tests always run.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from edgeship.artifacts import Artifact, ArtifactStore, sha256_file
from edgeship.backends import REGISTRY, availability, get_backend
from edgeship.backends.base import Availability, Backend, CalibrationSet, Precision, Runner
from edgeship.backends.rounding import WEIGHT_ROUNDING_FILE
from edgeship.backends.tooling import importable
from edgeship.divergence import Accumulator, match_by_value, renamed, tensor_sites
from edgeship.errors import BuildError
from edgeship.measure import agreement
from edgeship.recipe import Recipe

from conftest import TrainedCnn


def onnx_artifact(path: Path) -> Artifact:
    return Artifact(id="0" * 32, kind="onnx", stage="export", path=path, sha256=sha256_file(path), size=path.stat().st_size,
                    meta={"input_name": "input", "input_shape": [1, 28, 28]})


def ort_reference(path: Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": batch})[0]


class BackendContract:
    """Subclasses set ``backend`` (registry name), ``config`` (its recipe section) and
    ``runtime_modules`` (the packages whose absence makes the backend unavailable)."""

    backend: ClassVar[str]
    config: ClassVar[BaseModel]
    runtime_modules: ClassVar[tuple[str, ...]]
    profiles: ClassVar[bool] = True  # the runtime has a per-layer profiler edgeship reads

    @pytest.fixture(scope="class")
    @classmethod
    def impl(cls) -> Backend:
        state = availability(cls.backend)
        if not state.available:
            pytest.skip(f"{cls.backend} unavailable here: {state.reason}; install: {state.install}")
        return get_backend(cls.backend)

    @pytest.fixture(scope="class")
    @classmethod
    def engines(cls, impl: Backend, trained_cnn: TrainedCnn, tmp_path_factory: pytest.TempPathFactory) -> dict[Precision, Path]:
        calibration = CalibrationSet(trained_cnn.calibration, "test-fingerprint", batch_size=1)
        built = {}
        for precision in sorted(impl.precisions):
            out = tmp_path_factory.mktemp(f"{cls.backend}-{precision}")
            built[precision] = impl.build(onnx_artifact(trained_cnn.onnx), precision, calibration if precision is Precision.INT8 else None,
                                          cls.config, out)
        return built

    def test_availability_is_described(self) -> None:
        state = availability(self.backend)
        assert isinstance(state, Availability) and state.backend == self.backend
        assert state.available or (state.reason and state.install), "an unavailable backend must say why and what to install"
        assert REGISTRY[self.backend].precisions

    def test_missing_package_is_unavailable_with_the_install_command(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for module in self.runtime_modules:
            monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
        state = get_backend(self.backend).availability()
        assert not state.available
        assert any(module in state.reason for module in self.runtime_modules), state.reason
        assert "pip install" in state.install

    def test_builds_every_supported_precision(self, impl: Backend, engines: dict[Precision, Path]) -> None:
        assert set(engines) == set(impl.precisions)
        for path in engines.values():
            assert path.is_file() and path.stat().st_size > 0
            assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "no work files are left beside the engine"

    def test_declares_what_it_builds(self, impl: Backend, engines: dict[Precision, Path]) -> None:
        """What the backend declares (``info``) is what the registry, the recipe and ``edgeship validate`` read, so it
        must be what the backend builds: each engine's suffix and companion files, and its precision read back."""
        info = REGISTRY[self.backend]
        assert impl.info is info and info.name == self.backend and isinstance(self.config, info.config)
        assert impl.precisions == info.precisions == info.config.SUPPORTED
        assert self.backend == info.config.BACKEND
        assert type(Recipe().backends).model_fields[self.backend].annotation is info.config, "the recipe's section is the backend's"
        for precision, path in engines.items():
            assert path.suffix in info.suffixes, f"{precision}: {path.name} has a suffix the backend does not declare"
            beside = {p.name for p in path.parent.iterdir()} - {path.name}
            assert {p.name for p in info.companion_paths(path)} <= beside, f"{precision}: a declared companion file is missing"
            assert impl.precision_of(path) is precision, f"{path.name} reads back as {impl.precision_of(path)}, built {precision}"
        assert importable(info.runtime_module), info.runtime_module

    def test_recipe_takes_the_declared_precisions_and_no_other(self) -> None:
        info = REGISTRY[self.backend]
        for precision in Precision:
            section = {self.backend: {"precisions": [precision.value]}}
            if precision in info.precisions:
                assert Recipe.model_validate({"backends": section}).backends
            else:
                with pytest.raises(ValidationError, match=f"{self.backend} builds"):
                    Recipe.model_validate({"backends": section})

    def test_outputs_follow_fp32_reference(self, impl: Backend, engines: dict[Precision, Path], trained_cnn: TrainedCnn) -> None:
        reference = ort_reference(trained_cnn.onnx, trained_cnn.evaluation)
        assert (reference.argmax(1) == trained_cnn.labels).mean() > 0.95, "the reference model itself must be trained"
        for precision, path in engines.items():
            with impl.runner(path, threads=1) as runner:
                out = runner.infer({"input": trained_cnn.evaluation})["logits"]
            assert out.shape == reference.shape and out.dtype == np.float32
            error = float(np.abs(out - reference).max())
            agreement = float((out.argmax(1) == reference.argmax(1)).mean())
            if precision is Precision.FP32:
                assert error <= 1e-4, f"FP32 max abs error {error:.3g}"
            elif precision is Precision.FP16:
                assert error / float(np.abs(reference).max()) <= 1e-2, f"FP16 relative error {error:.3g}"
            else:
                assert agreement >= 0.98, f"INT8 top-1 agreement {agreement:.4f} on {len(reference)} evaluation inputs"

    def test_runner_lifecycle(self, impl: Backend, engines: dict[Precision, Path], trained_cnn: TrainedCnn) -> None:
        runner: Runner = impl.runner(engines[min(engines)], threads=1)
        with pytest.raises(RuntimeError, match="must be entered"):
            runner.infer({"input": trained_cnn.evaluation[:1]})
        with runner as entered:
            assert entered is runner
            first = runner.infer({"input": trained_cnn.evaluation[:4]})["logits"]
            for n in (1, 3, 4):  # a second call, and other batch sizes, on the same runner
                out = runner.infer({"input": trained_cnn.evaluation[:n]})["logits"]
                assert out.shape == (n, 10)
            np.testing.assert_array_equal(out, first)
        with pytest.raises(RuntimeError, match="must be entered"):
            runner.infer({"input": trained_cnn.evaluation[:1]})

    def test_runner_checks_its_inputs(self, impl: Backend, engines: dict[Precision, Path]) -> None:
        good = np.zeros((1, 1, 28, 28), np.float32)
        with impl.runner(engines[min(engines)], threads=1) as runner:
            meta = runner.input_metadata()
            assert list(meta) == ["input"] and meta["input"].shape[1:] == (1, 28, 28)
            runner.infer({"input": good})  # a good feed passes first: what follows must be checked anew, not waved through
            with pytest.raises(ValueError, match="feed names"):
                runner.infer({"wrong": good})
            with pytest.raises(ValueError, match="dtype"):
                runner.infer({"input": good.astype(np.float64)})
            with pytest.raises(ValueError, match="shape"):
                runner.infer({"input": np.zeros((1, 1, 14, 14), np.float32)})
            with pytest.raises(ValueError, match="dims"):
                runner.infer({"input": np.zeros((1, 28, 28), np.float32)})

    def test_bare_call_is_the_runtime_call_on_the_feed_and_infer_gives_the_same_outputs_around_it(
            self, impl: Backend, engines: dict[Precision, Path], trained_cnn: TrainedCnn) -> None:
        """The harness times ``bare_call`` beside ``infer`` for the per-call overhead: it must run the engine on the feed,
        and leave ``infer`` (buffers reused per shape) giving exactly what it gave before, for every batch size."""
        if impl.info.name == "tensorrt":
            pytest.skip("a TensorRT engine needs a GPU")
        for precision, path in sorted(engines.items()):
            with impl.runner(path, threads=1) as runner:
                feeds = [{"input": trained_cnn.evaluation[start : start + n]} for start, n in ((0, 1), (1, 4), (5, 1))]
                expected = [runner.infer(feed)["logits"] for feed in feeds]
                bare = runner.bare_call(feeds[0])
                assert callable(bare), precision
                bare()
                for _ in range(3):  # shapes changing back and forth re-plan the runtime's buffers
                    for feed, want in zip(feeds, expected, strict=True):
                        np.testing.assert_array_equal(runner.infer(feed)["logits"], want, err_msg=str(precision))

    def test_the_timed_call_checks_its_feed_once_and_leaves_infer_as_it_was(
            self, impl: Backend, engines: dict[Precision, Path], trained_cnn: TrainedCnn) -> None:
        """The report's p50 times ``timed_call``: a bad feed is refused when it is made, as ``infer`` refuses it, and
        running it (outputs left in the runtime) changes nothing ``infer`` gives, at any batch size."""
        if impl.info.name == "tensorrt":
            pytest.skip("a TensorRT engine needs a GPU")
        for precision, path in sorted(engines.items()):
            with impl.runner(path, threads=1) as runner:
                with pytest.raises(ValueError, match="dtype"):
                    runner.timed_call({"input": trained_cnn.evaluation[:1].astype(np.float64)})
                feeds = [{"input": trained_cnn.evaluation[start : start + n]} for start, n in ((0, 1), (1, 8))]
                expected = [runner.infer(feed)["logits"] for feed in feeds]
                for feed, want in zip(feeds, expected, strict=True):
                    timed = runner.timed_call(feed)
                    for _ in range(3):
                        timed()
                    np.testing.assert_array_equal(runner.infer(feed)["logits"], want, err_msg=str(precision))

    def test_a_large_feed_is_read_anew_on_every_call(self, impl: Backend, engines: dict[Precision, Path],
                                                     trained_cnn: TrainedCnn) -> None:
        """A runner may take a large input without copying it (OpenVINO sets a tensor on the caller's memory): every call
        must still read the values it is given, from a new array, a non-contiguous one or one changed in place."""
        if impl.info.name == "tensorrt":
            pytest.skip("a TensorRT engine needs a GPU")
        first, second = trained_cnn.evaluation[:128], trained_cnn.evaluation[128:256]  # 401 KB each
        assert first.nbytes > 256 * 1024
        with impl.runner(engines[Precision.FP32], threads=1) as runner:
            want = [runner.infer({"input": first})["logits"], runner.infer({"input": second})["logits"]]
            feed = first.copy()
            for round_ in range(2):
                np.testing.assert_array_equal(runner.infer({"input": second.copy()})["logits"], want[1])
                np.testing.assert_array_equal(runner.infer({"input": np.asfortranarray(first)})["logits"], want[0])
                feed[...] = (first, second)[round_]  # the same array, changed in place between calls
                np.testing.assert_array_equal(runner.infer({"input": feed})["logits"], want[round_])

    def test_profile_times_each_layer_or_says_why_not(self, impl: Backend, engines: dict[Precision, Path], trained_cnn: TrainedCnn) -> None:
        """``profiles``: whether the runtime has a per-layer profiler edgeship reads. A profile runs in a session of its own
        and leaves the runner's outputs as they were; a bad feed is refused as ``infer`` refuses it."""
        if impl.info.name == "tensorrt":
            pytest.skip("a TensorRT engine needs a GPU")
        feed = {"input": trained_cnn.evaluation[:1]}
        for precision, path in sorted(engines.items()):
            with impl.runner(path, threads=1) as runner:
                before = runner.infer(feed)["logits"]
                profile = runner.profile(feed, runs=3)
                np.testing.assert_array_equal(runner.infer(feed)["logits"], before, err_msg=str(precision))
                with pytest.raises(ValueError, match="shape"):
                    runner.profile({"input": np.zeros((1, 1, 14, 14), np.float32)})
            if not self.profiles:
                assert profile.tool is None and profile.reason and not profile.by_type, profile
                continue
            assert profile.tool and profile.runs == 3 and not profile.reason, profile
            assert profile.layer_count >= 3 and profile.layers_us > 0, profile  # the CNN has three convolutions or more
            assert sum(t.share for t in profile.by_type) == pytest.approx(1.0, abs=1e-3)
            assert {layer.op_type for layer in profile.top_layers} <= {t.op_type for t in profile.by_type}
            assert any("conv" in t.op_type.lower() for t in profile.by_type), (precision, profile.by_type)

    def test_tap_reads_the_fp32_models_tensors_inside_each_engine(self, impl: Backend, engines: dict[Precision, Path],
                                                                 trained_cnn: TrainedCnn) -> None:
        """``Runner.tap``: the engine's own values of the FP32 ONNX's tensors (by name, or matched by value where the
        runtime renames them), in a session of its own that leaves the runner's outputs as they were. An FP32 engine's
        tensors equal the reference's; a reduced-precision engine's stay close to them and its logits to its outputs."""
        if impl.info.name == "tensorrt":
            pytest.skip("a TensorRT engine needs a GPU; its prepared ONNX is tapped on ONNX Runtime")
        sites = tensor_sites(trained_cnn.onnx)
        names = [site.tensor for site in sites]
        feeds = [{"input": trained_cnn.evaluation[i : i + 1]} for i in range(4)]
        with get_backend("onnxruntime").runner(trained_cnn.onnx, threads=1) as reference_runner:
            reference = reference_runner.tap(sites)
            expected = [reference.call(feed) for feed in feeds]
        assert set(reference.exposed) == set(names) and not reference.by_value
        for precision, path in sorted(engines.items()):
            with impl.runner(path, threads=1) as runner:
                before = runner.infer(feeds[0])["logits"]
                tap = runner.tap(sites)
                got = [tap.call(feed) for feed in feeds]
                np.testing.assert_array_equal(runner.infer(feeds[0])["logits"], before, err_msg=str(precision))
            matches = match_by_value(expected[0], got[0]) if tap.by_value else None
            accumulator = Accumulator()
            for want, have in zip(expected, got, strict=True):
                accumulator.add(want, renamed(have, matches) if matches is not None else have)
            rows = {row.tensor: row for row in accumulator.rows(sites)}
            assert "logits" in rows and len(rows) >= len(names) // 2, (precision, sorted(rows))
            if precision is Precision.FP32:
                assert all(r.sqnr_db is None or r.sqnr_db > 60 for r in rows.values()), (precision, rows)
            else:
                assert all(r.sqnr_db is not None and 10 < r.sqnr_db < 120 for r in rows.values()), (precision, rows)
            logits = renamed(got[0], matches)["logits"] if matches is not None else got[0]["logits"]
            assert agreement(logits, before)["mean_cosine"] > 0.999, precision  # the tapped run computes what the engine does
            if tap.local is None:
                assert tap.local_note.startswith("not measured"), tap.local_note
                continue
            own = Accumulator()  # each layer alone on the FP32 values of its inputs: its own error, no more than the carried one
            for want, feed in zip(expected, feeds, strict=True):
                own.add(want, tap.local({**want, **feed}))
            alone = {row.tensor: row for row in own.rows(sites)}
            assert len(alone) >= len(rows) // 2, (precision, sorted(alone))
            finite = [(alone[t].sqnr_db, rows[t].sqnr_db) for t in alone if t in rows and None not in (alone[t].sqnr_db, rows[t].sqnr_db)]
            if precision is Precision.FP32:
                assert all(a is None or a > 60 for a in (r.sqnr_db for r in alone.values())), (precision, alone)
            else:
                assert finite and np.median([a for a, _ in finite]) >= np.median([c for _, c in finite]), (precision, finite)

    def test_runner_pins_threads(self, impl: Backend, engines: dict[Precision, Path]) -> None:
        with impl.runner(engines[min(engines)], threads=1) as runner:
            described = runner.describe()
        threads = [v for k, v in described.items() if "thread" in k]
        assert threads and all(str(v) == "1" for v in threads), described

    def test_engine_files_are_hashed_and_verified(self, impl: Backend, engines: dict[Precision, Path], tmp_path: Path) -> None:
        store = ArtifactStore(tmp_path / "store")
        for n, (precision, path) in enumerate(sorted(engines.items())):
            aid = f"{n:032d}"
            with store.staging(aid) as folder:
                shutil.copytree(path.parent, folder, dirs_exist_ok=True)
                artifact = store.commit(folder, aid=aid, kind="engine", stage="build", main_file=folder / path.name)
            assert artifact.sha256 == sha256_file(path), precision
            assert set(artifact.files) == {p.name for p in path.parent.iterdir()}
            assert store.get(aid) == artifact
            victim = artifact.folder / sorted(artifact.files)[-1]
            victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
            assert store.get(aid) is None, f"{precision}: an edited {victim.name} must not pass as the recorded engine"

    def test_a_second_build_is_byte_identical(self, impl: Backend, engines: dict[Precision, Path], trained_cnn: TrainedCnn,
                                              tmp_path: Path) -> None:
        """The same ONNX and calibration give the same engine files, in the same process too: a resumed run
        reuses engines by hash and rebuilds the rest, so a build must not depend on what ran before it."""
        precision = Precision.INT8 if Precision.INT8 in impl.precisions else min(impl.precisions)
        calibration = CalibrationSet(trained_cnn.calibration, "test-fingerprint", batch_size=1)
        again = impl.build(onnx_artifact(trained_cnn.onnx), precision, calibration if precision is Precision.INT8 else None,
                           self.config, tmp_path)
        first = {p.name: sha256_file(p) for p in engines[precision].parent.iterdir() if p.is_file()}
        second = {p.name: sha256_file(p) for p in again.parent.iterdir() if p.is_file()}
        assert second == first, f"{precision} engine files differ between two builds"

    def test_int8_with_gptq_rounded_weights(self, impl: Backend, trained_cnn: TrainedCnn, tmp_path: Path) -> None:
        """``weight_rounding: gptq`` gives an INT8 engine that follows FP32 as closely as nearest rounding must, records
        each layer's rounding beside it and leaves no work file behind."""
        if Precision.INT8 not in impl.precisions or "weight_rounding" not in type(self.config).model_fields:
            pytest.skip(f"{self.backend} builds no INT8 or has no weight_rounding")
        calibration = CalibrationSet(trained_cnn.calibration, "test-fingerprint", batch_size=1)
        engine = impl.build(onnx_artifact(trained_cnn.onnx), Precision.INT8, calibration,
                            self.config.model_copy(update={"weight_rounding": "gptq"}), tmp_path)
        record = json.loads((tmp_path / WEIGHT_ROUNDING_FILE).read_text())
        assert record["method"] == "gptq" and record["layers"]
        assert all(row["chosen"] == ("gptq" if row["gptq_error"] < row["nearest_error"] else "nearest") for row in record["layers"])
        assert record["median_error_ratio"] < 1, record["layers"]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no work files are left beside the engine"
        reference = ort_reference(trained_cnn.onnx, trained_cnn.evaluation)
        with impl.runner(engine, threads=1) as runner:
            out = runner.infer({"input": trained_cnn.evaluation})["logits"]
        assert float((out.argmax(1) == reference.argmax(1)).mean()) >= 0.98

    def test_unsupported_precision_is_a_build_error(self, impl: Backend, trained_cnn: TrainedCnn, tmp_path: Path) -> None:
        missing = [p for p in Precision if p not in impl.precisions]
        if not missing:
            pytest.skip(f"{self.backend} supports every precision")
        with pytest.raises(BuildError, match=str(missing[0])):
            impl.build(onnx_artifact(trained_cnn.onnx), missing[0], None, self.config, tmp_path)

    def test_int8_without_calibration_is_a_build_error(self, impl: Backend, trained_cnn: TrainedCnn, tmp_path: Path) -> None:
        if Precision.INT8 not in impl.precisions:
            pytest.skip(f"{self.backend} builds no INT8")
        with pytest.raises(BuildError, match="calibration"):
            impl.build(onnx_artifact(trained_cnn.onnx), Precision.INT8, None, self.config, tmp_path)
