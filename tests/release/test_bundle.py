"""``edgeship release``: what a release holds, that it is reproducible and signed, and what it refuses."""

from __future__ import annotations

import json
import os
import re
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgeship.artifacts import sha256_file
from edgeship.cli import main
from edgeship.release import make_releases
from edgeship_deploy import PROBE_FILE, RELEASE_FILE, SIGNATURE_FILE, verify

from conftest import Released

pytestmark = pytest.mark.slow


def folder_of(archive: Path) -> Path:
    return archive.with_name(archive.name.removesuffix(".tar.gz"))


def test_a_release_holds_the_measured_engine_and_what_a_device_needs(released: Released) -> None:
    report = json.loads((released.run_dir / "report.json").read_text())
    rows = {row["name"]: row for row in report["engines"]}
    for archive in released.archives:
        folder = folder_of(archive)
        document = verify(folder, [released.keys / "lab.pub"])
        name = f"{document['engine']['backend']}/{document['engine']['precision']}"
        row = rows[name]
        assert (folder / document["engine"]["main"]).read_bytes() == Path(row["path"]).read_bytes(), "the measured bytes"
        assert document["engine"]["sha256"] == row["sha256"] and document["verdict"] == "pass" and document["version"] == "1.0.0"
        assert document["runtime"]["version"], document["runtime"]
        assert document["classes"][:2] == ["T-shirt/top", "Trouser"] and document["preprocessing"]["mean"] == [0.286]
        assert document["measured"]["latency"]["p50_ms"] == row["latency"]["p50_ms"]
        assert [g["gate"] for g in document["gates"]["results"]] == [g["gate"] for g in row["gates"]]
        assert document["qualified_on"]["host"]["cpu"] and document["provenance"]["report_sha256"]
        assert set(document["files"]) == {p.name for p in folder.iterdir()} - {RELEASE_FILE, SIGNATURE_FILE}
        (source,) = document["io"]["inputs"]
        assert source["shape"][1:] == [1, 28, 28] or source["shape"][1:] == [28, 28, 1]
        with np.load(folder / PROBE_FILE) as probe:
            assert probe["images"].shape == (32, 28, 28) and probe["images"].dtype == np.uint8
            assert probe["reference"].shape == (32, 10)
        limits = document["probe"]["limits"]
        assert limits["max_abs_error"] >= 0.25 * row["max_abs_error"] and limits["samples"] == 32
        assert limits["min_agreement"] == (32 - limits["near_ties"] - 1) / 32
    tflite = json.loads((folder_of(next(a for a in released.archives if "tflite" in a.name)) / RELEASE_FILE).read_text())
    (source,) = tflite["io"]["inputs"]
    assert source["layout"] == "NHWC" and source["dtype"] == "int8" and set(source["quantization"]) == {"scale", "zero_point"}


def test_two_releases_of_a_run_are_byte_identical_archives(released: Released, tmp_path: Path) -> None:
    again = make_releases(released.run_dir, engines=["onnxruntime/fp32", "openvino/int8", "tflite/int8"], version="1.0.0",
                          key=released.keys / "lab.key", out=tmp_path)
    assert [sha256_file(a) for a in again] == [sha256_file(a) for a in released.archives]
    with tarfile.open(again[0]) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}


def test_keys_are_made_once_and_private_to_their_owner(released: Released, capsys: pytest.CaptureFixture[str]) -> None:
    assert stat.S_IMODE(os.stat(released.keys / "lab.key").st_mode) == 0o600
    assert main(["keys", "new", "lab", "--out", str(released.keys)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_the_cli_releases_the_recommended_engines_unsigned_by_default(released: Released, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["release", str(released.run_dir), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads((released.run_dir / "report.json").read_text())
    recommended = {choice["engine"] for choice in report["recommendations"].values() if choice["engine"]}
    made = {p.name for p in tmp_path.glob("*/*.tar.gz")}
    assert made == {name.replace("/", "-") + ".tar.gz" for name in recommended} and "unsigned" in out
    folder = next(p for p in tmp_path.glob("*/*") if p.is_dir())
    assert not (folder / SIGNATURE_FILE).exists() and json.loads((folder / RELEASE_FILE).read_text())["signed"] is False


BAD = {
    "missing run folder": (lambda r, t: ["release", str(t / "nowhere")], 2, r"nowhere: no report here"),
    "unknown engine": (lambda r, t: ["release", str(r.run_dir), "--engines", "openvino/fp64"], 2,
                       r"--engines openvino/fp64: not an engine"),
    "wrong key file": (lambda r, t: ["release", str(r.run_dir), "--key", str(r.keys / "lab.pub")], 2,
                       r"lab\.pub: not an unencrypted PEM private key"),
    "failing engine": (lambda r, t: ["release", str(r.run_dir), "--engines", "tflite/int8"], None, None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_release_requests_are_one_line_and_write_nothing(case: str, released: Released, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    argv, code, pattern = BAD[case]
    if code is None:  # make a run whose engine fails: the same run judged against a gate it cannot meet
        run_dir = tmp_path / "strict"
        run_dir.mkdir()
        manifest = json.loads((released.run_dir / "manifest.json").read_text())
        manifest["recipe"]["gates"]["max_size_mib"] = 1e-6
        (run_dir / "manifest.json").write_text(json.dumps(manifest))
        assert main(["report", str(run_dir)]) == 1
        capsys.readouterr()
        assert main(["release", str(run_dir), "--out", str(tmp_path / "out")]) == 1  # nothing passed, so nothing is recommended
        err = capsys.readouterr().err.strip()
        assert "no engine passed every gate, so none is recommended" in err and len(err.splitlines()) == 1, err
        assert main(["release", str(run_dir), "--engines", "tflite/int8", "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip()
        assert re.search(r"tflite/int8 did not pass its gates \(fails max_size_mib\).*--allow-failing", err), err
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.tar.gz"))
        assert main(["release", str(run_dir), "--engines", "tflite/int8", "--out", str(tmp_path / "out"), "--allow-failing"]) == 0
        assert "NOT PASSING" in capsys.readouterr().out
        return
    assert main([*argv(released, tmp_path), "--out", str(tmp_path / "out")]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))
