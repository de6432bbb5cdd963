"""The planner's small rules: constants and pure functions of the fingerprint, a patch or a budget.

:mod:`fpnunet.plans.planner` applies them (docs/planner.md has the reasoning):

* memory: :func:`memory_budget_bytes` (the GPU's memory less :data:`CUDA_CONTEXT_RESERVE_BYTES`),
  :func:`detect_gpu_memory_gb` (free memory of the CUDA device, else :data:`DEFAULT_GPU_MEMORY_GB`);
* depth: :func:`depth_crop_rows` (p95 retina band + :data:`DEPTH_CROP_MARGIN`, capped at the
  median depth) and :func:`choose_depth` (power of two >= half the crop, clamped);
* batch cap: :func:`training_enface_area`, of which a batch covers at most
  :data:`BATCH_DATASET_FRACTION`;
* en-face patch: :func:`round_to` / :func:`floor_to` a network divisor, and :func:`shrink_axis` /
  :func:`shrunk_patch`, the next one-divisor cut of the patch-size search (the axis spanning the
  most millimetres; on a tie the smaller spacing, so the fine A axis of a Spectralis volume is
  cut first).
"""
from __future__ import annotations

import math
from typing import Any

import torch

DEFAULT_GPU_MEMORY_GB = 8.0
"""Target when no GPU memory is given and no CUDA device can be asked."""
CUDA_CONTEXT_RESERVE_BYTES = 512 * 2**20
"""Kept off every budget for the CUDA context and cuDNN/cuBLAS handles (300-600 MB), which
``max_memory_allocated`` (what the estimate models) does not see."""
DEFAULT_PRECISION = "bf16"
DEPTH_CROP_MARGIN = 0.15
"""The depth crop is the p95 retina band height plus this share (thicker pathology, tilt)."""
DEPTH_FLOOR = 64
DEPTH_CAP = 128
MIN_BATCH_SIZE = 2
MAX_BATCH_SIZE = 16
BATCH_DATASET_FRACTION = 0.05
"""A batch covers at most this share of the training cases' total en-face area (nnU-Net's 5 %):
larger batches on a small dataset mostly repeat the same pixels within one step."""


# ----------------------------------------------------------------------------- memory
def memory_budget_bytes(gpu_memory_gb: float) -> int:
    """Bytes a training step may allocate on a GPU of ``gpu_memory_gb`` GiB (context reserve off)."""
    return int(gpu_memory_gb * 2**30) - CUDA_CONTEXT_RESERVE_BYTES


def detect_gpu_memory_gb() -> tuple[float, str]:
    """``(GiB, where it came from)``: free memory of the current CUDA device, else the default."""
    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return free / 2**30, f"free on {torch.cuda.get_device_name()}"
    return DEFAULT_GPU_MEMORY_GB, "default target (no CUDA device found)"


# ----------------------------------------------------------------------------- depth
def depth_crop_rows(fingerprint: dict[str, Any]) -> int:
    """Raw depth rows kept around the retina band: p95 band height + 15 %, capped at the median depth."""
    median_depth = int(fingerprint["median_shape"][1])
    band = fingerprint.get("retina_band_height_p95") or fingerprint.get("retina_band_height_max") or median_depth
    return max(1, min(median_depth, math.ceil(float(band) * (1.0 + DEPTH_CROP_MARGIN))))


def choose_depth(crop: int, min_depth: int = 1) -> int:
    """Depth target: the smallest power of two >= ``crop / 2`` (a shrink factor in (1, 2]),
    clamped to ``[max(64, min_depth), max(128, min_depth)]``."""
    target = 2 ** max(0, math.ceil(math.log2(max(1.0, crop / 2))))
    return int(min(max(DEPTH_CAP, min_depth), max(DEPTH_FLOOR, min_depth, target)))


# ----------------------------------------------------------------------------- batch
def training_enface_area(fingerprint: dict[str, Any]) -> int:
    """Total en-face pixels ``B x A`` of the labelled cases (all cases when none is labelled)."""
    cases = fingerprint.get("cases") or {}
    shapes = [c["shape"] for c in cases.values() if c.get("labelled")] or [c["shape"] for c in cases.values()]
    if shapes:
        return int(sum(int(s[0]) * int(s[2]) for s in shapes))
    b, _, a = fingerprint["median_shape"]
    n = int(fingerprint.get("num_labelled") or fingerprint.get("num_cases") or 1)
    return n * int(b) * int(a)


# ----------------------------------------------------------------------------- en-face patch
def round_to(size: float, div: int) -> int:
    """Nearest multiple of ``div`` (ties up), at least ``div``."""
    return max(div, div * int(math.floor(size / div + 0.5)))


def floor_to(size: int, div: int) -> int:
    """Largest multiple of ``div`` <= ``size``, at least ``div``."""
    return max(div, div * (size // div))


def shrink_axis(patch: tuple[int, int], steps: tuple[int, int], spacing: tuple[float, float]) -> int | None:
    """The axis to cut next: most millimetres; on a tie the smaller spacing. None: both at minimum."""
    movable = [i for i in (0, 1) if patch[i] - steps[i] >= steps[i]]
    if not movable:
        return None
    return max(movable, key=lambda i: (round(patch[i] * spacing[i], 9), -spacing[i]))


def shrunk_patch(
    patch: tuple[int, int], steps: tuple[int, int], spacing: tuple[float, float]
) -> tuple[int, int] | None:
    """``patch`` less one divisor step on :func:`shrink_axis`; None when neither axis can shrink."""
    axis = shrink_axis(patch, steps, spacing)
    if axis is None:
        return None
    out = list(patch)
    out[axis] -= steps[axis]
    return out[0], out[1]
