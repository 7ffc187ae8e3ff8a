"""Ed25519 key pairs for signing releases: ``NAME.key`` (PKCS #8 PEM, mode 0600) and ``NAME.pub`` (PEM).

Signing uses the ``cryptography`` package on the build machine; devices verify with ``edgeship_deploy.ed25519``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeship.errors import DataError


def new_key_pair(name: str, folder: Path) -> tuple[Path, Path]:
    """Write ``folder/NAME.key`` (private, readable by its owner only) and ``folder/NAME.pub``; refuse to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            raise DataError(f"{path}: already exists; a key is never overwritten (choose another name)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_private_key(path: Path) -> Any:
    """The Ed25519 private key in ``path``; a ``DataError`` naming the file when it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the key: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: not an unencrypted PEM private key ({str(exc).splitlines()[0]})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DataError(f"{path}: not an Ed25519 private key (make one with `edgeship keys new NAME`)")
    return key


def sign(private_key: Path, data: bytes) -> bytes:
    """The Ed25519 signature of ``data`` with the private key in ``private_key``."""
    return load_private_key(private_key).sign(data)
