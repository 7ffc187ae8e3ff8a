"""What machine the numbers were measured on, and which tool versions made them."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeship.version import __version__

INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile", "asimddp", "i8mm")
DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # x86 INT8 dot products that add u8×s8 in 32 bits, no saturation
TOOLS = ("torch", "onnx", "onnxruntime", "onnxslim", "onnxscript", "numpy", "pydantic")


def describe_device() -> dict[str, Any]:
    """CPU model, INT8-relevant ISA flags, core counts, memory, OS and the NVIDIA GPU if any."""
    cpu, flags = _cpuinfo()
    info: dict[str, Any] = {
        "cpu": cpu or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "isa_flags": [f for f in INT8_FLAGS if f in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "gpu": nvidia_gpu() or None,
    }
    return info


def saturates_u8s8(device: dict[str, Any] | None) -> bool:
    """Whether ``device`` (``describe_device``) is an x86 CPU whose INT8 products go through ``VPMADDUBSW``: u8×s8 added in
    pairs into 16 bits, which saturates with full-range 8-bit weights (ONNX Runtime's and OpenVINO's kernels). False when
    unknown, and on ARM, whose dot products do not saturate."""
    if not device or device.get("machine") not in ("x86_64", "AMD64"):
        return False
    return not set(device.get("isa_flags") or ()) & set(DOT_PRODUCT_FLAGS)


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in TOOLS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions["edgeship"] = __version__
    return versions


def _cpuinfo() -> tuple[str, set[str]]:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return "", set()
    model, flags = "", set()
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def _memory_gib() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages / 2**30, 1)


def source_revision() -> dict[str, Any]:
    """edgeship's git commit and whether its working tree had changes, when it runs from a checkout."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "note": "not a git checkout (an installed package)"}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def installed_versions(distributions: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each distribution, without importing it."""
    found = {}
    for dist in distributions:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


@functools.cache
def nvidia_gpu() -> str:
    """The first NVIDIA GPU's name from nvidia-smi, or '' when there is none."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


def usable_cpus() -> list[int] | None:
    """The CPUs this process may run on, or ``None`` where the OS has no affinity call."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def pinned_cpus(threads: int, chosen: Sequence[int] | None = None) -> tuple[int, ...] | None:
    """The CPUs a measuring process is pinned to: ``chosen``, else the first ``threads`` usable ones; ``None`` where the
    OS has no affinity call. ``ValueError`` when a chosen CPU is not usable here."""
    usable = usable_cpus()
    if usable is None:
        return None
    if chosen is None:
        return tuple(usable[:threads])
    missing = sorted(set(chosen) - set(usable))
    if missing:
        raise ValueError(f"CPUs {missing} are not usable here; usable: {usable}")
    return tuple(chosen)
