"""Rollout through the real Mender client (3.x, standalone mode) with the edgeship-model Update Module.

Everything runs in a private mount namespace (``unshare -m``): temporary folders are bind-mounted over
``/usr/share/mender/modules/v3`` (the only place the 3.x client reads Update Modules from) and ``/etc/mender``, so the
machine's own folders are never touched. Cases: v1 installs, probes and commits; v2 with one flipped engine byte is
refused and v1 stays current; v3, a correctly signed release whose engine is another model's, fails its probe and rolls
back to v1; v4 killed with SIGKILL mid-install leaves v1 current, and installing it again succeeds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeship.release.bundle import _archive
from edgeship.release.keys import sign
from edgeship.release.mender import mender_artifact
from edgeship_deploy import RELEASE_FILE, SIGNATURE_FILE, _sha256
from edgeship_deploy.mender import install_module

from conftest import Released

pytestmark = pytest.mark.slow


def mender_ready() -> str:
    """Why this machine cannot run the test, or ''."""
    if os.geteuid() != 0:
        return "needs root for a private mount namespace (unshare -m) and bind mounts"
    for tool in ("mender", "mender-artifact", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool}: sudo apt-get install mender-client mender-artifact"
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        return "this machine allows no new mount namespace"
    return ""


def version_of(source: Path, version: str, work: Path, key: Path, *, change: str = "") -> Path:
    """``source`` (a release folder) as another version, re-signed and packed; ``change``: "flip" one engine byte after
    signing (the release no longer matches itself), "other-model" another model's weights in the engine, signed."""
    folder = work / source.name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder)
    document = json.loads((folder / RELEASE_FILE).read_text())
    document["version"] = version
    engine = folder / document["engine"]["main"]
    if change == "other-model":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(engine))
        weights = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        weights.CopyFrom(numpy_helper.from_array(np.random.default_rng(1).normal(size=tuple(weights.dims)).astype(np.float32),
                                                 weights.name))
        onnx.save(model, str(engine))
        document["files"][engine.name] = _sha256(engine)
    raw = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    (folder / RELEASE_FILE).write_bytes(raw)
    (folder / SIGNATURE_FILE).write_bytes(sign(key, raw))
    if change == "flip":
        data = bytearray(engine.read_bytes())
        data[100] ^= 1
        engine.write_bytes(bytes(data))
    archive = work / f"v{version}" / f"{source.name}.tar.gz"
    archive.parent.mkdir(parents=True, exist_ok=True)
    _archive(folder, archive)
    return archive


DRIVER = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time
    from pathlib import Path
    t = Path(sys.argv[1]); artifacts = json.loads(sys.argv[2]); out = {}
    for source, target in ((t / "modules", "/usr/share/mender/modules/v3"), (t / "etc", "/etc/mender")):
        os.makedirs(target, exist_ok=True)
        subprocess.run(["mount", "--bind", str(source), target], check=True)
    mender = ["mender", "--no-syslog", "-c", "/etc/mender/mender.conf", "-d", str(t / "data")]
    models = t / "models" / "tiny"
    def current():
        link = models / "current"
        return os.readlink(link) if link.is_symlink() else None
    def step(name, *argv):
        done = subprocess.run([*mender, *argv], capture_output=True, text=True, timeout=600)
        out[name] = {"code": done.returncode, "output": done.stdout + done.stderr, "current": current()}
    step("v1 install", "install", artifacts["1"]); step("v1 commit", "commit")
    step("v2 install", "install", artifacts["2"])
    step("v3 install", "install", artifacts["3"])
    child = subprocess.Popen([*mender, "install", artifacts["4"]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((t / "models").glob(".unpack-*/*")):
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    out["v4 killed"] = {"code": child.returncode, "current": current(), "versions": sorted(p.name for p in models.iterdir())}
    step("v4 again", "install", artifacts["4"])
    if out["v4 again"]["code"] != 0:  # the killed install left the client's own update in progress: roll it back first
        step("v4 rollback of the killed install", "rollback")
        step("v4 again", "install", artifacts["4"])
    step("v4 commit", "commit")
    out["final"] = {"current": current(), "previous": os.readlink(models / "previous") if (models / "previous").is_symlink() else None,
                    "versions": sorted(p.name for p in models.iterdir())}
    print(json.dumps(out))
""")


def test_rollout_through_mender_installs_refuses_rolls_back_and_survives_a_kill(released: Released, tmp_path: Path) -> None:
    why = mender_ready()
    if why:
        pytest.skip(why)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    for folder in ("modules", "etc", "data", "models", "work"):
        (tmp_path / folder).mkdir()
    mender_key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.PrivateFormat.TraditionalOpenSSL  # the form mender-artifact reads
    (tmp_path / "mender.key").write_bytes(mender_key.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption()))
    (tmp_path / "mender.pub").write_bytes(mender_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "etc" / "artifact_info").write_text("artifact_name=factory\n")
    (tmp_path / "data" / "device_type").write_text("device_type=edge-cpu\n")
    (tmp_path / "etc" / "mender.conf").write_text(json.dumps({"ModulesWorkPath": str(tmp_path / "data" / "modules" / "v3"),
                                                              "DeviceTypeFile": str(tmp_path / "data" / "device_type"),
                                                              "ArtifactVerifyKey": str(tmp_path / "mender.pub")}))
    install_module(tmp_path / "modules", models=tmp_path / "models", keys=[released.keys / "lab.pub"], python=sys.executable)
    source = next(a for a in released.archives if a.name.startswith("onnxruntime"))
    folder = source.with_name(source.name.removesuffix(".tar.gz"))
    key = released.keys / "lab.key"
    work = tmp_path / "work"
    archives = {"1": version_of(folder, "1", work, key), "2": version_of(folder, "2", work, key, change="flip"),
                "3": version_of(folder, "3", work, key, change="other-model"), "4": version_of(folder, "4", work, key)}
    artifacts = {v: str(mender_artifact(a, name=f"tiny-{v}", device_types=["edge-cpu"], key=tmp_path / "mender.key"))
                 for v, a in archives.items()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(["unshare", "-m", sys.executable, "-c", DRIVER, str(tmp_path), json.dumps(artifacts)], capture_output=True,
                          text=True, timeout=1800, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "output"} for k, v in out.items()}, indent=1))
    for name, step in out.items():
        print(f"--- {name}\n{step.get('output', '')[-1500:]}")
    assert out["v1 install"]["code"] == 0 and "probe pass" in out["v1 install"]["output"]
    assert out["v1 commit"]["code"] == 0 and out["v1 commit"]["current"] == "1"
    assert out["v2 install"]["code"] != 0 and "its sha256 differs" in out["v2 install"]["output"] and out["v2 install"]["current"] == "1"
    assert out["v3 install"]["code"] != 0 and "probe FAIL" in out["v3 install"]["output"] and out["v3 install"]["current"] == "1"
    for refused in ("v2 install", "v3 install"):  # the client rolled back through the module
        assert "edgeship-model: rolled back" in out[refused]["output"], out[refused]["output"][-2000:]
    assert out["v4 killed"]["current"] == "1" and "2" not in out["v4 killed"]["versions"] and "3" not in out["v4 killed"]["versions"]
    assert out["v4 again"]["code"] == 0 and out["v4 commit"]["code"] == 0
    assert out["final"]["current"] == "4" and out["final"]["previous"] == "1"
    assert Path("/usr/share/mender/modules/v3/edgeship-model").exists() is False, "the machine's own modules folder is untouched"
