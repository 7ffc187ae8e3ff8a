from __future__ import annotations

from edgeship.errors import BackendUnavailable, BuildError, DataError, EdgeshipError, RecipeError, StageError


def test_hierarchy_and_exit_codes() -> None:
    errors = [RecipeError("r"), DataError("d"), BackendUnavailable("tflite", "not installed"), BuildError("onnxruntime", "int8", "boom"),
              StageError("export", "parity")]
    assert all(isinstance(e, EdgeshipError) for e in errors)
    assert [e.exit_code for e in errors] == [2, 2, 2, 2, 2]


def test_messages_name_what_failed() -> None:
    assert str(BuildError("onnxruntime", "int8", "boom")) == "onnxruntime/int8 build failed: boom"
    assert str(StageError("export", "parity")) == "stage 'export' failed: parity"
    assert "tflite" in str(BackendUnavailable("tflite", "not installed"))
