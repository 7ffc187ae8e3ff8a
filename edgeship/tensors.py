"""The shapes data takes between edgeship's parts: precisions, feeds, an engine input's metadata, calibration sets.

A core module: the data module makes calibration sets, the backends consume them, the recipe names precisions.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

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
    batches = [list(call(feed_of(rows_of(inputs, i, i + size), names))) for i in range(0, count_of(inputs), size)]
    return [np.concatenate([batch[k] for batch in batches]) for k in range(len(batches[0]))]


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
    labels where the data has them: one input's batch (an image model) or every named input's."""

    inputs: Inputs
    labels: np.ndarray | None
    fingerprint: str

    def __len__(self) -> int:
        return count_of(self.inputs)


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
