"""Pruning and distillation without labels: a PyTorch model with declared integer inputs (token ids and a mask), fed named
arrays, is pruned by its fidelity to its own outputs, fine-tuned and distilled on them, and judged against the unpruned
model; what needs labels is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from edgeship import RunResult, run
from edgeship.recipe import load_recipe

pytestmark = pytest.mark.slow

VOCABULARY, WIDTH, HIDDEN, TOKENS, TRANSFER = 64, 16, 64, 12, 320

FACTORY = f'''import torch


class TokenEncoder(torch.nn.Module):
    """Token ids and a mask to a unit vector: an embedding, a residual MLP per token (the prunable part), the masked mean."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding({VOCABULARY}, {WIDTH})
        self.up = torch.nn.Linear({WIDTH}, {HIDDEN})
        self.down = torch.nn.Linear({HIDDEN}, {WIDTH})

    def forward(self, input_ids, attention_mask):
        x = self.embed(input_ids)
        x = x + self.down(torch.relu(self.up(x)))
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def build():
    return TokenEncoder().eval()
'''


def token_arrays(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, TOKENS + 1, count)
    mask = (np.arange(TOKENS)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(0, VOCABULARY, (count, TOKENS)) * mask, "attention_mask": mask}


def write_folder(folder: Path, count: int = 400) -> Path:
    (folder / "encoder.py").write_text(FACTORY)
    np.savez(folder / "tokens.npz", **token_arrays(count, 0))
    np.savez(folder / "transfer.npz", **token_arrays(TRANSFER, 1))  # more unlabelled sentences, for distillation only
    return folder


def write_recipe(folder: Path, **overrides: object) -> Path:
    raw: dict[str, object] = {
        "name": "tokens", "task": "generic", "seed": 0, "store": str(folder / "store"), "reports": str(folder / "reports"),
        "model": {"factory": "encoder.py:build", "outputs": ["embedding"],
                  "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
                             {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"]}]},
        "data": {"dataset": "arrays", "path": "tokens.npz", "val_size": 64},
        "calibration": {"size": 32},
        "prune": {"keep_macs": 0.6, "steps": 1, "round_to": None, "sensitivity": {"ratios": [0.25, 0.5, 0.75], "max_drop": 10.0},
                  "finetune": {"epochs": 1, "lr": 0.002, "optimizer": "adamw", "batch_size": 32}},
        "distill": {"transfer": "unlabeled", "transfer_source": "transfer.npz",
                    "train": {"epochs": 3, "lr": 0.002, "optimizer": "adamw", "batch_size": 32}},
        "backends": {"onnxruntime": {"precisions": ["fp32"]}, "openvino": {"enabled": False}, "tflite": {"enabled": False},
                     "tensorrt": {"enabled": False}},
        "validate": {"together_rounds": 0, "warmup": 2, "iterations": 20, "min_seconds": 0.05, "threads": 1, "throughput_batch_sizes": [4],
                     "throughput_seconds": 0.02},
        "divergence": {"enabled": False},
        "gates": {"min_cosine": 0.5},
    }
    raw.update(overrides)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("label-free"))


@pytest.fixture(scope="module")
def result(folder: Path) -> RunResult:
    return run(load_recipe(write_recipe(folder)), console=Console(quiet=True))


def test_a_model_without_labels_is_pruned_by_fidelity_to_its_own_outputs(result: RunResult) -> None:
    entries = {e.stage: e for e in result.manifest.entries if e.status == "ok"}
    curves = json.loads(Path(entries["prune-sensitivity"].path).read_text())
    assert curves["measure"] == "cosine" and curves["base_accuracy"] == pytest.approx(1.0)
    assert list(curves["curves"]) == ["up"], "the MLP's hidden channels are the one prunable group (down is the output layer)"
    assert all(value < 1.0 for value in curves["curves"]["up"].values())
    prune = entries["prune"].metrics
    assert prune["measure"] == "cosine" and prune["before"]["val_cosine"] == pytest.approx(1.0)
    assert 0.5 < prune["macs_kept"] < 0.75 and prune["after"]["val_cosine"] < 1.0
    assert prune["before"]["latency"]["p50_ms"] > 0 and prune["after"]["onnx_bytes"] < prune["before"]["onnx_bytes"]


def test_the_pruned_model_is_distilled_on_its_teachers_outputs_and_exported_by_name(result: RunResult) -> None:
    import onnx

    entries = {e.stage: e for e in result.manifest.entries if e.status == "ok"}
    assert "distill-ablation" not in entries, "no labels: no hard-label fine-tune"
    distill = entries["distill"].metrics
    assert distill["measure"] == "cosine" and distill["transfer"] == {"samples": TRANSFER, "labeled": False}
    assert distill["objective"]["name"] == "mse"
    assert distill["teacher"]["eval_cosine"] == pytest.approx(1.0)
    assert distill["student_after"]["val_cosine"] >= distill["student_before"]["val_cosine"]
    graph = onnx.load(entries["export"].path).graph
    assert [value.name for value in graph.input] == ["input_ids", "attention_mask"] and graph.output[0].name == "embedding"
    hidden = {init.name: init.dims for init in graph.initializer}
    assert any(HIDDEN > min(dims) > 0 and WIDTH in dims for dims in hidden.values() if len(dims) == 2), hidden


def test_the_report_judges_the_student_by_its_cosine_with_the_unpruned_model(result: RunResult) -> None:
    report = json.loads(result.report_path.read_text())
    verdict = report["student_vs_teacher"]
    assert verdict["measure"] == "cosine" and verdict["stages"] == "prune + distill"
    fp32 = next(row for row in report["engines"] if row["name"] == "onnxruntime/fp32")
    assert verdict["student_cosine"] == fp32["min_cosine"] < 1.0
    distill = report["distill"]
    assert distill["measure"] == "cosine" and distill["cosine"]["hard_label_finetune"] is None
    page = (result.run_dir / "report.html").read_text()
    assert "test output cosine with the teacher" in page and "top-1" not in page.split("<section id=pipeline>")[1].split("</section>")[0]
    assert (result.run_dir / "distill" / "curves.png").is_file()


def test_the_pruned_structure_is_rebuilt_from_its_declared_inputs(result: RunResult) -> None:
    from edgeship.artifacts import Artifact
    from edgeship.models import load_model

    entry = next(e for e in result.manifest.entries if e.stage == "distill" and e.status == "ok")
    artifact = Artifact.model_validate_json((Path(entry.path).parent / "artifact.json").read_text())
    model = load_model(artifact)
    assert model.up.out_features < HIDDEN and model.down.in_features == model.up.out_features
    ids = torch.ones(2, 5, dtype=torch.int64)
    assert model(ids, ids).shape == (2, WIDTH)


def test_transfer_arrays_that_do_not_fit_the_inputs_are_one_line_errors_and_nothing_built_is_lost(
        result: RunResult, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeship.cli import main

    np.savez(folder / "bad.npz", input_ids=token_arrays(40, 2)["input_ids"].astype(np.int32),
             attention_mask=token_arrays(40, 2)["attention_mask"])
    recipe = write_recipe(folder, distill={"transfer": "unlabeled", "transfer_source": "bad.npz"})
    code = main(["run", str(recipe), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "bad.npz: array 'input_ids' is int32; the model's input 'input_ids' takes int64" in err
    prune = next(e for e in result.manifest.entries if e.stage == "prune")
    assert Path(prune.path).is_file(), "the pruned model built before stays in the store"


def test_a_padding_mask_that_is_not_an_input_is_a_one_line_error(result: RunResult, folder: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from edgeship.cli import main

    recipe = write_recipe(folder, distill={"transfer": "unlabeled", "padding_mask": "token_type_ids"})
    code = main(["run", str(recipe), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "'distill.padding_mask': 'token_type_ids' is not one of the model's declared inputs (input_ids, attention_mask)" in err


def test_a_padding_mask_trains_on_real_positions_only(result: RunResult, folder: Path) -> None:
    distill = {"transfer": "unlabeled", "transfer_source": "transfer.npz", "padding_mask": "attention_mask",
               "hints": [{"student": "down"}], "train": {"epochs": 3, "lr": 0.002, "optimizer": "adamw", "batch_size": 32}}
    masked = run(load_recipe(write_recipe(folder, distill=distill)), console=Console(quiet=True))
    entry = next(e for e in masked.manifest.entries if e.stage == "distill" and e.status == "ok")
    assert not entry.reused and entry.metrics["objective"]["padding_mask"] == "attention_mask"
    cosine = masked.report["distill"]["cosine"]
    assert cosine["distilled"]["val_cosine"] > cosine["student_before"]["val_cosine"]


def test_a_left_padded_mask_is_a_one_line_error(result: RunResult, folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgeship.cli import main

    arrays = token_arrays(40, 2)
    np.savez(folder / "left.npz", input_ids=arrays["input_ids"][:, ::-1], attention_mask=arrays["attention_mask"][:, ::-1])
    recipe = write_recipe(folder, distill={"transfer": "unlabeled", "transfer_source": "left.npz", "padding_mask": "attention_mask"})
    code = main(["run", str(recipe), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "left.npz: array 'attention_mask' must be (samples, positions) with each row's marked" in err


@pytest.mark.parametrize(("distill", "expected"), [
    ({"objective": "soft_hard"}, r"distill.objective: soft_hard matches class probabilities"),
    ({"transfer": "labeled"}, r"distill.transfer: a model with declared inputs has no labels"),
    ({"transfer": "unlabeled", "transfer_source": "tokens"}, r"distill.transfer_source: .*an .npz like data.path's"),
])
def test_what_needs_labels_is_refused_before_anything_runs(distill: dict[str, object], expected: str, folder: Path, tmp_path: Path) -> None:
    import re

    from edgeship.errors import RecipeError

    (tmp_path / "tokens").mkdir()
    target = write_recipe(folder, distill=distill)
    moved = tmp_path / "recipe.yaml"
    moved.write_text(target.read_text())
    for name in ("encoder.py", "tokens.npz", "transfer.npz"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(RecipeError) as err:
        load_recipe(moved)
    assert re.search(expected, str(err.value)), err.value


def test_activation_importance_ranks_channels_by_what_they_carry_without_labels(result: RunResult, tmp_path: Path) -> None:
    prune = {"keep_macs": 0.6, "steps": 1, "round_to": None, "importance": "activation", "activation_batches": 2,
             "sensitivity": {"ratios": [0.25, 0.5, 0.75], "max_drop": 10.0},
             "finetune": {"epochs": 1, "lr": 0.002, "optimizer": "adamw", "batch_size": 32}}
    recipe = write_recipe(write_folder(tmp_path), prune=prune, distill={"enabled": False})
    activation = run(load_recipe(recipe), console=Console(quiet=True))

    def stage(outcome: RunResult, name: str) -> dict[str, object]:
        entry = next(e for e in outcome.manifest.entries if e.stage == name and e.status == "ok")
        return json.loads(Path(entry.path).read_text()) if name == "prune-sensitivity" else entry.metrics

    by_activation, by_magnitude = stage(activation, "prune-sensitivity"), stage(result, "prune-sensitivity")
    assert by_activation["importance"] == "activation" and by_magnitude["importance"] == "l1"
    assert by_activation["curves"]["up"] != by_magnitude["curves"]["up"], "another ranking prunes other channels"
    after = stage(activation, "prune")
    assert 0.5 < after["macs_kept"] < 0.75 and after["after"]["val_cosine"] > 0.9
