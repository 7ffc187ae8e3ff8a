"""The ``edgeship`` command line: ``run``, ``sweep``, ``backends``, ``validate``, ``report``, ``debug``, ``release``, ``keys``,
``agent serve``.

Every error a user can cause prints one line and exits 2 (``--debug`` shows the
traceback); a failed release gate exits 1.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeship.artifacts import sha256_file
from edgeship.backends import REGISTRY, availability, get_backend
from edgeship.backends.base import PreparingBackend
from edgeship.device import pinned_cpus
from edgeship.errors import DataError, EdgeshipError, RecipeError, disk_refusal
from edgeship.pipeline import run as pipeline  # the module: tests stand a fake run in for it
from edgeship.pipeline.qualify import qualify
from edgeship.pipeline.report import load_report, rebuild
from edgeship.recipe import load_recipe
from edgeship.release import make_releases, new_key_pair
from edgeship.release.device import verify_on_device
from edgeship.render.terminal import print_divergence, print_float_search, print_summary
from edgeship.sweep import sweep
from edgeship.version import __version__

DEFAULT_RECIPE = Path("recipes/default.yaml")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["release", "verify"]:  # `edgeship release verify …`: release's second verb, beside `release RUN_DIR`
        argv = ["release-verify", *argv[2:]]
    args = parser.parse_args(argv)
    console = _console(quiet=getattr(args, "quiet", False))
    try:
        return int(args.handler(args, console))
    except EdgeshipError as exc:
        if args.debug:
            raise
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"edgeship: error: {exc}", markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("edgeship: interrupted; rerun the same recipe to resume from the last completed stage")
        return 130
    except OSError as exc:  # the disk refused a write outside any artifact (the manifest, a report file)
        if args.debug or disk_refusal(exc) is None:
            raise
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"edgeship: error: the disk refused a write ({exc.strerror}: {exc.filename}); free space and rerun", markup=False)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeship", description="From a trained PyTorch model to qualified edge engines.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"edgeship {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a recipe (default: recipes/default.yaml, else the built-in default)")
    run.add_argument("recipe", nargs="?", type=Path, help="recipe YAML file")
    run.add_argument("--force", action="append", default=[], metavar="STAGE",
                     help="redo STAGE even if its output is in the store (model, export, build, validate, divergence, report); repeatable")
    run.add_argument("--quiet", action="store_true", help="print only errors and the final report path")
    run.set_defaults(handler=_run)

    backends = sub.add_parser("backends", help="which backends are installed, their versions, devices and precisions")
    backends.set_defaults(handler=_backends)

    validate = sub.add_parser("validate", help="qualify an existing engine file (built here or elsewhere) against a recipe's "
                                               "data, baseline and gates, without the earlier stages")
    validate.add_argument("engine", type=Path, help="engine file: .onnx (ONNX Runtime), .xml (OpenVINO IR, .bin beside it), "
                                                    ".tflite (io.json beside it, as edgeship writes), .engine/.plan (TensorRT)")
    validate.add_argument("--recipe", type=Path, default=None, help="recipe YAML (default: recipes/default.yaml, else the built-in)")
    validate.add_argument("--backend", default=None, help="the backend that runs it (default: from the file suffix)")
    validate.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                          help="its precision, for the report (default: read from the file)")
    validate.set_defaults(handler=_validate)

    report = sub.add_parser("report", help="rebuild a run's report.json, junit.xml and report.html from its manifest.json alone")
    report.add_argument("path", type=Path, help="the run folder (reports/<run-id>) or its manifest.json")
    report.set_defaults(handler=_report)

    debug = sub.add_parser("debug", help="where an engine's numbers leave the FP32 model: its tensors furthest from FP32, "
                                         "layer by layer, from a finished run")
    debug.add_argument("run", type=Path, help="the run folder (reports/<run-id>)")
    debug.add_argument("engine", help="an engine of that run, e.g. openvino/int8")
    debug.add_argument("--count", type=int, default=10, help="tensors to list (default 10)")
    debug.set_defaults(handler=_debug)

    release = sub.add_parser("release", help="hand over a finished run's passing engines: release folders and reproducible "
                                             "archives with the probe, what a device needs, and a signature")
    release.add_argument("run", type=Path, help="the run folder (reports/<run-id>)")
    release.add_argument("--engines", nargs="+", default=["recommended"], metavar="NAME",
                         help="'recommended' (the engine to ship of each backend; the default) or engine names (onnxruntime/int8 …)")
    release.add_argument("--version", default=None, help="the release version (default: the run id)")
    release.add_argument("--key", type=Path, default=None, help="private key to sign with (edgeship keys new NAME); unsigned without")
    release.add_argument("--out", type=Path, default=Path("releases"), help="where releases go (default releases/)")
    release.add_argument("--allow-failing", action="store_true", help="release an engine that did not pass its gates (it says so)")
    release.add_argument("--mender", action="store_true", help="also write a Mender artifact (payload type edgeship-model) per release")
    release.add_argument("--device-type", action="append", default=[], help="--mender: a device type it may go to; repeatable")
    release.add_argument("--mender-key", type=Path, default=None, help="--mender: sign the artifact (RSA or ECDSA P-256 PEM)")
    release.set_defaults(handler=_release)

    verify = sub.add_parser("release-verify", help="(edgeship release verify RELEASE --device NAME) run a release's probe on "
                                                   "a lab device through its agent")
    verify.add_argument("release", type=Path, help="a release folder or its .tar.gz")
    verify.add_argument("--device", required=True, help="a device of the recipe's devices:")
    verify.add_argument("--recipe", type=Path, default=None, help="the recipe naming the device (default: recipes/default.yaml)")
    verify.add_argument("--key", type=Path, action="append", default=[], help="a trusted public key (PEM); repeatable")
    verify.add_argument("--allow-unsigned", action="store_true")
    verify.set_defaults(handler=_release_verify)

    sweep = sub.add_parser("sweep", help="search compression settings around a recipe: trials on Ray (local, or a cluster), "
                                         "proposed by Optuna, sharing the store; a Pareto report and the best recipes as YAML")
    sweep.add_argument("recipe", nargs="?", type=Path, help="the recipe every trial starts from")
    sweep.add_argument("--space", type=Path, default=None, help="the space: recipe keys and their ranges or choices (docs/sweeps.md)")
    sweep.add_argument("--trials", type=int, default=16, help="trials to run (default 16)")
    sweep.add_argument("--address", default=None, help="a Ray cluster to join (default: start a local Ray for this sweep)")
    sweep.add_argument("--resume", type=Path, default=None, metavar="SWEEP_DIR", help="continue the sweep in SWEEP_DIR after "
                                                                                      "its driver was killed")
    sweep.add_argument("--out", type=Path, default=Path("sweeps"), help="where sweep folders go (default sweeps/)")
    sweep.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs Ray gives each trial, and its training threads "
                                                                         "(default 1; timing always takes the whole machine)")
    sweep.set_defaults(handler=_sweep)

    keys = sub.add_parser("keys", help="Ed25519 key pairs that sign releases")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new_key = keys_sub.add_parser("new", help="write NAME.key (private, mode 0600) and NAME.pub")
    new_key.add_argument("name", help="the key's name")
    new_key.add_argument("--out", type=Path, default=Path("keys"), help="folder for the pair (default keys/)")
    new_key.set_defaults(handler=_keys_new)

    agent = sub.add_parser("agent", help="the device agent: run on an edge device so a host's runs measure engines there")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True)
    serve = agent_sub.add_parser("serve", help="serve GET /device, uploads by sha256 and measurement jobs, one at a time")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    serve.add_argument("--token-file", type=Path, required=True, help="file whose first line is the bearer token every request needs")
    serve.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgeship-agent",
                       help="folder for uploaded engines and feeds, by sha256, and job results (default ~/.cache/edgeship-agent)")
    serve.add_argument("--max-upload-mib", type=float, default=2048.0, help="largest upload accepted, MiB (default 2048)")
    serve.add_argument("--cpus", default=None, help="CPUs every measurement is pinned to, e.g. 0,1 (default: the first `threads`)")
    serve.set_defaults(handler=_agent_serve)
    return parser


def _console(*, quiet: bool = False) -> Console:
    if sys.stdout.isatty():
        return Console(quiet=quiet)
    return Console(quiet=quiet, width=max(shutil.get_terminal_size((140, 24)).columns, 140))


def _version() -> str:
    return __version__


def _run(args: argparse.Namespace, console: Console) -> int:
    path: Path | None = args.recipe
    if path is None and DEFAULT_RECIPE.is_file():
        path = DEFAULT_RECIPE
    recipe = load_recipe(path)
    if path is None:
        console.print("no recipe given and no recipes/default.yaml here: running the built-in default recipe")
    result = pipeline.run(recipe, force=args.force, console=console, recipe_path=path)
    if args.quiet:
        print(result.report_path)
    return result.exit_code


def _sweep(args: argparse.Namespace, console: Console) -> int:
    if args.resume is None and (args.recipe is None or args.space is None):
        raise RecipeError("sweep: give a RECIPE and --space SPACE.yaml, or --resume SWEEP_DIR")
    if args.resume is not None and (args.recipe is not None or args.space is not None):
        raise RecipeError("sweep --resume SWEEP_DIR continues with the recipe and space it started with: give neither")
    result = sweep(args.recipe, args.space, trials=args.trials, address=args.address, resume=args.resume, out=args.out,
                   cpus_per_trial=args.cpus_per_trial, console=console)
    failed = [t.name for t in result.report.trials if t.status != "ok"]
    return 0 if not failed and len(result.report.trials) >= result.report.trials_requested else 1


def _release(args: argparse.Namespace, console: Console) -> int:
    if args.mender and not args.device_type:
        raise RecipeError("--mender needs --device-type (the device_type of the devices it may go to)")
    archives = make_releases(args.run, engines=args.engines, version=args.version, key=args.key, out=args.out,
                             allow_failing=args.allow_failing, mender=args.device_type if args.mender else (),
                             mender_key=args.mender_key, console=console)
    for archive in archives:
        console.print(f"{archive}  sha256 {sha256_file(archive)}", soft_wrap=True, highlight=False)
    if not args.key:
        console.print("[yellow]unsigned: devices load it only with --allow-unsigned (sign with --key keys/NAME.key)[/yellow]")
    return 0


def _release_verify(args: argparse.Namespace, console: Console) -> int:
    path: Path | None = args.recipe
    if path is None and DEFAULT_RECIPE.is_file():
        path = DEFAULT_RECIPE
    result = verify_on_device(args.release, load_recipe(path), args.device, args.key, allow_unsigned=args.allow_unsigned)
    for line in result["lines"]:
        console.print(f"{args.device}: {line}", markup=False, highlight=False, soft_wrap=True)
    return 0 if result["passed"] else (1 if result["exit_code"] == 1 else 2)


def _keys_new(args: argparse.Namespace, console: Console) -> int:
    private, public = new_key_pair(args.name, args.out)
    console.print(f"private key {private} (keep it secret: mode 0600), public key {public} (give it to devices: --key)")
    return 0


def _validate(args: argparse.Namespace, console: Console) -> int:
    path: Path | None = args.recipe
    if path is None and DEFAULT_RECIPE.is_file():
        path = DEFAULT_RECIPE
    result = qualify(load_recipe(path), args.engine, backend=args.backend, precision=args.precision, console=console, recipe_path=path)
    return result.exit_code


def _backends(args: argparse.Namespace, console: Console) -> int:
    table = Table(title="edgeship backends")
    for column in ("backend", "available", "versions", "device", "precisions", "notes / install"):
        table.add_column(column)
    states = {name: availability(name) for name in REGISTRY}  # each imports its runtime: asked once
    for name, info in REGISTRY.items():
        state = states[name]
        versions = ", ".join(f"{k} {v}" for k, v in state.versions.items()) or "not installed"
        mark = "[green]yes[/green]" if state.available else "[red]no[/red]"
        notes = "" if state.available else f"{state.reason}; install: {state.install}"
        table.add_row(f"{name} ({info.display_name})", mark, escape(versions), escape(state.device or "—"),
                      ", ".join(sorted(info.precisions)), escape(notes))
    console.print(table)
    for name, state in states.items():
        if not state.available:
            line = _preparation_line(name)
            if line:
                console.print(escape(line), soft_wrap=True)
    return 0


def _preparation_line(name: str) -> str:
    """For a preparing backend (TensorRT) whose engines cannot be built here: what the run still does on this machine."""
    backend = get_backend(name)
    if not isinstance(backend, PreparingBackend):
        return ""
    versions = backend.preparation_versions()
    if "nvidia-modelopt" in versions:
        tools = f"ModelOpt {versions['nvidia-modelopt']} (AutoCast FP16, Q/DQ INT8)"
    else:
        tools = ("ONNX Runtime's quantize_static for INT8 only; FP16 needs ModelOpt AutoCast: "
                 "pip install 'edgeship[tensorrt-onnx]'")
    return (f"{name}: no engines here, but its precision-bound ONNX is still prepared with {tools} and scored on ONNX Runtime, "
            "reported as a prediction, not a measurement")


def _report(args: argparse.Namespace, console: Console) -> int:
    report = rebuild(args.path)
    print_summary(report, console)
    folder = args.path if args.path.is_dir() else args.path.parent
    console.print(f"report: {folder / 'report.html'}")
    return report.release.exit_code


def _debug(args: argparse.Namespace, console: Console) -> int:
    report = load_report(args.run)
    row = next((r for r in report.engines if r.name == args.engine), None)
    if row is None:
        names = ", ".join(r.name for r in report.engines)
        raise DataError(f"{args.run}: no engine named {args.engine!r}; this run has {names}")
    searched = print_float_search(row, console)
    try:
        print_divergence(row, console, count=args.count)
    except ValueError as exc:
        why = (f"{row.name}: an FP32 engine is the reference's own precision: nothing to compare" if row.precision == "fp32"
               else str(exc))
        if not searched:
            raise DataError(f"{args.run}: {why}") from None
        console.print(f"[dim]{escape(why)}[/dim]", soft_wrap=True)
    return 0


def _agent_serve(args: argparse.Namespace, console: Console) -> int:
    import importlib.util
    import socket

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise EdgeshipError(f"the device agent needs {' and '.join(missing)}: pip install 'edgeship[agent]'")
    try:
        cpus = tuple(int(cpu) for cpu in args.cpus.split(",")) if args.cpus else None
    except ValueError:
        raise RecipeError(f"--cpus {args.cpus!r}: expected CPU numbers separated by commas, e.g. 0,1") from None
    try:
        pinned_cpus(len(cpus or ()), cpus)
    except ValueError as exc:
        raise RecipeError(f"--cpus {args.cpus!r}: {exc}") from None
    from edgeship.agent.server import read_token, serve

    try:
        read_token(args.token_file)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # uvicorn's own bind failure is a log line and exit 1
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            raise DataError(f"--host {args.host} --port {args.port}: cannot listen there: {exc.strerror}") from None
    serve(host=args.host, port=args.port, token_file=args.token_file, cache=args.cache, max_upload_mib=args.max_upload_mib,
          cpus=cpus, announce=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
