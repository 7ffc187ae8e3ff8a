"""A release archive as a Mender artifact (``mender-artifact write module-image``, payload type ``edgeship-model``),
signed with ``mender-artifact`` when given a key it reads (RSA or ECDSA P-256 PEM: Mender has no Ed25519).

The archive inside keeps its own Ed25519 signature, which the Update Module on the device checks; the Mender
signature is what the client checks before it runs any module.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from edgeship.errors import DataError

PAYLOAD_TYPE = "edgeship-model"


def mender_artifact(archive: Path, *, name: str, device_types: Sequence[str], key: Path | None = None) -> Path:
    """``archive`` as ``<archive stem>.mender`` beside it; a ``DataError`` with the tool's words when it fails."""
    tool = shutil.which("mender-artifact")
    if tool is None:
        raise DataError("--mender needs mender-artifact: sudo apt-get install mender-artifact")
    if not device_types:
        raise DataError("--mender needs at least one --device-type (the device_type of the devices it may go to)")
    target = archive.with_name(archive.name.removesuffix(".tar.gz") + ".mender")
    command = [tool, "write", "module-image", "-T", PAYLOAD_TYPE, "-n", name, "-o", str(target), "-f", str(archive)]
    for device_type in device_types:
        command += ["-t", device_type]
    if key is not None:
        command += ["-k", str(key)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        target.unlink(missing_ok=True)
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise DataError(f"mender-artifact: {lines[-1] if lines else f'exit {done.returncode}'}"
                        + (f" (--mender-key {key}: RSA or ECDSA P-256 PEM)" if key else ""))
    return target
