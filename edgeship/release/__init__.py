"""Releases: what a finished run hands over for a device, verified and signed (``edgeship release``, ``edgeship keys``).

``make_releases`` turns a run's passing engines into release folders and reproducible archives; ``keys`` makes and
uses the Ed25519 key pairs that sign them. The format is ``edgeship_deploy``'s, the loader a device installs.
"""

from __future__ import annotations

from edgeship.release.bundle import ReleaseRefused, make_releases
from edgeship.release.keys import new_key_pair

__all__ = ["ReleaseRefused", "make_releases", "new_key_pair"]
