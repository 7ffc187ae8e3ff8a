"""The shapes data takes between edgeship's parts: precisions, feeds, an engine input's metadata, calibration sets.

A core module: the data module makes calibration sets, the backends consume them, the recipe names precisions.
"""

from __future__ import annotations

import enum
import mmap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Feed = dict[str, np.ndarray]


def standard_strides(array: np.ndarray) -> np.ndarray:
    """``array`` with row-major strides in every dimension, size-1 ones included: what a user's model expects.

    NumPy calls an NHWC array transposed to (N, 1, H, W) C-contiguous (a size-1 dimension's stride does not count), so
    ``np.ascontiguousarray`` keeps it as is; ``torch.from_numpy`` keeps its strides, PyTorch reads them as channels-last,
    the convolutions keep that layout, and the common ``x.view(x.size(0), -1)`` then fails. A fresh copy has standard
    strides.
    """
    expected = tuple(int(np.prod(array.shape[i + 1 :], dtype=np.int64)) * array.itemsize for i in range(array.ndim))
    return array if array.strides == expected else np.array(array, order="C", copy=True)


class Precision(enum.StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


@dataclass(frozen=True)
class TensorMeta:
    """Name, dtype and shape of one engine input; ``None`` marks a dynamic axis."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    def check(self, array: np.ndarray) -> None:
        """Raise ``ValueError`` when ``array`` cannot be fed to this input."""
        if array.dtype != self.dtype:
            raise ValueError(f"input {self.name!r}: expected dtype {self.dtype}, got {array.dtype}")
        if array.ndim != len(self.shape):
            raise ValueError(f"input {self.name!r}: expected {len(self.shape)} dims {self.shape}, got shape {array.shape}")
        for want, got in zip(self.shape, array.shape, strict=True):
            if want is not None and want != got:
                raise ValueError(f"input {self.name!r}: expected shape {self.shape}, got {array.shape}")


Inputs = np.ndarray | Mapping[str, np.ndarray]  # one input's batch, or a batch of every named input (same N)


def count_of(inputs: Inputs) -> int:
    """How many samples (rows of every array)."""
    return len(inputs) if isinstance(inputs, np.ndarray) else len(next(iter(inputs.values())))


def rows_of(inputs: Inputs, start: int, stop: int | None = None) -> Inputs:
    """Rows ``start:stop`` of every array."""
    if isinstance(inputs, np.ndarray):
        return inputs[start:stop]
    return {name: array[start:stop] for name, array in inputs.items()}


def outputs_in_batches(call: Callable[[Feed], Sequence[np.ndarray]], inputs: Inputs, names: Sequence[str],
                       size: int) -> list[np.ndarray]:
    """Every output of ``call`` (a model run on one feed, its outputs in order) over ``inputs``, ``size`` rows a call,
    each output concatenated over the calls."""
    batches = []
    for i in range(0, count_of(inputs), size):
        batches.append(list(call(feed_of(rows_of(inputs, i, i + size), names))))
        for array in ([inputs] if isinstance(inputs, np.ndarray) else inputs.values()):
            drop_mapped_pages(array)  # mapped samples (``mapped``) are read through, not held
    return [np.concatenate([batch[k] for batch in batches]) for k in range(len(batches[0]))]


def drop_mapped_pages(array: np.ndarray) -> None:
    """Unmap the pages of a memory-mapped array read so far: they stay in the page cache, but not in this process's
    resident set, so reading a large mapped array through holds a block of it rather than all of it."""
    mapping = getattr(array, "_mmap", None)
    if isinstance(array, np.memmap) and mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


@dataclass(frozen=True)
class _MappedFile:
    """How a whole-file memory-mapped array travels to a child process: its file, opened there again."""

    path: str


def mapped(inputs: Inputs, folder: Path, stem: str) -> Inputs:
    """``inputs`` saved under ``folder`` (``<stem>-<name>.npy``) and mapped copy-on-write (a write stays in memory, the
    file keeps the samples): they take no memory until read, and pickle as their file (``by_file``), so a child process
    maps the same file instead of receiving a copy."""
    if not isinstance(inputs, np.ndarray):
        return {name: mapped(array, folder, f"{stem}-{name}") for name, array in inputs.items()}  # type: ignore[misc]
    path = folder / f"{stem}.npy"
    np.save(path, inputs)
    return np.load(path, mmap_mode="c")


def by_file(inputs: Any) -> Any:
    """For pickling: an array that maps a whole ``.npy`` file (``mapped``) as its file, anything else as it is."""
    if isinstance(inputs, Mapping):
        return {name: by_file(array) for name, array in inputs.items()}
    if isinstance(inputs, np.memmap) and inputs.filename and inputs.flags.c_contiguous and str(inputs.filename).endswith(".npy"):
        whole = np.load(inputs.filename, mmap_mode="r")
        if whole.shape == inputs.shape and whole.dtype == inputs.dtype and inputs.offset == whole.offset:
            return _MappedFile(str(inputs.filename))
    return inputs


def from_file(inputs: Any) -> Any:
    """``by_file``'s inverse, after unpickling."""
    if isinstance(inputs, _MappedFile):
        return np.load(inputs.path, mmap_mode="c")
    if isinstance(inputs, Mapping):
        return {name: from_file(array) for name, array in inputs.items()}
    return inputs


def feed_of(inputs: Inputs, names: Sequence[str]) -> Feed:
    """``inputs`` as a feed for a model whose inputs are ``names``: one array goes to the first; named arrays must match."""
    if isinstance(inputs, np.ndarray):
        return {names[0]: inputs}
    if set(inputs) != set(names):
        raise ValueError(f"the model's inputs are {sorted(names)}; these samples name {sorted(inputs)}")
    return dict(inputs)


@dataclass(frozen=True)
class SearchSet:
    """Samples held out from calibration and evaluation (the validation split) for a build's own choices, with their
    labels where the data has them: one input's batch (an image model) or every named input's. ``groups``: where samples
    come in correlated groups (crops of one photo), each sample's group, so a search's figures get honest intervals."""

    inputs: Inputs
    labels: np.ndarray | None
    fingerprint: str
    groups: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return count_of(self.inputs)

    def mapped(self, folder: Path) -> SearchSet:
        """This set with its inputs saved under ``folder`` and mapped (``mapped``)."""
        return SearchSet(mapped(self.inputs, folder, "search"), self.labels, self.fingerprint, self.groups)

    def __getstate__(self) -> dict[str, Any]:
        return {"inputs": by_file(self.inputs), "labels": self.labels, "fingerprint": self.fingerprint, "groups": self.groups}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in {**state, "inputs": from_file(state["inputs"])}.items():
            object.__setattr__(self, key, value)


class CalibrationSet(Sequence[Feed]):
    """A re-iterable sequence of feeds for INT8 calibration, with a fingerprint.

    ``samples`` holds preprocessed inputs of a one-input model (N, C, H, W float32 for an image), fed under
    ``input_name``; a model with several inputs (token ids and a mask) gives a mapping of named arrays with the same N.
    Each feed is a batch of ``batch_size`` rows of every array.
    """

    def __init__(self, samples: np.ndarray | Mapping[str, np.ndarray], fingerprint: str, *, input_name: str = "input",
                 batch_size: int = 1, search: SearchSet | None = None) -> None:
        arrays = dict(samples) if isinstance(samples, Mapping) else {input_name: samples}
        if not arrays:
            raise ValueError("calibration samples must name at least one input")
        lengths = {len(array) for array in arrays.values()}
        if len(lengths) != 1 or 0 in lengths or any(array.ndim < 1 for array in arrays.values()):
            raise ValueError(f"calibration samples must be non-empty batches of one length, got shapes "
                             f"{ {name: array.shape for name, array in arrays.items()} }")
        if not isinstance(samples, Mapping) and samples.ndim < 2:
            raise ValueError(f"calibration samples must be a non-empty batch, got shape {samples.shape}")
        self.arrays = arrays
        self.fingerprint = fingerprint
        self.input_name = next(iter(arrays)) if isinstance(samples, Mapping) else input_name
        self.batch_size = batch_size
        self.search = search  # held-out samples for the choices a build makes (keep_float: auto), never calibrated on

    @property
    def samples(self) -> np.ndarray:
        """The one input's array; a model with several inputs has none (``arrays`` holds them), so the INT8 options
        that analyse one image input (``keep_float``, ``weight_rounding``) refuse it with this error."""
        if len(self.arrays) != 1:
            raise ValueError(f"this option needs a model with one input; this one has {len(self.arrays)} "
                             f"({', '.join(self.arrays)})")
        return next(iter(self.arrays.values()))

    @property
    def count(self) -> int:
        """How many samples (rows of every array)."""
        return count_of(self.arrays)

    def _with(self, arrays: dict[str, np.ndarray], fingerprint: str, search: SearchSet | None) -> CalibrationSet:
        if len(arrays) == 1 and self.input_name in arrays:
            return CalibrationSet(arrays[self.input_name], fingerprint, input_name=self.input_name, batch_size=self.batch_size,
                                  search=search)
        return CalibrationSet(arrays, fingerprint, batch_size=self.batch_size, search=search)

    def with_search(self, search: SearchSet, method: str = "") -> CalibrationSet:
        """This set carrying ``search``, fingerprinted with it and with the search's ``method`` (a version): a build that
        searches on it depends on both."""
        return self._with(self.arrays, f"{self.fingerprint}+search:{search.fingerprint}" + (f"+{method}" if method else ""), search)

    def mapped(self, folder: Path) -> CalibrationSet:
        """This set with its samples, and its search's, saved under ``folder`` and mapped (``mapped``): they take no memory
        until read, and a child process that builds from it maps the same files instead of receiving copies."""
        search = None if self.search is None else self.search.mapped(folder)
        return self._with(dict(mapped(self.arrays, folder, "calibration")), self.fingerprint, search)  # type: ignore[arg-type]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "arrays": by_file(self.arrays)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({**state, "arrays": from_file(state["arrays"])})

    def __len__(self) -> int:
        return -(-self.count // self.batch_size)

    def __getitem__(self, index: int) -> Feed:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        start = (index % len(self)) * self.batch_size
        return {name: array[start : start + self.batch_size] for name, array in self.arrays.items()}

    def __iter__(self) -> Iterator[Feed]:
        for i in range(len(self)):
            yield self[i]

    def subset(self, size: int) -> CalibrationSet:
        """The first ``size`` samples, fingerprinted as such."""
        if size >= self.count:
            return self
        return self._with(dict(rows_of(self.arrays, 0, size)), f"{self.fingerprint}[:{size}]", self.search)

    def renamed(self, input_name: str) -> CalibrationSet:
        """A one-input set fed under ``input_name`` (the exported model's); a named set keeps its names."""
        if len(self.arrays) != 1:
            return self
        return CalibrationSet(self.samples, self.fingerprint, input_name=input_name, batch_size=self.batch_size, search=self.search)
