"""``edgeship-deploy verify RELEASE --key PUB [--probe]`` on a device: exit 0 pass, 1 the probe failed, 2 refused or error.

RELEASE is a release folder or its ``.tar.gz``; an archive is unpacked into a temporary folder (no member may leave
it, no links) and checked there.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path

from edgeship_deploy import ReleaseError, load


def unpack(archive: Path, into: Path) -> Path:
    """The release folder inside ``archive``, unpacked under ``into``; ``ReleaseError`` for anything but plain files."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise ReleaseError(f"{archive}: refused member {member.name!r} (only plain files inside the release folder)")
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ReleaseError(f"{archive}: not a readable release archive: {exc}") from None
    folders = [p for p in into.iterdir() if p.is_dir()]
    if len(folders) != 1:
        raise ReleaseError(f"{archive}: expected one release folder inside, found {len(folders)}")
    return folders[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgeship-deploy", description="Check an edgeship release on this device.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="verify a release's signature and files, load it, and optionally run its probe")
    check.add_argument("release", type=Path, help="a release folder or its .tar.gz")
    check.add_argument("--key", type=Path, action="append", default=[], help="a trusted public key (PEM); repeatable")
    check.add_argument("--probe", action="store_true", help="run the acceptance probe")
    check.add_argument("--allow-unsigned", action="store_true")
    check.add_argument("--strict-runtime", action="store_true", help="refuse a runtime version other than the qualified one")
    check.add_argument("--threads", type=int, default=None)
    module = sub.add_parser("install-mender-module", help="install the Mender Update Module edgeship-model on this device")
    module.add_argument("--models", type=Path, required=True, help="where releases go: <models>/<name>/<version>, and current")
    module.add_argument("--key", type=Path, action="append", required=True, help="a trusted public key (PEM); repeatable")
    module.add_argument("--modules-dir", type=Path, default=Path("/usr/share/mender/modules/v3"),
                        help="Mender's Update Modules folder (the 3.x client reads only /usr/share/mender/modules/v3)")
    module.add_argument("--allow-unsigned", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "install-mender-module":
        from edgeship_deploy.mender import install_module

        try:
            path = install_module(args.modules_dir, models=args.models, keys=args.key, allow_unsigned=args.allow_unsigned)
        except (ReleaseError, OSError) as exc:
            print(f"edgeship-deploy: {exc}", file=sys.stderr)
            return 2
        print(f"installed {path}: releases go to {args.models}/<name>/<version>, applications load {args.models}/<name>/current")
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="edgeship-release-") as scratch:
            folder = unpack(args.release, Path(scratch)) if args.release.is_file() else args.release
            model = load(folder, args.key, allow_unsigned=args.allow_unsigned, strict_runtime=args.strict_runtime, threads=args.threads)
            document = model.document
            print(f"{document['model']} {document['version']}: {document['engine']['backend']}/{document['engine']['precision']} "
                  f"verified ({'signed' if (folder / 'release.sig').is_file() else 'UNSIGNED'}), loaded")
            for warning in model.warnings:
                print(f"warning: {warning}")
            if not args.probe:
                return 0
            result = model.probe()
            print(result.describe())
            return 0 if result.passed else 1
    except ReleaseError as exc:
        print(f"edgeship-deploy: refused: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
