from __future__ import annotations

from pathlib import Path

from edgeship.artifacts import ArtifactStore
from edgeship.pipeline.validate import engine_bytes, prediction_label


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
