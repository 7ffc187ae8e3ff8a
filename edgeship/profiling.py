"""Where an engine's time goes: each layer's time per inference as the runtime's own profiler reports it, and the kernel
the runtime chose for it (OpenVINO says ``jit_avx512_I8`` or ``ref_any``, so a layer that fell off the fast kernels
shows), summarised by op type.

A profile is taken in its own session after the engine was timed: profilers slow the calls they watch, so their times
are shares of a profiled inference, never the engine's latency.
"""

from __future__ import annotations

from collections import defaultdict

from pydantic import BaseModel, ConfigDict, Field

TOP_LAYERS = 10  # layers a report lists per engine


class LayerTime(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    layer: str  # the runtime's node name (OpenVINO and ONNX Runtime keep the ONNX node names where they did not fuse)
    op_type: str  # as the runtime names it after its own fusions: ``FusedConv``, ``Convolution``…
    kernel: str | None = None  # the implementation the runtime chose, where it says
    mean_us: float


class OpTypeTime(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    op_type: str
    layers: int
    mean_us: float
    share: float  # of the profiled layers' summed time
    kernels: list[str] = Field(default_factory=list)


class OpProfile(BaseModel):
    """One engine's profile, or why there is none (``reason``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tool: str | None  # the profiler: "ONNX Runtime profiler", "OpenVINO performance counters"
    runs: int = 0
    layers_us: float = 0.0  # summed mean time of every profiled layer per inference
    by_type: list[OpTypeTime] = Field(default_factory=list)
    top_layers: list[LayerTime] = Field(default_factory=list)
    layer_count: int = 0
    reason: str = ""  # why there is no profile

    @classmethod
    def unavailable(cls, reason: str) -> OpProfile:
        return cls(tool=None, reason=reason)

    @classmethod
    def from_layers(cls, tool: str, runs: int, layers: list[LayerTime]) -> OpProfile:
        """Summarise per-layer mean times: by op type (time, share, kernels) and the slowest layers."""
        total = sum(layer.mean_us for layer in layers)
        grouped: dict[str, list[LayerTime]] = defaultdict(list)
        for layer in layers:
            grouped[layer.op_type].append(layer)
        by_type = [OpTypeTime(op_type=op, layers=len(group), mean_us=round(sum(g.mean_us for g in group), 2),
                              share=round(sum(g.mean_us for g in group) / total, 4) if total else 0.0,
                              kernels=sorted({g.kernel for g in group if g.kernel}))
                   for op, group in grouped.items()]
        by_type.sort(key=lambda t: -t.mean_us)
        top = sorted(layers, key=lambda layer: -layer.mean_us)[:TOP_LAYERS]
        return cls(tool=tool, runs=runs, layers_us=round(total, 2), by_type=by_type,
                   top_layers=[layer.model_copy(update={"mean_us": round(layer.mean_us, 2)}) for layer in top], layer_count=len(layers))
