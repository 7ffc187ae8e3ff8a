"""RunContext.produce and the manifest from several threads: what a fan-out of builds and measurements needs."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console

from edgeship.artifacts import ArtifactStore, Manifest, ManifestEntry
from edgeship.data import load_dataset
from edgeship.pipeline.base import Made, RunContext

from conftest import tiny_recipe

THREADS = 8


def _context(tmp_path: Path) -> RunContext:
    recipe = tiny_recipe(tmp_path, data={"dataset": "digits", "train_size": 100, "val_size": 50, "eval_size": 50})
    dataset = load_dataset(recipe.data, recipe.calibration, seed=0, notice=lambda _: None)
    (tmp_path / "run").mkdir()
    return RunContext(recipe=recipe, store=ArtifactStore(tmp_path / "store"), manifest=Manifest(run_id="t", recipe={}),
                      run_dir=tmp_path / "run", console=Console(quiet=True), dataset=dataset)


def test_manifest_add_from_many_threads_loses_no_entry() -> None:
    manifest = Manifest(run_id="t", recipe={})
    barrier = threading.Barrier(THREADS)

    def add(worker: int) -> None:
        barrier.wait()
        for n in range(200):
            manifest.add(ManifestEntry(stage="build", name=f"{worker}/{n}", status="ok"))
            manifest.add(ManifestEntry(stage="build", name=f"{worker}/{n}", status="failed", reason="replaced"))

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(add, range(THREADS)))
    names = [entry.name for entry in manifest.entries]
    assert len(names) == len(set(names)) == THREADS * 200
    assert all(entry.status == "failed" for entry in manifest.entries), "the second add of a name replaces the first"


def test_produce_from_many_threads_builds_each_artifact_once(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    built: list[str] = []
    lock = threading.Lock()

    def make_one(key: str) -> object:
        def make(folder: Path) -> Made:
            with lock:
                built.append(key)
            time.sleep(0.05)  # long enough for the others to ask for the same artifact meanwhile
            (folder / "out.txt").write_text(key)
            return Made(folder / "out.txt", "test", {"key": key})

        artifact = ctx.produce("build", f"engine/{key}", config={"key": key}, parents=[], make=make)
        ctx.save_manifest()
        return artifact

    keys = [f"k{n % 4}" for n in range(THREADS * 2)]  # four artifacts, each asked for by four threads at once
    with ThreadPoolExecutor(THREADS) as pool:
        artifacts = list(pool.map(make_one, keys))
    assert sorted(built) == ["k0", "k1", "k2", "k3"], "each artifact is built by exactly one thread"
    assert {a.path.read_text() for a in artifacts} == {"k0", "k1", "k2", "k3"}  # type: ignore[attr-defined]
    assert sorted(e.name for e in ctx.manifest.entries) == [f"engine/k{n}" for n in range(4)]
    saved = Manifest.model_validate_json(ctx.manifest_path.read_text())
    assert len(saved.entries) == 4
