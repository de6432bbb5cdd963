"""``--precision auto`` on the CPU: bf16 only where the CPU computes it natively AND it is faster.

On a CPU with ``avx512_bf16`` (or AMX) oneDNN runs bf16 convolutions natively and bf16 autocast
can beat fp32; on a CPU without them bf16 is emulated and 10-20x slower. So the decision is:

1. the CPU's flags (``/proc/cpuinfo``) lack ``avx512_bf16`` and ``amx_bf16``: fp32, no probe;
2. otherwise a short probe (well under a second of compute) times a channels-last FPN-like
   convolution block, forward and backward, in fp32 and under bf16 autocast, interleaved, and
   picks bf16 only if it took less than :data:`BF16_MIN_SPEEDUP` of the fp32 time.

The result is cached per CPU model, torch version and thread count in
``$XDG_CACHE_HOME/fpnunet/precision_probe.json`` (``~/.cache/...``), so the probe runs once per
machine. :attr:`Bf16Decision.reason` says which way it went and why; the training and
prediction commands print it.

The environment variable ``FPN_CPU_BF16`` overrides steps 1-2 (no probe, no cache): ``1`` forces
bf16 (slow emulation on a CPU without native bf16), ``0`` forces fp32, unset or ``auto`` decides
as above. The test suite pins it (``0`` unless the caller set it) so that no test's outcome
depends on the CPU that runs it.

Usage::

    decision = cpu_bf16_decision()
    decision.use_bf16, decision.reason
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fpnunet.errors import FPNError

__all__ = ["Bf16Decision", "cpu_bf16_decision", "cpu_bf16_native", "cpu_model", "probe_bf16_speed",
           "BF16_MIN_SPEEDUP", "ENV_CPU_BF16", "forced_cpu_bf16", "resolve_cpu_precision"]

ENV_CPU_BF16 = "FPN_CPU_BF16"
"""``1`` / ``0`` force bf16 / fp32 for ``--precision auto`` on the CPU; unset or ``auto``: decide."""

_FORCE_VALUES = {"1": True, "on": True, "bf16": True, "true": True, "yes": True,
                 "0": False, "off": False, "fp32": False, "false": False, "no": False}

BF16_MIN_SPEEDUP = 0.9
"""bf16 is used when its probe time is below this fraction of the fp32 time (10 % faster at least:
the probe is short and the machine may be busy)."""

_NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass
class Bf16Decision:
    """``use_bf16``; ``reason`` (one line); ``ratio``: bf16 / fp32 probe time (None: no probe)."""

    use_bf16: bool
    reason: str
    ratio: float | None = None


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "unknown CPU"


def cpu_bf16_native() -> list[str]:
    """The native bf16 flags this CPU has (``avx512_bf16``, ``amx_bf16``); empty when none."""
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in _NATIVE_FLAGS if f in flags]


def probe_bf16_speed(repeats: int = 3) -> float:
    """bf16 / fp32 time of a channels-last ``(1,3,3)`` + ``(3,1,1)`` conv block, forward + backward
    (median of ``repeats`` interleaved pairs after one warm-up each)."""
    from torch import nn

    torch.manual_seed(0)
    block = nn.Sequential(
        nn.Conv3d(32, 32, (1, 3, 3), padding=(0, 1, 1), bias=False), nn.BatchNorm3d(32), nn.ReLU(),
        nn.Conv3d(32, 32, (3, 1, 1), padding=(1, 0, 0), bias=False), nn.BatchNorm3d(32), nn.ReLU(),
    )
    block.to(memory_format=torch.channels_last_3d)  # every weight is 5D: the plain call works
    x = torch.randn(2, 32, 8, 32, 32).contiguous(memory_format=torch.channels_last_3d)

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = block(x)
        out.float().sum().backward()
        return time.perf_counter() - t0

    step(False), step(True)
    pairs = [(step(False), step(True)) for _ in range(repeats)]
    ratios = sorted(b / f for f, b in pairs)
    return ratios[len(ratios) // 2]


def _cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "fpnunet" / "precision_probe.json"


def forced_cpu_bf16() -> bool | None:
    """``True`` / ``False`` when ``FPN_CPU_BF16`` forces bf16 / fp32, ``None`` when unset or ``auto``."""
    value = os.environ.get(ENV_CPU_BF16, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in _FORCE_VALUES:
        raise FPNError(f"{ENV_CPU_BF16}={os.environ[ENV_CPU_BF16]!r}: expected 1 (force bf16), 0 (force fp32) "
                       "or auto")
    return _FORCE_VALUES[value]


def cpu_bf16_decision(use_cache: bool = True) -> Bf16Decision:
    """Whether bf16 autocast should be used on this CPU (see the module notes)."""
    forced = forced_cpu_bf16()
    if forced is not None:
        return Bf16Decision(forced, f"{'bf16' if forced else 'fp32'}: forced by {ENV_CPU_BF16}="
                                    f"{os.environ[ENV_CPU_BF16].strip()}")
    model = cpu_model()
    native = cpu_bf16_native()
    if not native:
        return Bf16Decision(False, f"fp32: this CPU ({model}) has no native bf16 (avx512_bf16/amx_bf16), "
                                   "where bf16 is emulated and many times slower")
    key = f"{model}|torch {torch.__version__}|threads {torch.get_num_threads()}"
    path = _cache_path()
    cache: dict = {}
    if use_cache and path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
        if isinstance(cache.get(key), dict):
            return Bf16Decision(**cache[key])
    ratio = probe_bf16_speed()
    use = ratio < BF16_MIN_SPEEDUP
    decision = Bf16Decision(use, f"{'bf16' if use else 'fp32'}: this CPU ({model}) has {', '.join(native)}; "
                                 f"the probe ran bf16 in {ratio:.2f}x the fp32 time "
                                 f"({'<' if use else '>='} {BF16_MIN_SPEEDUP})", ratio)
    if use_cache:
        try:
            cache = cache if isinstance(cache, dict) else {}
            cache[key] = asdict(decision)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only home: probe again next time
    return decision


def resolve_cpu_precision(plan_precision: str) -> tuple[str, str]:
    """``(precision, reason)`` for ``--precision auto`` on the CPU: the plan's ``bf16`` only where
    :func:`cpu_bf16_decision` finds it native and faster; ``fp32`` plans stay fp32."""
    if plan_precision == "fp32":
        return "fp32", "fp32: the plan's precision"
    decision = cpu_bf16_decision()
    return ("bf16" if decision.use_bf16 else "fp32"), decision.reason
