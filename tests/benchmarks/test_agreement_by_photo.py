"""``benchmarks/agreement_by_photo.py``: agreement per photo set, with an interval over photos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _benchmark():
    spec = importlib.util.spec_from_file_location("agreement_by_photo", ROOT / "benchmarks" / "agreement_by_photo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rates_split_the_photo_sets_and_name_the_worst_photos() -> None:
    rates = _benchmark().rates
    groups = np.array(["flower.jpg"] * 50 + ["china.jpg"] * 50 + ["apple.jpg"] * 40 + ["baboon.jpg"] * 40)
    hits = np.concatenate([np.ones(50), np.r_[np.ones(45), np.zeros(5)], np.r_[np.ones(30), np.zeros(10)], np.ones(40)])
    r = rates(hits, groups, resamples=500)
    assert r["crops"] == 180 and r["photos"] == 4
    assert r["bundled"] == 0.95 and r["opencv_doc"] == 70 / 80
    assert r["ci95"][0] < r["agreement"] == hits.mean() < r["ci95"][1]
    assert r["worst_photos"][0] == ("apple.jpg", 0.75)
