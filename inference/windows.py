"""Window planning for inference: the whole en-face plane in one forward when memory allows.

Training needs small patches (activations are kept for backward); inference in
``torch.inference_mode`` keeps only the live tensors of one forward, so on most machines the whole
en-face plane fits at once. One window instead of the training patch grid (3 x 3 overlapping
32 x 256 windows for a 49 x 512 Spectralis plane) computes every pixel once instead of about
three times, and needs no blending at all.

:func:`plan_windows` picks, for a plane ``(B, A)``:

1. ``whole``: one window over the plane (padded to the network's input divisors), all TTA flips
   in one forward, if that forward's estimated peak fits the budget;
2. the same, one flip per forward;
3. ``tiles``: the fewest larger windows (the plane split into 2, 3, ... parts along A, then B)
   that fit, overlapping by a quarter of the training patch, blended with smooth ramps only
   where they overlap (:func:`overlap_weights`);
4. ``patch``: the training patch grid with Gaussian weights (the old behaviour), when nothing
   larger fits.

The estimate (:func:`inference_bytes_per_pixel`) runs the network once on the ``meta`` device
(no memory, no compute) and tracks the bytes of the tensors alive at each op, so its peak is
the forward's working set in inference mode; it scales with the number of en-face pixels.
The budget is a share of the memory at hand (``MemAvailable`` on the CPU, free memory on CUDA)
minus the weights; the share left over is the explicit safety margin, printed by
:meth:`WindowPlan.describe`.
"""
from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fpnunet.plans.memory import copy_to_device

__all__ = ["WindowPlan", "plan_windows", "overlap_weights", "inference_bytes_per_pixel", "available_memory",
           "WINDOW_MODES", "MEMORY_SHARE"]

WINDOW_MODES = ("auto", "whole", "patch")
MEMORY_SHARE = {"cpu": 0.5, "cuda": 0.8}
"""Share of the available memory a forward may use; the rest is the safety margin (other
processes, allocator fragmentation, the accumulation buffers)."""


# ----------------------------------------------------------------------------- estimate
class _LiveBytes(TorchDispatchMode):
    """Peak bytes of the tensors alive during the ops it sees (storage-level, views counted once)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.refs: dict[int, list[int]] = {}

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[key]

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        entry = self.refs.get(key)
        if entry is None:
            entry = self.refs[key] = [0, int(storage.nbytes())]
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def forward_peak_bytes(network: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
    """Peak bytes of the live tensors (input included, weights excluded) of one inference forward
    of ``network`` on ``input_shape`` ``(N, C, B, D, A)``, counted on the ``meta`` device."""
    net = copy_to_device(network, "meta").to(dtype).eval()
    x = torch.empty(tuple(int(s) for s in input_shape), dtype=dtype, device="meta")
    mode = _LiveBytes()
    with torch.inference_mode(), mode:
        mode.track(x)
        out = net(x)
        del out
    return mode.peak


def inference_bytes_per_pixel(network: nn.Module, in_channels: int, depth: int, window: Sequence[int],
                              dtype: torch.dtype = torch.float32) -> float:
    """Forward peak bytes per en-face pixel (per sample), from a ``meta`` forward at ``window``."""
    b, a = int(window[0]), int(window[1])
    return forward_peak_bytes(network, (1, in_channels, b, depth, a), dtype) / (b * a)


def available_memory(device: torch.device) -> int:
    """Bytes available now: free CUDA memory, or the kernel's ``MemAvailable`` on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


# ----------------------------------------------------------------------------- blending
def _ramp(n: int) -> torch.Tensor:
    """``n`` weights rising smoothly (half a cosine) from near 0 to near 1, excluding both ends."""
    i = torch.arange(1, n + 1, dtype=torch.float64) / (n + 1)
    return 0.5 - 0.5 * torch.cos(math.pi * i)


def _axis_weights(starts: list[int], size: int) -> list[torch.Tensor]:
    out = []
    for k, s in enumerate(starts):
        w = torch.ones(size, dtype=torch.float64)
        if k > 0:
            o = starts[k - 1] + size - s
            if o > 0:
                w[:o] = _ramp(o)
        if k + 1 < len(starts):
            o = s + size - starts[k + 1]
            if o > 0:
                w[size - o:] = _ramp(o).flip(0)
        out.append(w)
    return out


def overlap_weights(starts_b: list[int], starts_a: list[int], window: Sequence[int]
                    ) -> dict[tuple[int, int], torch.Tensor]:
    """Blending weights ``(pB, pA)`` per window start ``(sb, sa)``: 1 where a window is alone,
    smooth complementary ramps where neighbours overlap (they sum to 1 there)."""
    wb = _axis_weights(starts_b, int(window[0]))
    wa = _axis_weights(starts_a, int(window[1]))
    return {(sb, sa): (wb[i][:, None] * wa[j][None, :]).to(torch.float32)
            for i, sb in enumerate(starts_b) for j, sa in enumerate(starts_a)}


# ----------------------------------------------------------------------------- the plan
@dataclass
class WindowPlan:
    """How a plane is cut for inference.

    ``mode``: ``whole``, ``tiles`` or ``patch``; ``window``: ``(pB, pA)``; ``starts_b``/``starts_a``:
    window offsets in the padded plane ``padded``; ``flips_per_forward``: TTA flips batched in one
    forward (4, or 1 when all four do not fit); ``estimate_bytes``: the estimated peak of one
    forward; ``budget_bytes``: what a forward may use; ``margin_bytes``: the memory at hand kept
    free (the safety margin); ``weights_bytes``: the networks' weights.
    """

    mode: str
    window: tuple[int, int]
    padded: tuple[int, int]
    starts_b: list[int] = field(default_factory=list)
    starts_a: list[int] = field(default_factory=list)
    flips_per_forward: int = 1
    estimate_bytes: int = 0
    budget_bytes: int = 0
    margin_bytes: int = 0
    weights_bytes: int = 0

    @property
    def num_windows(self) -> int:
        return len(self.starts_b) * len(self.starts_a)

    def describe(self) -> str:
        gib = 2**30
        return (f"window plan: {self.mode}, {self.num_windows} window(s) of {self.window[0]} x {self.window[1]} "
                f"over the padded plane {self.padded[0]} x {self.padded[1]}, {self.flips_per_forward} flip(s) per "
                f"forward; forward estimate {self.estimate_bytes / gib:.2f} GiB <= budget "
                f"{self.budget_bytes / gib:.2f} GiB (weights {self.weights_bytes / gib:.2f} GiB, "
                f"safety margin {self.margin_bytes / gib:.2f} GiB kept free)")


def _round_up(x: int, d: int) -> int:
    return int(math.ceil(x / d) * d)


def _split(total: int, parts: int, overlap: int, div: int) -> tuple[int, list[int]]:
    """Window size (multiple of ``div``) and starts splitting ``[0, total)`` into ``parts`` windows
    overlapping by at least ``overlap``."""
    if parts == 1:
        return total, [0]
    size = min(total, _round_up(math.ceil((total + (parts - 1) * overlap) / parts), div))
    step = (total - size) / (parts - 1)
    return size, [int(round(step * k)) for k in range(parts)]


def window_starts(size: int, patch: int, step_fraction: float = 0.5) -> list[int]:
    """Start offsets of windows of length ``patch`` covering ``[0, size)`` with overlap.

    The step is at most ``patch * step_fraction``; windows are spread evenly so that the first
    starts at 0 and the last ends at ``size`` (nnU-Net's rule). ``size <= patch`` gives ``[0]``
    (the caller pads the volume up to the patch).
    """
    if not 0 < step_fraction <= 1:
        raise ValueError(f"step_fraction must be in (0, 1], got {step_fraction}")
    if size <= patch:
        return [0]
    target_step = max(patch * step_fraction, 1.0)
    num = math.ceil((size - patch) / target_step) + 1
    actual = (size - patch) / (num - 1)
    return [int(round(actual * i)) for i in range(num)]


def plan_windows(
    plane: tuple[int, int],
    patch: tuple[int, int],
    divisors: tuple[int, int],
    *,
    bytes_per_pixel: float,
    flips: int,
    available_bytes: int,
    share: float,
    weights_bytes: int = 0,
    mode: str = "auto",
    step_fraction: float = 0.5,
) -> WindowPlan:
    """Choose the windows for a plane ``(B, A)`` (see the module notes).

    ``bytes_per_pixel``: forward peak per en-face pixel and sample; ``flips``: TTA flips (4 or
    1); ``available_bytes``: memory at hand; ``share``: the part of it (after the weights) a forward
    may use; ``mode``: ``auto`` (fit to memory), ``whole`` (one window whatever the estimate) or
    ``patch`` (the training patch grid).
    """
    if mode not in WINDOW_MODES:
        raise ValueError(f"window mode must be one of {WINDOW_MODES}, got {mode!r}")
    b, a = int(plane[0]), int(plane[1])
    db, da = int(divisors[0]), int(divisors[1])
    pb, pa = max(b, int(patch[0])), max(a, int(patch[1]))  # the plane is padded up to the patch at least
    whole = (_round_up(b, db), _round_up(a, da))
    usable = max(0, available_bytes - weights_bytes)
    budget = int(usable * share)
    margin = usable - budget

    def est(window: tuple[int, int], n: int) -> int:
        return int(math.ceil(bytes_per_pixel * window[0] * window[1] * n))

    base = dict(budget_bytes=budget, margin_bytes=margin, weights_bytes=weights_bytes)
    if mode in ("auto", "whole"):
        for n in dict.fromkeys((flips, 1)):
            if mode == "whole" or est(whole, n) <= budget:
                return WindowPlan("whole", whole, whole, [0], [0], n, est(whole, n), **base)
    if mode == "auto":
        overlap = (max(db, _round_up(int(patch[0]) // 4, db)), max(da, _round_up(int(patch[1]) // 4, da)))
        for parts in range(2, 65):
            # split A first (the long axis of an OCT plane), B when A is down to the patch
            parts_a = min(parts, max(1, whole[1] // max(int(patch[1]), 1)))
            parts_b = max(1, math.ceil(parts / parts_a))
            size_b, starts_b = _split(whole[0], parts_b, overlap[0], db)
            size_a, starts_a = _split(whole[1], parts_a, overlap[1], da)
            if size_b <= int(patch[0]) and size_a <= int(patch[1]):
                break
            for n in dict.fromkeys((flips, 1)):
                if est((size_b, size_a), n) <= budget:
                    return WindowPlan("tiles", (size_b, size_a), whole, starts_b, starts_a, n,
                                      est((size_b, size_a), n), **base)
    window = (int(patch[0]), int(patch[1]))
    padded = (pb, pa)
    return WindowPlan("patch", window, padded, window_starts(pb, window[0], step_fraction),
                      window_starts(pa, window[1], step_fraction), flips, est(window, flips), **base)
