from __future__ import annotations

from pathlib import Path

import pytest

from edgeship.artifacts import ArtifactStore, Manifest, ManifestEntry, artifact_id, sha256_file, write_atomic


def make(store: ArtifactStore, aid: str, payload: bytes = b"engine bytes") -> object:
    with store.staging(aid) as folder:
        (folder / "model.bin").write_bytes(payload)
        return store.commit(folder, aid=aid, kind="engine/test", stage="build", main_file=folder / "model.bin",
                            parents=("p1",), meta={"metrics": {"x": 1}})


def test_commit_then_get_returns_the_same_verified_artifact(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    aid = artifact_id("build", {"a": 1}, ["in"])
    made = make(store, aid)
    found = store.get(aid)
    assert found == made
    assert found.path.read_bytes() == b"engine bytes"
    assert found.sha256 == sha256_file(found.path)
    assert not any((tmp_path / "tmp").iterdir()), "staging folders must not be left behind"


def test_ids_depend_on_stage_config_and_inputs() -> None:
    base = artifact_id("build", {"a": 1}, ["x"])
    assert base == artifact_id("build", {"a": 1}, ["x"])
    assert len({base, artifact_id("export", {"a": 1}, ["x"]), artifact_id("build", {"a": 2}, ["x"]),
                artifact_id("build", {"a": 1}, ["y"])}) == 4


def test_tampered_or_truncated_artifact_is_not_reused_and_says_why(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    made = make(store, "ab" * 16)
    assert store.lookup("ab" * 16) == (made, None)
    made.path.write_bytes(b"engine bytez")  # same size, other content
    assert store.get("ab" * 16) is None
    assert store.lookup("ab" * 16) == (None, "model.bin does not match its recorded sha256")
    made.path.write_bytes(b"engine")
    assert store.lookup("ab" * 16) == (None, "model.bin is 6 bytes, 12 recorded")
    made.path.unlink()
    assert store.lookup("ab" * 16) == (None, "model.bin is missing")
    (made.folder / "artifact.json").write_text("{not json")
    assert store.lookup("ab" * 16) == (None, "its record artifact.json is unreadable")
    assert store.lookup("cd" * 16) == (None, None)


def test_lock_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    import multiprocessing

    store = ArtifactStore(tmp_path)
    waited: list[bool] = []
    context = multiprocessing.get_context("spawn")
    with store.lock("ab" * 16):
        other = context.Process(target=_hold_lock_then_write, args=(tmp_path, "ab" * 16))
        other.start()
        other.join(timeout=2)
        assert other.is_alive(), "the other process got the lock while this one held it"
        assert not (tmp_path / "held").exists()
    other.join(timeout=30)
    assert other.exitcode == 0 and (tmp_path / "held").read_text() == "ok"
    with store.lock("ab" * 16, waiting=lambda: waited.append(True)):
        pass
    assert waited == []


def _hold_lock_then_write(root: Path, aid: str) -> None:
    with ArtifactStore(root).lock(aid):
        (root / "held").write_text("ok")


def test_failed_build_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError), store.staging("cd" * 16) as folder:
        (folder / "model.bin").write_bytes(b"half")
        raise RuntimeError("killed")
    assert store.get("cd" * 16) is None
    assert not store.folder("cd" * 16).exists()
    assert not any((tmp_path / "tmp").iterdir())


def test_commit_replaces_an_incomplete_folder(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    stale = store.folder("ef" * 16)
    stale.mkdir(parents=True)
    (stale / "model.bin").write_bytes(b"partial")
    make(store, "ef" * 16, b"complete")
    assert store.get("ef" * 16).path.read_bytes() == b"complete"


def test_write_atomic_replaces_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.json"
    write_atomic(target, "one")
    write_atomic(target, b"two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_manifest_round_trip_and_replacing_entries(tmp_path: Path) -> None:
    manifest = Manifest(run_id="r1", recipe={"name": "x"})
    manifest.add(ManifestEntry(stage="build", name="ort/int8", status="failed", reason="boom"))
    manifest.add(ManifestEntry(stage="build", name="ort/int8", status="ok"))
    manifest.save(tmp_path / "manifest.json")
    loaded = Manifest.model_validate_json((tmp_path / "manifest.json").read_text())
    assert [(e.name, e.status) for e in loaded.entries] == [("ort/int8", "ok")]


def test_a_copied_store_finds_its_artifacts_in_their_new_place(tmp_path: Path) -> None:
    import shutil

    made = make(ArtifactStore(tmp_path / "a"), "ab" * 16)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "a" / "ab" / ("ab" * 16) / "model.bin").write_bytes(b"the original, edited")
    found = ArtifactStore(tmp_path / "b").get("ab" * 16)
    assert found is not None and found.path == tmp_path / "b" / "ab" / ("ab" * 16) / "model.bin"
    assert found.sha256 == made.sha256


def test_a_record_made_under_a_relative_store_is_read_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make run` keeps its store at `.edgeship/store`, so its records hold paths relative to the folder it ran in; a
    sweep's Ray workers, the harness and a later run elsewhere read them from other folders."""
    from edgeship.artifacts import Artifact

    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    made = make(ArtifactStore(Path(".edgeship/store")), "ab" * 16)
    assert not made.path.is_absolute()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    record = tmp_path / "project" / ".edgeship" / "store" / "ab" / ("ab" * 16) / "artifact.json"
    read = Artifact.read(record)
    assert read.path == record.parent / "model.bin" and read.verify() is None
    assert ArtifactStore(tmp_path / "project" / ".edgeship" / "store").get("ab" * 16) == read
    record.write_text(record.read_text().replace("ab" * 16, "cd" * 16, 1))  # its id field only
    with pytest.raises(ValueError, match="names a file outside the artifact"):
        Artifact.read(record)


def test_a_killed_runs_spilled_samples_are_removed_and_a_live_runs_are_left_alone(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from edgeship.artifacts import remove_dead_spills, spill_prefix

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"build-samples-{gone.stdout.strip()}-abc").mkdir()
        (tmp_path / f"build-samples-{gone.stdout.strip()}-abc" / "calibration.npy").write_bytes(b"x")
        (tmp_path / f"crops-{gone.stdout.strip()}-def.npy").write_bytes(b"x")
        (tmp_path / f"build-samples-{live.pid}-ghi").mkdir()
        (tmp_path / f"{spill_prefix('build-samples')}jkl").mkdir()
        (tmp_path / "build-samples-notapid").mkdir()
        remove_dead_spills(tmp_path, "build-samples")
        remove_dead_spills(tmp_path, "crops")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f"build-samples-{live.pid}-ghi", f"build-samples-{os.getpid()}-jkl", "build-samples-notapid"])
    finally:
        live.kill()
        live.wait()
