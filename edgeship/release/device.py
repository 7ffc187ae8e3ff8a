"""``edgeship release verify RELEASE --device NAME``: a release's acceptance probe run on a lab device by its edgeship
agent, before the release goes to a fleet. The device verifies the signature and every file with the device loader
(``edgeship_deploy``), loads the engine on its own runtime and probes it, exactly as a device in the field would."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeship.agent.client import AgentClient, AgentError
from edgeship.agent.protocol import EngineRef, ProbeRequest
from edgeship.artifacts import sha256_file
from edgeship.errors import DataError, RecipeError
from edgeship.recipe import Recipe
from edgeship_deploy import RELEASE_FILE, ReleaseError
from edgeship_deploy.__main__ import unpack


def verify_on_device(release: Path, recipe: Recipe, device_name: str, keys: list[Path], *, allow_unsigned: bool = False) -> dict[str, Any]:
    """The probe's result on the recipe's device ``device_name``: ``{"passed", "exit_code", "lines"}``."""
    device = next((d for d in recipe.devices if d.name == device_name), None)
    if device is None:
        raise RecipeError(f"--device {device_name}: not a device of the recipe (its devices: "
                          f"{', '.join(d.name for d in recipe.devices) or 'none'})")
    token = os.environ.get(device.token_env)
    if not token:
        raise RecipeError(f"--device {device_name}: the environment variable {device.token_env} (the agent's token) is not set")
    trusted = []
    for key in keys:
        try:
            trusted.append(key.read_text())
        except OSError as exc:
            raise DataError(f"{key}: cannot read the public key: {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="edgeship-release-") as scratch:
        try:
            folder = unpack(release, Path(scratch)) if release.is_file() else release
        except ReleaseError as exc:
            raise DataError(str(exc)) from None
        if not (folder / RELEASE_FILE).is_file():
            raise DataError(f"{folder}: not a release folder (no {RELEASE_FILE})")
        document = json.loads((folder / RELEASE_FILE).read_text())
        files = {path.name: sha256_file(path) for path in sorted(folder.iterdir()) if path.is_file()}
        engine = EngineRef(backend=document["engine"]["backend"], main=RELEASE_FILE, sha256=files[RELEASE_FILE], files=files)
        try:
            with AgentClient(device.url, token, timeout_s=device.timeout_s) as client:
                for name, digest in files.items():
                    client.ensure_file(folder / name, digest)
                job = client.probe(ProbeRequest(engine=engine, trusted_keys=tuple(trusted), allow_unsigned=allow_unsigned,
                                                threads=device.threads))
                state = client.wait(job, deadline=time.monotonic() + device.job_timeout_s)
        except AgentError as exc:
            raise DataError(f"device {device_name}: {exc}") from None
    if state.state != "done" or state.result is None:
        raise DataError(f"device {device_name}: the probe job failed: {state.error}")
    return state.result
