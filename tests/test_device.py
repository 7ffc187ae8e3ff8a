from __future__ import annotations

from edgeship.device import INT8_FLAGS, describe_device, tool_versions


def test_device_description_has_what_the_report_needs() -> None:
    device = describe_device()
    assert device["cpu"] and device["logical_cores"] >= 1 and device["usable_cores"] >= 1
    assert set(device["isa_flags"]) <= set(INT8_FLAGS)
    assert device["gpu"] is None or isinstance(device["gpu"], str)


def test_tool_versions_name_the_stack() -> None:
    versions = tool_versions()
    for tool in ("python", "torch", "onnx", "onnxruntime", "edgeship"):
        assert versions[tool]
