"""Calibration and search samples mapped from disk: the same values, read-only, and pickled as their files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from edgeship.tensors import CalibrationSet, SearchSet, outputs_in_batches


def _sets(tmp_path: Path) -> tuple[CalibrationSet, CalibrationSet]:
    rng = np.random.default_rng(0)
    search = SearchSet(rng.normal(size=(40, 3, 4, 4)).astype(np.float32), np.arange(40), "search-fp",
                       tuple(f"photo{i // 10}" for i in range(40)))
    plain = CalibrationSet(rng.normal(size=(30, 3, 4, 4)).astype(np.float32), "cal-fp", input_name="x", batch_size=4,
                           search=search)
    return plain, plain.mapped(tmp_path)


def test_a_mapped_set_holds_the_same_samples_read_only_and_keeps_its_fingerprint(tmp_path: Path) -> None:
    plain, mapped = _sets(tmp_path)
    assert isinstance(mapped.samples, np.memmap)
    np.testing.assert_array_equal(mapped.samples, plain.samples)
    assert mapped.search is not None and plain.search is not None
    np.testing.assert_array_equal(mapped.search.inputs, plain.search.inputs)
    assert (mapped.fingerprint, mapped.input_name, mapped.batch_size, mapped.search.fingerprint) == ("cal-fp", "x", 4, "search-fp")
    assert [feed["x"].shape for feed in mapped][:2] == [(4, 3, 4, 4)] * 2
    mapped.samples[0] = 0  # copy-on-write: a caller that writes changes its own view, never the file a child maps
    np.testing.assert_array_equal(np.load(mapped.samples.filename), plain.samples)


def test_a_mapped_set_pickles_as_its_files_and_a_plain_one_by_value(tmp_path: Path) -> None:
    plain, mapped = _sets(tmp_path)
    small, large = pickle.dumps(mapped), pickle.dumps(plain)
    assert len(small) < 2_000 < plain.samples.nbytes < len(large)  # the files' names, not the samples
    again = pickle.loads(small)
    assert str(again.samples.filename) == str(mapped.samples.filename) and again.fingerprint == "cal-fp"
    np.testing.assert_array_equal(again.samples, plain.samples)
    np.testing.assert_array_equal(again.search.inputs, plain.search.inputs)
    assert again.search.groups == mapped.search.groups == plain.search.groups, "the photos of the crops travel with them"
    np.testing.assert_array_equal(again.search.labels, np.arange(40))
    # a part of a mapped set is not its file: it travels by value
    part = pickle.loads(pickle.dumps(mapped.subset(10)))
    assert part.count == 10 and getattr(part.samples, "filename", None) is None
    np.testing.assert_array_equal(part.samples, plain.samples[:10])
    searched = pickle.loads(pickle.dumps(mapped.with_search(mapped.search, "m")))
    assert str(searched.samples.filename) == str(mapped.samples.filename) and searched.fingerprint.endswith("+m")


def test_named_inputs_map_and_batches_read_through_a_mapped_set(tmp_path: Path) -> None:
    arrays = {"ids": np.arange(24, dtype=np.int64).reshape(12, 2), "mask": np.ones((12, 2), np.int64)}
    mapped = CalibrationSet(arrays, "fp").mapped(tmp_path)
    assert set(mapped.arrays) == {"ids", "mask"} and all(isinstance(a, np.memmap) for a in mapped.arrays.values())
    again = pickle.loads(pickle.dumps(mapped))
    np.testing.assert_array_equal(again.arrays["ids"], arrays["ids"])
    out = outputs_in_batches(lambda feed: [feed["ids"].sum(1)], mapped.arrays, ["ids", "mask"], 5)
    np.testing.assert_array_equal(out[0], arrays["ids"].sum(1))
