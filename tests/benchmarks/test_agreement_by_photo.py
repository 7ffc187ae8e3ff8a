"""``benchmarks/agreement_by_photo.py``: agreement per photo set, with an interval over photos."""

from __future__ import annotations

import numpy as np

from conftest import load_module


def test_rates_split_the_photo_sets_and_name_the_worst_photos() -> None:
    rates = load_module("benchmarks/agreement_by_photo.py").rates
    groups = np.array(["flower.jpg"] * 50 + ["china.jpg"] * 50 + ["apple.jpg"] * 40 + ["baboon.jpg"] * 40)
    hits = np.concatenate([np.ones(50), np.r_[np.ones(45), np.zeros(5)], np.r_[np.ones(30), np.zeros(10)], np.ones(40)])
    r = rates(hits, groups, resamples=500)
    assert r["crops"] == 180 and r["photos"] == 4
    assert r["bundled"] == 0.95 and r["opencv_doc"] == 70 / 80
    assert r["ci95"][0] < r["agreement"] == hits.mean() < r["ci95"][1]
    assert r["worst_photos"][0] == ("apple.jpg", 0.75)
