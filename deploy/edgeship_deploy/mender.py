"""The Mender Update Module ``edgeship-model``: installs a release only if it verifies and its probe passes, and keeps
the release it replaces until the new one is committed.

Mender (3.x, Update Modules protocol v3) calls the module as ``edgeship-model STATE TREE``; ``TREE/files/`` holds the
payload, one release archive. The models folder holds ``<name>/<version>/`` per installed release and
``<name>/current``, a link to the one applications load (``<models>/<name>/current``):

- ``ArtifactInstall``: unpack the archive aside, verify its signature (trusted keys) and every sha256, load it and run
  its acceptance probe; any failure exits non-zero, which makes Mender roll back. On success the release moves to
  ``<name>/<version>/`` and ``.pending.json`` records it; ``current`` is not touched yet.
- ``ArtifactCommit``: ``current`` switches to the new version atomically (a new link renamed over the old), and
  ``previous`` keeps the one it replaced.
- ``ArtifactRollback``: the pending version is removed unless it is current; if a commit had switched ``current``,
  it goes back to ``previous``. ``SupportsRollback`` answers Yes, ``NeedsArtifactReboot`` No.

A client killed mid-install leaves ``current`` as it was: nothing before ``ArtifactCommit`` touches it, and an
unfinished unpack is removed by the next install.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from edgeship_deploy import ReleaseError, load
from edgeship_deploy.__main__ import unpack

PENDING = ".pending.json"
MODULE_NAME = "edgeship-model"
MODULE = """#!{python}
# The Mender Update Module for edgeship releases (written by `edgeship-deploy install-mender-module`).
import sys
from edgeship_deploy.mender import main
sys.exit(main(sys.argv[1:], models={models!r}, keys={keys!r}, allow_unsigned={allow_unsigned!r}))
"""


def main(argv: list[str], *, models: str, keys: list[str], allow_unsigned: bool = False) -> int:
    state = argv[0] if argv else ""
    tree = Path(argv[1]) if len(argv) > 1 else Path(".")
    root = Path(models)
    if state == "SupportsRollback":
        print("Yes")
        return 0
    if state == "NeedsArtifactReboot":
        print("No")
        return 0
    try:
        if state == "ArtifactInstall":
            return install(tree, root, [Path(k) for k in keys], allow_unsigned=allow_unsigned)
        if state == "ArtifactCommit":
            return commit(root)
        if state == "ArtifactRollback":
            return rollback(root)
    except (ReleaseError, OSError) as exc:
        print(f"{MODULE_NAME}: {state} failed: {exc}", file=sys.stderr)
        return 1
    return 0  # Download (files stored by the client), Cleanup, ArtifactFailure and the rest need nothing


def install(tree: Path, root: Path, keys: list[Path], *, allow_unsigned: bool = False) -> int:
    archives = sorted((tree / "files").glob("*.tar.gz"))
    if len(archives) != 1:
        raise ReleaseError(f"{tree / 'files'}: expected one release archive, found {len(archives)}")
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".unpack-*"):  # an install killed before it finished
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=".unpack-"))
    try:
        folder = unpack(archives[0], work)
        model = load(folder, keys, allow_unsigned=allow_unsigned)
        result = model.probe()
        print(f"{MODULE_NAME}: {model.document['model']} {model.document['version']}: {result.describe()}")
        for warning in model.warnings:
            print(f"{MODULE_NAME}: warning: {warning}")
        if not result.passed:
            return 1
        name, version = _name(model.document["model"]), _name(model.document["version"])
        target = root / name / version
        if _current(root / name) == version:
            raise ReleaseError(f"{target}: this version is already current")
        if target.exists():  # a version installed before but never committed
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(target)
        _write(root / PENDING, json.dumps({"name": name, "version": version}))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def commit(root: Path) -> int:
    pending = _pending(root)
    if pending is None:
        return 0
    folder = root / pending["name"]
    old = _current(folder)
    if old is not None and old != pending["version"]:
        _link(folder / "previous", old)
    _link(folder / "current", pending["version"])
    (root / PENDING).unlink()
    return 0


def rollback(root: Path) -> int:
    pending = _pending(root)
    if pending is None:
        print(f"{MODULE_NAME}: rolled back: nothing was installed, every current release stays")
        return 0
    folder = root / pending["name"]
    if _current(folder) == pending["version"]:  # a commit got as far as switching: back to the release it replaced
        previous = _current(folder, "previous")
        if previous is not None:
            _link(folder / "current", previous)
        else:
            (folder / "current").unlink()
    shutil.rmtree(folder / pending["version"], ignore_errors=True)
    (root / PENDING).unlink()
    print(f"{MODULE_NAME}: rolled back: removed {pending['name']} {pending['version']}; current is {_current(folder)}")
    return 0


def install_module(modules: Path, *, models: Path, keys: list[Path], python: str = sys.executable,
                   allow_unsigned: bool = False) -> Path:
    """Write the Update Module into Mender's modules folder (``/usr/share/mender/modules/v3`` on a device)."""
    for key in keys:
        if not key.is_file():
            raise ReleaseError(f"{key}: no such public key")
    modules.mkdir(parents=True, exist_ok=True)
    target = modules / MODULE_NAME
    _write(target, MODULE.format(python=python, models=str(models.resolve()), keys=[str(k.resolve()) for k in keys],
                                 allow_unsigned=allow_unsigned))
    target.chmod(0o755)
    return target


def _name(text: str) -> str:
    if not text or "/" in text or text.startswith("."):
        raise ReleaseError(f"{text!r}: not usable as a folder name")
    return text


def _current(folder: Path, link: str = "current") -> str | None:
    path = folder / link
    return os.readlink(path) if path.is_symlink() else None


def _link(path: Path, target: str) -> None:
    """``path`` → ``target``, switched atomically: a new link renamed over the old one."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, path)


def _pending(root: Path) -> dict[str, str] | None:
    path = root / PENDING
    return json.loads(path.read_text()) if path.is_file() else None


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


__all__ = ["MODULE_NAME", "commit", "install", "install_module", "main", "rollback"]
