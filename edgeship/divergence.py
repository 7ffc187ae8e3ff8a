"""Where an engine's numbers leave the FP32 model's, layer by layer: every float tensor of the FP32 ONNX compared with the
same tensor inside the engine, run at its deployed precision on the same samples.

Two figures per tensor, both against the FP32 ONNX run on ONNX Runtime:

- SQNR, ``10·log10(Σ ref² / Σ (ref − engine)²)`` in dB over every sample: 40 dB is an error of 1% of the signal's
  amplitude, 20 dB of 10%;
- cosine of each sample's tensor with the reference, averaged over samples.

The figures are *accumulated*: the engine runs from the input, so each tensor carries the error of every layer before it.
A layer's own (local) error would need the engine fed FP32 values in the middle of its graph, which no runtime here
allows; where the accumulated SQNR falls steeply between two layers, the second one is where the error comes from.

Tensors are accumulated as running sums, one sample at a time, so memory grows with the model, not with the samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

TOP_LAYERS = 10  # layers ``edgeship debug`` and the report list per engine
SKIPPED_OPS = frozenset({"Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Range", "ConstantOfShape",
                         "Identity"})  # shape arithmetic and copies: nothing a precision changes


@dataclass(frozen=True)
class TensorSite:
    """One float tensor of the FP32 ONNX: its name, the node that writes it, that node's place in graph order, and the
    node's data inputs (weights and constants left out): what the layer alone is fed for its local error."""

    tensor: str
    node: str
    op_type: str
    depth: int
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tap:
    """An engine's intermediate tensors by FP32 ONNX tensor name (``Runner.tap``): called with a one-sample feed, it
    returns each exposed tensor as float32 in the ONNX layout."""

    method: str  # how the runtime gives them: "ONNX Runtime: tensors marked as graph outputs"…
    exposed: tuple[str, ...]
    call: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    note: str = ""  # what reading them changes or means for this runtime
    by_value: bool = False  # the runtime keeps no ONNX names: ``call`` returns its own tensors, matched by ``match_by_value``
    # each layer alone at the engine's precision, fed the FP32 values of its inputs (the reference's tensors and the feed):
    # tensor name → its value; None where the runtime cannot run a layer on values of one's choosing
    local: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None
    local_note: str = ""  # how the layers were run alone, or why they cannot be


class LocalError(BaseModel):
    """A layer's own error: the layer alone at the engine's precision on the FP32 values of its inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sqnr_db: float | None  # None: exact
    cosine: float


class TensorDivergence(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tensor: str  # the FP32 ONNX tensor name (the engine's own, where the backend keeps the ONNX names)
    node: str
    op_type: str
    depth: int  # the writing node's index in the FP32 ONNX graph's order
    sqnr_db: float | None  # None: the engine's tensor equals the reference exactly (infinite SQNR)
    cosine: float
    local: LocalError | None = None  # None: not measured (the runtime cannot run the layer alone)


class Divergence(BaseModel):
    """One engine's layer-wise divergence from the FP32 ONNX, or why there is none (``reason``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = ""  # how the engine's tensors were read: "ONNX Runtime, tensors marked as outputs"…
    samples: int = 0
    split: str = ""  # the data the samples came from (never calibration or evaluation)
    rows: list[TensorDivergence] = Field(default_factory=list)  # in graph order
    unmapped: list[str] = Field(default_factory=list)  # FP32 tensors the engine does not expose (fused, renamed, removed)
    note: str = ""  # what the figures mean for this backend (a fusion a marked output prevents, a prediction)
    local_note: str = ""  # how each layer's own error was measured, or why it was not
    reason: str = ""  # why there is no divergence

    @property
    def available(self) -> bool:
        return not self.reason

    def worst(self, count: int = TOP_LAYERS) -> list[TensorDivergence]:
        """The ``count`` tensors furthest from FP32, lowest SQNR first (exact tensors last)."""
        return sorted(self.rows, key=lambda r: (_lowest_first(r.sqnr_db), r.depth))[:count]

    @property
    def has_local(self) -> bool:
        return any(row.local is not None for row in self.rows)

    def worst_local(self, count: int = TOP_LAYERS) -> list[TensorDivergence]:
        """The ``count`` layers with the largest error of their own (lowest local SQNR): where to keep float first."""
        rows = [row for row in self.rows if row.local is not None]
        return sorted(rows, key=lambda r: (_lowest_first(r.local.sqnr_db), r.depth))[:count]  # type: ignore[union-attr]

    def steepest(self, count: int = TOP_LAYERS) -> list[tuple[TensorDivergence, float]]:
        """The tensors where the accumulated SQNR falls most from the tensor feeding it in graph order: the likely sources."""
        drops = []
        previous: float | None = None
        for row in self.rows:
            if row.sqnr_db is None:  # exact: nothing fell here
                continue
            if previous is not None:
                drops.append((row, round(previous - row.sqnr_db, 2)))
            previous = row.sqnr_db
        return sorted(drops, key=lambda item: -item[1])[:count]

    @classmethod
    def unavailable(cls, reason: str) -> Divergence:
        return cls(reason=reason)


def _lowest_first(sqnr: float | None) -> float:
    """Sort key for SQNRs, worst first: None (exact) sorts last."""
    return math.inf if sqnr is None else sqnr


@dataclass
class Accumulator:
    """Running sums per tensor: signal and noise energy for the SQNR, cosines for their mean."""

    signal: dict[str, float] = field(default_factory=dict)
    noise: dict[str, float] = field(default_factory=dict)
    cosines: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reference: dict[str, np.ndarray], engine: dict[str, np.ndarray]) -> None:
        """One sample (batch of one): every tensor both sides have, the engine's in the reference's layout."""
        for name, ref in reference.items():
            got = engine.get(name)
            if got is None:
                continue
            a = np.asarray(ref, np.float64).ravel()
            b = np.asarray(got, np.float64).ravel()
            if a.shape != b.shape:
                raise ValueError(f"tensor {name!r}: the engine's has {b.size} values, the FP32 model's {a.size}")
            self.signal[name] = self.signal.get(name, 0.0) + float(a @ a)
            self.noise[name] = self.noise.get(name, 0.0) + float((a - b) @ (a - b))
            similarity = cosine(a, b)  # an engine tensor that overflowed (inf, nan) points nowhere: it agrees with nothing
            self.cosines[name] = self.cosines.get(name, 0.0) + (similarity if math.isfinite(similarity) else 0.0)
            self.counts[name] = self.counts.get(name, 0) + 1

    def figures(self, tensor: str) -> tuple[float | None, float] | None:
        """(SQNR dB, None when exact; mean cosine) of ``tensor``, or None when it was never seen."""
        if tensor not in self.counts:
            return None
        noise = self.noise[tensor]
        # every figure is finite, as JSON keeps it (it has no infinity: -inf would come back as null, read as "exact")
        value = None if noise == 0.0 else round(max(SQNR_FLOOR_DB, min(-SQNR_FLOOR_DB, sqnr_db(self.signal[tensor], noise))), 2)
        return value, round(self.cosines[tensor] / self.counts[tensor], 6)

    def rows(self, sites: list[TensorSite], local: Accumulator | None = None) -> list[TensorDivergence]:
        out = []
        for site in sites:
            figures = self.figures(site.tensor)
            if figures is None:
                continue
            own = local.figures(site.tensor) if local is not None else None
            out.append(TensorDivergence(tensor=site.tensor, node=site.node, op_type=site.op_type, depth=site.depth, sqnr_db=figures[0],
                                        cosine=figures[1], local=LocalError(sqnr_db=own[0], cosine=own[1]) if own else None))
        return out


@dataclass(frozen=True)
class Match:
    """An engine tensor standing for an ONNX tensor: its name and the permutation to the ONNX layout (None: as it is)."""

    engine: str
    perm: tuple[int, ...] | None
    cosine: float


CHANNELS_FIRST = (0, 3, 1, 2)  # NHWC → NCHW
MIN_MATCH_COSINE = 0.9  # below this, a tensor of the right shape is another tensor, not a noisy copy


def match_by_value(reference: dict[str, np.ndarray], engine: dict[str, np.ndarray]) -> dict[str, Match]:
    """For a runtime that renames every tensor (LiteRT after onnx2tf): each ONNX tensor's engine tensor, found on one
    sample by shape (as it is, or NHWC → NCHW) and value. Pairs are taken best cosine first and each engine tensor stands
    for one ONNX tensor, so a fused ``Conv`` + ``Relu`` output goes to the ``Relu`` and the ``Conv`` stays unmatched."""
    pairs: list[tuple[float, str, str, tuple[int, ...] | None]] = []
    for onnx_name, ref in reference.items():
        flat = np.asarray(ref, np.float64).ravel()
        for engine_name, value in engine.items():
            for perm in _layouts(value.shape, ref.shape):
                candidate = value.transpose(perm) if perm else value
                pairs.append((cosine(flat, np.asarray(candidate, np.float64).ravel()), onnx_name, engine_name, perm))
    pairs.sort(key=lambda pair: -pair[0])
    matches: dict[str, Match] = {}
    taken: set[str] = set()
    for value, onnx_name, engine_name, perm in pairs:
        if value < MIN_MATCH_COSINE:
            break
        if onnx_name in matches or engine_name in taken:
            continue
        matches[onnx_name] = Match(engine_name, perm, round(value, 6))
        taken.add(engine_name)
    return matches


def renamed(engine: dict[str, np.ndarray], matches: dict[str, Match]) -> dict[str, np.ndarray]:
    """An engine's tensors under the ONNX names they were matched to, in the ONNX layout."""
    return {name: engine[m.engine].transpose(m.perm) if m.perm else engine[m.engine] for name, m in matches.items()
            if m.engine in engine}


def _layouts(shape: tuple[int, ...], target: tuple[int, ...]) -> list[tuple[int, ...] | None]:
    out: list[tuple[int, ...] | None] = []
    if tuple(shape) == tuple(target):
        out.append(None)
    if len(shape) == 4 and tuple(shape[i] for i in CHANNELS_FIRST) == tuple(target) and tuple(shape) != tuple(target):
        out.append(CHANNELS_FIRST)
    return out


SQNR_FLOOR_DB = -200.0  # what an overflowed or empty tensor's SQNR reads; +200 dB bounds the other side


def sqnr_db(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB from summed energies; a zero signal with noise, or noise beyond float
    range (an FP16 tensor that overflowed to inf), is −inf dB."""
    if noise <= 0.0:
        return math.inf
    ratio = signal / noise
    if signal <= 0.0 or not ratio > 0.0:
        return -math.inf
    return 10.0 * math.log10(ratio)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two flat vectors; two zero vectors agree (1.0), one zero vector does not (0.0)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(a @ b) / (na * nb)


def tensor_sites(onnx_path: Path) -> list[TensorSite]:
    """Every float tensor a node of the FP32 ONNX at ``onnx_path`` writes, in graph order, shape arithmetic left out."""
    import onnx

    model = onnx.load(str(onnx_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    constants = {init.name for init in model.graph.initializer}
    constants |= {output for node in model.graph.node if node.op_type == "Constant" for output in node.output}
    sites = []
    for depth, node in enumerate(model.graph.node):
        if node.op_type in SKIPPED_OPS:
            continue
        inputs = tuple(name for name in node.input if name and name not in constants)
        for output in node.output:
            if output and types.get(output) in floats:
                sites.append(TensorSite(tensor=output, node=node.name or output, op_type=node.op_type, depth=depth, inputs=inputs))
    return sites
