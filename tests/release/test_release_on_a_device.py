"""``edgeship release verify RELEASE --device NAME``: the probe run by a lab device's agent, before a fleet sees it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeship.cli import main

from conftest import TOKEN, Released, agent_process

pytestmark = pytest.mark.slow


def test_a_lab_device_verifies_and_probes_a_release(released: Released, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGESHIP_TEST_TOKEN", TOKEN)
    with agent_process(tmp_path / "agent") as agent:
        recipe = tmp_path / "lab.yaml"
        recipe.write_text(json.dumps({"devices": [{"name": "lab", "url": agent.url, "token_env": "EDGESHIP_TEST_TOKEN"}]}))
        archive = next(a for a in released.archives if a.name.startswith("openvino"))
        key = str(released.keys / "lab.pub")
        assert main(["release", "verify", str(archive), "--device", "lab", "--recipe", str(recipe), "--key", key]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "lab: tiny 1.0.0: openvino/int8 verified (signed), loaded" in out and "lab: probe pass" in out
        tampered = tmp_path / "tampered"
        shutil.copytree(archive.with_name(archive.name.removesuffix(".tar.gz")), tampered / "openvino-int8")
        engine = tampered / "openvino-int8" / "model.bin"
        engine.write_bytes(engine.read_bytes()[:-1] + bytes([engine.read_bytes()[-1] ^ 1]))
        assert main(["release", "verify", str(tampered / "openvino-int8"), "--device", "lab", "--recipe", str(recipe), "--key", key]) == 2
        assert "model.bin: its sha256 differs" in capsys.readouterr().out
        assert main(["release", "verify", str(archive), "--device", "nowhere", "--recipe", str(recipe), "--key", key]) == 2
        assert "--device nowhere: not a device of the recipe (its devices: lab)" in capsys.readouterr().err
