"""``edgeship release RUN_DIR``: each chosen engine of a finished run as a release folder and a reproducible archive.

A release folder holds the engine's files exactly as they were measured (copied from the store, their sha256 checked
against the run's), ``probe.npz`` (golden inputs from the evaluation split and the engine's own outputs on them,
measured during validation), ``release.json`` (what a device needs to run the engine correctly, the verdict and
figures it was qualified with, provenance, and every file's sha256) and, with a key, ``release.sig`` (Ed25519 over
the bytes of ``release.json``). The archive beside it packs the folder with sorted entries and fixed times, owners and
modes, so the same run, version and key give byte-identical archives.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from edgeship.artifacts import Manifest, sha256_file
from edgeship.backends import REGISTRY
from edgeship.errors import DataError, EdgeshipError
from edgeship.pipeline.report import load_manifest, load_report
from edgeship.pipeline.run import recipe_dataset
from edgeship.qualification import EngineRow, Report
from edgeship.recipe import Recipe
from edgeship.release.io import RELEASABLE, engine_io
from edgeship.release.keys import load_private_key
from edgeship.release.mender import mender_artifact
from edgeship_deploy import PROBE_FILE, RELEASE_FILE, SCHEMA, SCHEMA_VERSION, SIGNATURE_FILE

PROBE_SAMPLES = 32  # golden inputs per release: the first of the evaluation split
SIDE_FILES = ("artifact.json",)  # the store's own record, not part of the engine


class ReleaseRefused(EdgeshipError):
    """An engine the gates did not pass: refused unless ``--allow-failing`` (exit 1, like a failed release gate)."""

    exit_code = 1


def make_releases(run_dir: Path, *, engines: Sequence[str] = ("recommended",), version: str | None = None, key: Path | None = None,
                  out: Path = Path("releases"), allow_failing: bool = False, mender: Sequence[str] = (), mender_key: Path | None = None,
                  console: Console | None = None) -> list[Path]:
    """Release folders (and their ``.tar.gz`` beside them) under ``out/<model>-<version>/`` for the chosen engines of the
    run in ``run_dir``; returns the archives. Nothing is left half-written: each folder is made aside, then moved.
    ``mender``: device types; each archive also becomes a Mender artifact for them (signed with ``mender_key``)."""
    console = console or Console(quiet=True)
    signer = load_private_key(key) if key is not None else None  # a wrong key file stops the release before anything is written
    report = load_report(run_dir)
    manifest = load_manifest(run_dir)
    if not report.release.finished:
        raise DataError(f"{run_dir}: the run did not finish; release from a finished run")
    if report.task == "generic":  # the device loader preprocesses one image and checks class scores
        raise DataError(f"{run_dir}: a release holds an image classifier for the device loader; this run's model is generic "
                        "(task: generic), which edgeship cannot release yet")
    rows = _chosen(report, engines)
    failing = [row for row in rows if row.verdict != "pass"]
    if failing and not allow_failing:
        raise ReleaseRefused("; ".join(f"{row.name} did not pass its gates ({_failed(row)})" for row in failing)
                             + ": refused (--allow-failing releases it anyway, and says so)")
    recipe = Recipe.model_validate(manifest.recipe)
    version = version or report.run_id.removeprefix(f"{report.recipe}-")  # the run's time stamp
    target = out / f"{report.recipe}-{version}"
    golden = _golden_images(recipe, manifest, console)
    archives = []
    for row in rows:
        folder = target / f"{row.backend}-{row.precision}"
        if folder.exists():
            raise DataError(f"{folder}: already exists; a release is never overwritten (choose another --version or --out)")
        archive = _release(row, report, manifest, recipe, golden, folder, version=version, signer=signer, console=console)
        archives.append(archive)
        if mender:
            artifact = mender_artifact(archive, name=f"{report.recipe}-{version}-{row.backend}-{row.precision}", device_types=mender,
                                       key=mender_key)
            console.print(f"  mender artifact {artifact} for {', '.join(mender)} ({'signed' if mender_key else 'unsigned'})",
                          soft_wrap=True, highlight=False)
    return archives


def _chosen(report: Report, engines: Sequence[str]) -> list[EngineRow]:
    """The engines to release: the recommended engine of each backend (by default), or the named ones; each engine file
    once (a device row names the same file as the host's)."""
    host = {row.name: row for row in report.engines if row.key.device is None}
    names: list[str] = []
    for name in engines:
        if name == "recommended":
            names += [choice.engine for choice in report.recommendations.values() if choice.engine]
            continue
        if name not in host:
            raise DataError(f"--engines {name}: not an engine of run {report.run_id}; its engines are {', '.join(host)}")
        names.append(name)
    names = [name.split("@")[0] for name in names]
    if not names:
        raise ReleaseRefused(f"run {report.run_id}: no engine passed every gate, so none is recommended; name one with --engines "
                             "and --allow-failing to release it anyway")
    rows = [host[name] for name in dict.fromkeys(names)]
    for row in rows:
        if row.status != "ok" or row.path is None:
            raise ReleaseRefused(f"{row.name}: {row.status}: {row.reason or 'not built'}; there is nothing to release")
        if row.backend not in RELEASABLE:
            raise DataError(f"{row.name}: {row.backend} engines cannot be released yet (the device loader runs "
                            f"{', '.join(RELEASABLE)}); name the others with --engines")
    return rows


def _failed(row: EngineRow) -> str:
    failed = [gate.gate for gate in row.gates if gate.outcome == "fail"]
    return ("fails " + ", ".join(failed)) if failed else f"{row.status}: {row.reason or row.verdict}"


def _golden_images(recipe: Recipe, manifest: Manifest, console: Console) -> np.ndarray:
    """The first evaluation images of the run's data, reloaded and checked against the run's fingerprint."""
    dataset = recipe_dataset(recipe, console)
    wanted = (manifest.dataset or {}).get("fingerprint")
    if dataset.fingerprint != wanted:
        raise DataError(f"{recipe.data.root}: the data is not the run's any more (fingerprint {dataset.fingerprint[:12]} vs "
                        f"{str(wanted)[:12]}); release from a run on this data")
    return np.ascontiguousarray(dataset.eval.images[:PROBE_SAMPLES])


def _release(row: EngineRow, report: Report, manifest: Manifest, recipe: Recipe, golden: np.ndarray, folder: Path, *, version: str,
             signer: Any, console: Console) -> Path:
    engine = Path(str(row.path))
    if sha256_file(engine) != row.sha256:
        raise DataError(f"{engine}: its sha256 is not the measured engine's any more; rebuild it with `edgeship run`")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".release-") as scratch:
        work = Path(scratch) / folder.name
        work.mkdir()
        files = {}
        for source in sorted(engine.parent.iterdir()):
            if source.is_file() and source.name not in SIDE_FILES:
                shutil.copyfile(source, work / source.name)
                files[source.name] = sha256_file(work / source.name)
        reference = _reference(row, manifest)[: len(golden)]
        _write_npz(work / PROBE_FILE, images=golden, reference=reference)
        files[PROBE_FILE] = sha256_file(work / PROBE_FILE)
        document = _document(row, report, manifest, recipe, reference, files, engine.name, version=version, signed=signer is not None)
        raw = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
        (work / RELEASE_FILE).write_bytes(raw)
        if signer is not None:
            (work / SIGNATURE_FILE).write_bytes(signer.sign(raw))
        archive = folder.with_name(folder.name + ".tar.gz")
        _archive(work, archive.with_name(archive.name + ".part"))
        work.rename(folder)
        archive.with_name(archive.name + ".part").rename(archive)
    console.print(f"release {row.name}: {folder} ({'signed' if signer is not None else 'UNSIGNED'}"
                  + (", [bold red]NOT PASSING its gates[/bold red]" if row.verdict != "pass" else "") + f") → {archive.name}",
                  soft_wrap=True, highlight=False)
    return archive


def _reference(row: EngineRow, manifest: Manifest) -> np.ndarray:
    """The engine's own outputs on the evaluation split, as its validation measured them."""
    entry = next((e for e in manifest.entries if e.stage == "validate" and e.name == row.name and e.status == "ok"), None)
    path = Path(str(entry.path)).parent / "logits.npy" if entry and entry.path else None
    if path is None or not path.is_file():
        raise DataError(f"{row.name}: the run's validation outputs are gone from the store ({path}); rerun `edgeship run`")
    return np.load(path).astype(np.float32)


def probe_limits(row: EngineRow, reference: np.ndarray, gates: dict[str, Any]) -> dict[str, Any]:
    """What the probe on a device must meet, from what was measured here.

    The same engine on another CPU differs from its outputs here only by floating-point order and kernel choice, far
    less than quantization moved it from FP32: the error limit is a quarter of the engine's measured max abs error
    against FP32 on the evaluation split, and never below 1e-3 of the largest reference logit (an FP32 engine's own
    error is near zero). A golden input may change its top-1 only when its reference top-2 margin is within twice
    that limit (a near tie); one more change is allowed. The latency budget is the recipe's p99 limit, when it set one.
    """
    scale = float(np.abs(reference).max()) if reference.size else 1.0
    max_error = max(0.25 * (row.max_abs_error or 0.0), 1e-3 * scale)
    top2 = np.sort(reference, axis=1)[:, -2:]
    ties = int(((top2[:, 1] - top2[:, 0]) <= 2 * max_error).sum())
    return {"samples": len(reference), "max_abs_error": max_error, "near_ties": ties,
            "min_agreement": max(0.0, (len(reference) - ties - 1) / len(reference)) if len(reference) else 1.0,
            "max_p50_ms": gates.get("max_p99_ms"), "qualified_p50_ms": (row.latency or {}).get("p50_ms")}


def _document(row: EngineRow, report: Report, manifest: Manifest, recipe: Recipe, reference: np.ndarray, files: dict[str, str],
              main: str, *, version: str, signed: bool) -> dict[str, Any]:
    info = REGISTRY[row.backend]
    model = next((e for e in manifest.entries if e.stage == "model" and e.status == "ok"), None)
    classes = _artifact_meta(Path(str(model.path))).get("classes") if model else None
    distribution = info.distributions[0]
    built = _artifact_meta(Path(str(row.path)))
    on_devices = [other for other in report.engines if other.key.engine == row.key.engine and other.key.device is not None]
    devices = [{"device": other.key.device, **(report.devices.get(str(other.key.device)) or {}), "verdict": other.verdict}
               for other in on_devices]
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "model": report.recipe, "version": version,
        "released_from": report.run_id, "created": report.created,
        "verdict": row.verdict, "passed": row.verdict == "pass",
        "engine": {"backend": row.backend, "precision": row.precision, "main": main, "sha256": row.sha256},
        "runtime": {"distribution": distribution, "version": (built.get("versions") or {}).get(distribution)},
        "threads": report.threads,
        "qualified_on": {"host": report.device, "devices": devices},
        "io": engine_io(row.backend, Path(str(row.path))),
        "preprocessing": {**recipe.data.preprocessing.model_dump(mode="json"), "layout": "NCHW", "dtype": "float32",
                          "input": "uint8 images (N, H, W[, C])"},
        "classes": classes,
        "gates": {"limits": report.gates, "results": [gate.model_dump(mode="json") for gate in row.gates]},
        "measured": {"accuracy": report.accuracy, "eval_samples": row.eval_samples, "top1": row.top1, "top1_agreement": row.top1_agreement,
                     "top5_agreement": row.top5_agreement, "max_abs_error": row.max_abs_error, "latency": row.latency,
                     "size_bytes": row.size_bytes, "peak_rss_bytes": (row.memory or {}).get("peak_rss_bytes")},
        "probe": {"file": PROBE_FILE, "images": "the first evaluation images of the run's data, raw",
                  "reference": "this engine's outputs on them, measured during validation",
                  "limits": probe_limits(row, reference, report.gates)},
        "provenance": {"recipe_sha256": hashlib.sha256(json.dumps(manifest.recipe, sort_keys=True).encode()).hexdigest(),
                       "calibration": manifest.calibration, "dataset": manifest.dataset, "report_sha256": _report_sha256(manifest),
                       "edgeship": report.edgeship, "source": report.source,
                       "artifacts": {f"{a['stage']} {a['name']}": a["sha256"] for a in report.artifacts}},
        "signed": signed,
        "files": files,
    }


def _artifact_meta(main_file: Path) -> dict[str, Any]:
    """The store's record of the artifact whose main file this is (its ``meta``), or nothing when it has none."""
    record = main_file.parent / "artifact.json"
    return json.loads(record.read_text()).get("meta", {}) if record.is_file() else {}


def _report_sha256(manifest: Manifest) -> str | None:
    entry = next((e for e in manifest.entries if e.stage == "report" and e.name == "report.json"), None)
    return entry.sha256 if entry else None


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """An uncompressed ``.npz`` whose bytes depend on the arrays alone (``np.savez`` stamps the zip entries' times)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, buffer.getvalue())


def _archive(folder: Path, target: Path) -> None:
    """``folder`` as a ``.tar.gz`` whose bytes depend on the files alone: sorted entries, mtime 0, owner 0, fixed modes."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    with target.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(folder, arcname=folder.name, recursive=False, filter=clean)
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"{folder.name}/{path.name}", recursive=False, filter=clean)


__all__ = ["PROBE_SAMPLES", "ReleaseRefused", "make_releases", "probe_limits"]
