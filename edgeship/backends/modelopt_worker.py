"""One NVIDIA ModelOpt step in a child process: ``python -m edgeship.backends.modelopt_worker REQUEST.json``.

ModelOpt's ONNX quantizer patches ONNX Runtime's quantization classes for the whole process
(``modelopt.onnx.quantization.ort_patching.patch_ort_modules``) and never undoes it. Running it
here keeps edgeship's own ``quantize_static`` (the ONNX Runtime backend, the Q/DQ fallback)
exactly as ONNX Runtime ships it.

The request names the step (``autocast`` | ``quantize`` | ``quantize-defaults``), the source and target ONNX files, an
``.npz`` of calibration inputs keyed by input name, and the step's settings. Exit 0 after the
target is written; 3 when ModelOpt cannot be imported; 1 on any other failure. Either way the last
line on stderr says why.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MODELOPT_MISSING = 3


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    try:
        import modelopt.onnx.autocast  # noqa: F401
        import modelopt.onnx.quantization  # noqa: F401
    except Exception as exc:  # ImportError, or a dependency failing at import
        print(f"cannot import ModelOpt: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return MODELOPT_MISSING
    try:
        {"autocast": _autocast, "quantize": _quantize, "quantize-defaults": _quantize_defaults}[request["step"]](request)
    except Exception as exc:  # ModelOpt raises anything; its words go to the parent
        said = " ".join(str(exc).split())  # one line: the parent reports the last line of stderr
        print(f"ModelOpt {request['step']} failed: {type(exc).__name__}: {said}", file=sys.stderr)
        return 1
    return 0


def _autocast(request: dict[str, Any]) -> None:
    """FP16 with float32 I/O: AutoCast keeps in FP32 the nodes whose activations (seen on the calibration inputs)
    or initializers would overflow FP16."""
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    if request.get("chunk"):
        _reference_ranges_in_chunks(int(request["chunk"]))
    model = convert_to_mixed_precision(onnx_path=request["source"], low_precision_type="fp16", keep_io_types=True,
                                       calibration_data=request.get("calibration"), providers=["cpu"])
    onnx.save(model, request["target"])


def _reference_ranges_in_chunks(chunk: int) -> None:
    """Make AutoCast's reference run hold the activations of ``chunk`` calibration inputs at a time, not of all of them.

    AutoCast's ``ReferenceRunner.run`` keeps every intermediate tensor of every calibration input (Polygraphy's
    Comparator) and only then reduces each tensor to its range (``TensorStats``: absmax, min, max, shape). A range is
    a max and a min, so running the same per-input batches a chunk at a time and merging the chunks' ranges gives the
    same ranges, and so the same FP16 model. ``convert_to_mixed_precision`` builds its runner by name, so the name
    in its module is what is replaced (only in this child process)."""
    import tempfile
    from collections import OrderedDict

    import numpy as np
    from modelopt.onnx.autocast import convert
    from modelopt.onnx.autocast.referencerunner import ReferenceRunner, TensorStats
    from modelopt.onnx.quantization.calib_utils import CalibrationDataProvider

    def ranges(tensor: Any) -> Any:
        if isinstance(tensor, TensorStats):
            return tensor
        array = np.asarray(tensor)
        empty = array.size == 0
        return TensorStats(absmax=0 if empty else np.max(np.abs(array)), min_val=0 if empty else np.min(array),
                           max_val=0 if empty else np.max(array), shape=array.shape)

    def merged(first: Any, second: Any) -> Any:
        return TensorStats(absmax=max(first.absmax, second.absmax), min_val=min(first.min_val, second.min_val),
                           max_val=max(first.max_val, second.max_val), shape=first.shape)

    class ChunkedReferenceRunner(ReferenceRunner):  # type: ignore[misc]
        def run(self, inputs: Any = None) -> Any:
            if not (isinstance(inputs, str) and inputs.endswith(".npz")):
                return super().run(inputs)
            with np.load(inputs) as data:
                batches = CalibrationDataProvider(self.model, {name: data[name] for name in data.files}).calibration_data_list
            if len(batches) <= chunk:
                return super().run(inputs)
            result: dict[str, Any] = {}
            for start in range(0, len(batches), chunk):
                with tempfile.TemporaryDirectory() as folder:  # a folder of .npz files: one batch each, ModelOpt's own format
                    for index, batch in enumerate(batches[start:start + chunk]):
                        np.savez(Path(folder) / f"{index:06d}.npz", **batch)
                    for name, tensor in super().run(folder).items():
                        result[name] = merged(result[name], ranges(tensor)) if name in result else ranges(tensor)
            return OrderedDict(result)

    convert.ReferenceRunner = ChunkedReferenceRunner


def _quantize(request: dict[str, Any]) -> None:
    """Explicit INT8 Q/DQ for TensorRT, calibrated on ONNX Runtime's CPU provider."""
    import numpy as np
    from modelopt.onnx.quantization import quantize

    with np.load(request["calibration"]) as data:
        calibration = {name: data[name] for name in data.files}
    quantize(onnx_path=request["source"], quantize_mode="int8", calibration_data=calibration,
             calibration_method=request["method"], calibration_shapes=request["calibration_shapes"], calibration_eps=["cpu"],
             high_precision_dtype=request["high_precision"], output_path=request["target"], log_level="WARNING",
             nodes_to_exclude=request.get("nodes_to_exclude") or None, calibrate_per_node=bool(request.get("per_node")),
             calibration_cache_path=request.get("calibration_cache"))


def _quantize_defaults(request: dict[str, Any]) -> None:
    """ModelOpt's INT8 quantization with every setting at its default, as a user calling it by hand would (the side-by-side
    benchmark); only the calibration providers are set, to the CPU, since its default list wants a GPU."""
    import numpy as np
    from modelopt.onnx.quantization import quantize

    with np.load(request["calibration"]) as data:
        calibration = {name: data[name] for name in data.files}
    quantize(onnx_path=request["source"], calibration_data=calibration, calibration_eps=["cpu"], output_path=request["target"],
             log_level="WARNING")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
