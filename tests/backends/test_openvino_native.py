from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeship.backends import availability
from edgeship.backends.base import Precision
from edgeship.recipe import OpenVinoConfig

from backends.contract import onnx_artifact
from conftest import TrainedCnn

pytestmark = pytest.mark.skipif(not availability("openvino").available, reason=f"openvino: {availability('openvino').reason}")


@pytest.fixture(scope="module")
def fp32_engine(trained_cnn: TrainedCnn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeship.backends.openvino import OpenVinoBackend

    return OpenVinoBackend().build(onnx_artifact(trained_cnn.onnx), Precision.FP32, None, OpenVinoConfig(),
                                   tmp_path_factory.mktemp("ov_native"))


def _binding_output(engine: Path, feed: np.ndarray) -> bytes:
    import openvino as ov

    compiled = ov.Core().compile_model(str(engine), "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    return np.ascontiguousarray(compiled({"input": feed})[0]).tobytes()


def test_the_c_api_request_reads_each_written_feed_and_gives_the_bindings_outputs(fp32_engine: Path, trained_cnn: TrainedCnn) -> None:
    """Written in place (copied into the request's own tensor) or shared (a tensor on the caller's memory), at any batch
    size, the C API's request computes on the values it is given, bit for bit as the Python binding does."""
    from edgeship.backends.openvino_native import NativeRequest

    request = NativeRequest(fp32_engine, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    try:
        run = request.run_call()
        for rows, share in (((0, 1), frozenset()), ((1, 9), frozenset()), ((9, 10), frozenset({"input"}))):
            first = trained_cnn.evaluation[rows[0]:rows[1]]
            second = trained_cnn.evaluation[rows[0] + 20:rows[1] + 20]
            writes = request.bind({"input": first}, share)
            ((write, _),) = writes
            for feed in (first, second, first):
                write(feed)
                run()
                assert request.output_bytes(0) == _binding_output(fp32_engine, feed), (rows, share)
    finally:
        request.close()
    request.close()  # twice is harmless


def test_a_c_api_failure_is_one_line_naming_the_step(tmp_path: Path) -> None:
    from edgeship.backends.openvino_native import NativeError, NativeRequest

    broken = tmp_path / "model.xml"
    broken.write_text("<net>not an IR</net>")
    with pytest.raises(NativeError, match=r"^OpenVINO C API, compiling model\.xml: ") as caught:
        NativeRequest(broken, "CPU", {})
    assert "\n" not in str(caught.value)


def test_the_runner_times_through_the_c_api_and_says_so(fp32_engine: Path, trained_cnn: TrainedCnn) -> None:
    """The harness's timed and bare calls go through the C API, its outputs checked against ``infer``'s when bound; the
    runner's description, written into the report after the timing, names the path."""
    from edgeship.backends.openvino import OpenVinoBackend

    feed = {"input": trained_cnn.evaluation[:1]}
    with OpenVinoBackend().runner(fp32_engine, threads=1) as runner:
        assert "timed_call" not in runner.describe()
        want = runner.infer(feed)["logits"]
        bare = runner.bare_call(feed)
        timed = runner.timed_call(feed)
        bare()
        timed()
        assert runner.describe()["timed_call"].startswith("OpenVINO C API")
        np.testing.assert_array_equal(runner.infer(feed)["logits"], want)
