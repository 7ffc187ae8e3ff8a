"""The device loader: slim, refuses anything tampered with, and its probe tells a good engine from a wrong one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeship_deploy
from edgeship.release.keys import sign
from edgeship_deploy import RELEASE_FILE, SIGNATURE_FILE, ReleaseError, load, verify
from edgeship_deploy.__main__ import main

from conftest import Released

pytestmark = pytest.mark.slow

HEAVY = ("torch", "onnx", "tensorflow", "onnx2tf", "nncf", "modelopt", "edgeship")
SLIM = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked}:
            raise ImportError(f"{{name}} is blocked: the loader must not need it")
sys.meta_path.insert(0, Blocker())
from edgeship_deploy import load
import numpy as np
model = load(sys.argv[1], [sys.argv[2]])
result = model.probe()
top = model.predict(np.load(sys.argv[1] + "/probe.npz")["images"][:2], top_k=3)
assert len(top) == 2 and len(top[0]) == 3 and abs(sum(p for _, p in top[0]) - 1) < 1.0
print(result.describe())
print("loaded:", sorted(m for m in {blocked} if m in sys.modules))
sys.exit(0 if result.passed else 1)
"""


def folders(released: Released) -> list[Path]:
    return [a.with_name(a.name.removesuffix(".tar.gz")) for a in released.archives]


def test_loads_and_probes_each_backend_without_any_build_tool(released: Released) -> None:
    for folder in folders(released):
        done = subprocess.run([sys.executable, "-c", SLIM.format(blocked=set(HEAVY)), str(folder), str(released.keys / "lab.pub")],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, folder.name + done.stdout + done.stderr[-2000:]
        assert "probe pass" in done.stdout and "loaded: []" in done.stdout, done.stdout


def copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def flip(path: Path, at: int = -1) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))


TAMPERED = {
    "engine byte flipped": (lambda f: flip(f / json.loads((f / RELEASE_FILE).read_text())["engine"]["main"], 100),
                            "its sha256 differs from the one release.json lists"),
    "release.json byte flipped": (lambda f: flip(f / RELEASE_FILE, 20), "the signature does not match"),
    "signature byte flipped": (lambda f: flip(f / SIGNATURE_FILE), "the signature does not match"),
    "probe missing": (lambda f: (f / "probe.npz").unlink(), "probe.npz: missing from the release"),
    "file added": (lambda f: (f / "extra.so").write_bytes(b"x"), "files the release does not list: extra.so"),
    "signature removed": (lambda f: (f / SIGNATURE_FILE).unlink(), "the release is not signed"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_release_is_refused_in_one_line(case: str, released: Released, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    change, message = TAMPERED[case]
    folder = copy(folders(released)[0], tmp_path)
    change(folder)
    with pytest.raises(ReleaseError, match=message):
        load(folder, [released.keys / "lab.pub"])
    assert main(["verify", str(folder), "--key", str(released.keys / "lab.pub")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_the_wrong_key_and_no_key_are_refused(released: Released, tmp_path: Path) -> None:
    from edgeship.release import new_key_pair

    _, other = new_key_pair("other", tmp_path)
    folder = folders(released)[0]
    with pytest.raises(ReleaseError, match="does not match release.json with any trusted key"):
        verify(folder, [other])
    with pytest.raises(ReleaseError, match="give the public key"):
        verify(folder, [])
    with pytest.raises(ReleaseError, match="not a PEM public key"):
        verify(folder, [released.keys / "lab.key"])
    assert verify(folder, [other, released.keys / "lab.pub"])["model"] == "tiny"


def test_the_archive_verifies_and_probes_from_the_cli(released: Released, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(released.archives[0]), "--key", str(released.keys / "lab.pub"), "--probe"]) == 0
    out = capsys.readouterr().out
    assert "verified (signed), loaded" in out and "probe pass" in out


def test_the_probe_fails_for_an_engine_that_is_not_the_qualified_one(released: Released, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A correctly signed release whose engine is another model's (re-signed with the right key): it loads, and the probe
    says it is not the engine that was qualified."""
    import onnx
    from onnx import numpy_helper

    folder = copy(next(f for f in folders(released) if f.name.startswith("onnxruntime")), tmp_path)
    document = json.loads((folder / RELEASE_FILE).read_text())
    engine = folder / document["engine"]["main"]
    model = onnx.load(str(engine))
    weights = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    rng = np.random.default_rng(0)
    weights.CopyFrom(numpy_helper.from_array(rng.normal(size=tuple(weights.dims)).astype(np.float32), weights.name))
    onnx.save(model, str(engine))
    document["files"][engine.name] = edgeship_deploy._sha256(engine)
    raw = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    (folder / RELEASE_FILE).write_bytes(raw)
    (folder / SIGNATURE_FILE).write_bytes(sign(released.keys / "lab.key", raw))
    result = load(folder, [released.keys / "lab.pub"]).probe()
    assert not result.passed and any("top-1 agreement" in f or "max abs error" in f for f in result.failures)
    assert main(["verify", str(folder), "--key", str(released.keys / "lab.pub"), "--probe"]) == 1
    assert "probe FAIL" in capsys.readouterr().out


def test_a_runtime_other_than_the_qualified_one_is_a_warning_or_refused(released: Released, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = folders(released)[0]
    monkeypatch.setattr(edgeship_deploy, "_installed", lambda distribution: "0.0.1")
    model = load(folder, [released.keys / "lab.pub"])
    assert model.warnings and "qualified with" in model.warnings[0] and "run probe()" in model.warnings[0]
    with pytest.raises(ReleaseError, match="0.0.1 is installed; the engine was qualified with"):
        load(folder, [released.keys / "lab.pub"], strict_runtime=True)
    monkeypatch.setattr(edgeship_deploy, "_installed", lambda distribution: None)
    with pytest.raises(ReleaseError, match="which is not installed: pip install"):
        load(folder, [released.keys / "lab.pub"])


def test_predict_reads_image_files_with_the_release_preprocessing(released: Released, tmp_path: Path) -> None:
    from PIL import Image

    folder = folders(released)[0]
    model = load(folder, [released.keys / "lab.pub"])
    with np.load(folder / "probe.npz") as probe:
        images, reference = probe["images"][:3], probe["reference"][:3]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    top = model.predict(paths, top_k=1)
    assert [t[0][0] for t in top] == [model.classes[i] for i in reference.argmax(axis=1)]
