"""Remote-versus-local latency through the device agent, and the time to qualify every engine on one agent.

    python benchmarks/agent_overhead.py RECIPE [--engine onnxruntime/int8] [--rounds 5]

Needs a finished run of RECIPE (its newest run folder under `reports:` and its store). Starts
`edgeship agent serve` on loopback, then, alternating which goes first, measures ENGINE with the local
harness (`measure_isolated`, as the validate stage does) and through the agent (`measure_remote`, as a
device in `devices:` does), with the recipe's validate settings; prints each round's p50s and the ratio
of the medians. Then reruns RECIPE with the agent as a device (every host artifact reused) and reports
the time the device rows took. Both measure on this machine's CPUs, so the difference is the agent's
own cost: its HTTP service idling beside the measuring process, and the long poll.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml
from rich.console import Console

from edgeship.agent.client import AgentClient, measure_remote
from edgeship.agent.protocol import EngineRef, JobRequest
from edgeship.artifacts import ArtifactStore, sha256_file
from edgeship.data import preprocess
from edgeship.harness import HarnessSpec, measure_isolated
from edgeship.pipeline.measurers import settings
from edgeship.pipeline.run import recipe_dataset
from edgeship.recipe import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--engine", default="onnxruntime/int8")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    run_dir = sorted(p for p in recipe.reports.iterdir() if (p / "manifest.json").is_file())[-1]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    entry = next(e for e in manifest["entries"] if e["stage"] == "build" and e["name"] == args.engine and e["status"] == "ok")
    artifact = ArtifactStore(recipe.store).get(entry["artifact"])
    assert artifact is not None, f"{args.engine} is not in {recipe.store}"
    cfg, threads = recipe.validate_, recipe.threads()
    work = Path(tempfile.mkdtemp(prefix="agent-overhead-"))
    dataset = recipe_dataset(recipe, Console(quiet=True))
    inputs = work / "inputs.npy"
    np.save(inputs, preprocess(dataset.eval.images[:256], recipe.data.preprocessing))
    token = secrets.token_urlsafe(24)
    (work / "token").write_text(token)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = subprocess.Popen([sys.executable, "-m", "edgeship", "agent", "serve", "--port", str(port), "--token-file",
                              str(work / "token"), "--cache", str(work / "cache")], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, token)
        client = AgentClient(url, token)
        files = {digest: artifact.folder / name for name, digest in artifact.files.items()}
        files[sha256_file(inputs)] = inputs
        latency_only = {**settings(cfg, threads, timed=True, bare_call=False), "throughput_batch_sizes": ()}
        request = JobRequest(engine=EngineRef(backend=entry["config"]["backend"], main=artifact.path.name, sha256=artifact.sha256,
                                              files=dict(artifact.files)),
                             inputs=sha256_file(inputs), input_name=artifact.meta["input_name"],
                             input_shape=tuple(artifact.meta["input_shape"]), **latency_only)
        spec = HarnessSpec(**latency_only, backend=request.engine.backend, engine=artifact.path, input_name=request.input_name,
                           inputs=inputs, outputs=work / "local-logits.npy", timings=work / "local-timings.npz",
                           cpus=cfg.affinity(threads))
        local, remote = [], []
        for round_ in range(args.rounds):
            order = ("local", "remote") if round_ % 2 == 0 else ("remote", "local")
            for where in order:
                if where == "local":
                    local.append(measure_isolated(spec, work / f"local-{round_}")["latency"]["p50_ms"])
                else:
                    folder = work / f"remote-{round_}"
                    folder.mkdir()
                    remote.append(measure_remote(client, request, files, folder, job_timeout_s=600)["latency"]["p50_ms"])
            print(f"round {round_ + 1}: local p50 {local[-1]:.4f} ms, remote p50 {remote[-1]:.4f} ms, ratio {remote[-1] / local[-1]:.4f}")
        print(f"{args.engine}, {threads} threads, batch {cfg.batch_size}, {args.rounds} rounds: median p50 local "
              f"{statistics.median(local):.4f} ms, remote {statistics.median(remote):.4f} ms, "
              f"remote/local {statistics.median(remote) / statistics.median(local):.4f}")
        _qualify_all(args.recipe, url, token, work)
    finally:
        agent.kill()


def _qualify_all(recipe_path: Path, url: str, token: str, work: Path) -> None:
    """RECIPE again with the agent as a device: the host's results are reused, the device rows are measured."""
    document = yaml.safe_load(recipe_path.read_text())
    document["devices"] = [{"name": "loop", "url": url, "token_env": "EDGESHIP_BENCH_TOKEN"}]
    for key in ("store", "reports"):
        document[key] = str((recipe_path.parent / document.get(key, key)).resolve()) if not Path(document[key]).is_absolute() \
            else document[key]
    path = work / "with-device.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgeship", "run", str(path), "--quiet"], env={**os.environ, "EDGESHIP_BENCH_TOKEN": token},
                   check=False, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    run_dir = sorted(p for p in Path(document["reports"]).iterdir() if (p / "manifest.json").is_file())[-1]
    entries = json.loads((run_dir / "manifest.json").read_text())["entries"]
    rows = [e for e in entries if e["stage"] == "validate" and e["name"].endswith("@loop")]
    print(f"qualify on one agent: {len(rows)} engines ({sum(e['status'] == 'ok' for e in rows)} ok) in "
          f"{sum(e.get('seconds') or 0 for e in rows):.1f} s of device rows; the whole rerun {wall:.1f} s ({run_dir.name})")


def _wait_until_up(url: str, token: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/device", headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the agent did not start")


if __name__ == "__main__":
    main()
