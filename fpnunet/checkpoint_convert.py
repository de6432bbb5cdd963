"""Converting checkpoints of an older fpnunet, once (the ``fpn_convert_checkpoint`` command is
:mod:`fpnunet.commands.convert_checkpoint`).

Checkpoints written before checkpoint format 2 pickled numpy's RNG state (arrays, dtypes,
scalars), so ``torch.load(weights_only=True)`` refuses them. This command reads such a file with
the weights-only loader plus exactly those numpy names allowed (it still refuses a file that
would import anything else), turns every numpy value into a tensor or a plain value, adds the
format key, and replaces the file atomically (``-o`` writes elsewhere). Run it only on files you
trust: they come from your own older runs.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fpnunet.checkpoint import FORMAT, FORMAT_NAME, SPEC_KEYS, is_old_format_global, save_checkpoint, to_plain
from fpnunet.errors import FPNError


def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _load_old(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FPNError(f"{path}: checkpoint not found")
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as exc:  # noqa: BLE001  not a torch zip file
        raise FPNError(f"{path}: not a torch checkpoint file ({type(exc).__name__}: {exc})") from None
    bad = [n for n in names if not is_old_format_global(n)]
    if bad:
        raise FPNError(f"{path}: refused: it would import {', '.join(bad[:3])}, which no fpnunet checkpoint "
                       f"contains (unpickling it could run code)")
    try:
        dtypes = [type(np.dtype(t)) for t in ("u1", "u4", "u8", "i4", "i8", "f4", "f8", "?")]
        with torch.serialization.safe_globals([_resolve(n) for n in names] + dtypes):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  any failure is a bad file for the user
        raise FPNError(f"{path}: cannot read it ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or any(k not in obj for k in SPEC_KEYS):
        raise FPNError(f"{path}: not an fpnunet checkpoint (missing {', '.join(k for k in SPEC_KEYS if k not in obj)})"
                       if isinstance(obj, dict) else f"{path}: not an fpnunet checkpoint")
    return obj


def _numpy_free(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.array(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _numpy_free(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_numpy_free(v) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def _convert_rng(rng: Any) -> Any:
    """Format-1 RNG states (numpy / python tuples) -> format 2 (see fpnunet.checkpoint.rng_state)."""
    if not isinstance(rng, dict):
        return rng
    out = dict(rng)
    n = rng.get("numpy")
    if isinstance(n, tuple) and len(n) == 5:
        out["numpy"] = {"kind": str(n[0]), "keys": torch.from_numpy(np.asarray(n[1], dtype=np.int64)),
                        "pos": int(n[2]), "has_gauss": int(n[3]), "cached_gaussian": float(n[4])}
    p = rng.get("python")
    if isinstance(p, tuple) and len(p) == 3:
        out["python"] = {"version": int(p[0]), "state": torch.tensor(list(p[1]), dtype=torch.int64),
                         "gauss_next": None if p[2] is None else float(p[2])}
    return out


def convert_checkpoint(path: str | Path, out: str | Path | None = None) -> Path:
    """Convert one format-1 checkpoint; returns where the converted file was written."""
    path = Path(path)
    obj = _load_old(path)
    fmt = obj.get("format")
    if isinstance(fmt, dict) and fmt.get("name") == FORMAT_NAME and out is None:
        print(f"{path}: already checkpoint format {fmt.get('version')}; nothing to do")
        return path
    if "rng" in obj:
        obj["rng"] = _convert_rng(obj["rng"])
    obj = _numpy_free(obj)
    target = Path(out) if out is not None else path
    try:
        save_checkpoint(to_plain(obj | {"format": dict(FORMAT)}), target)
    except TypeError as exc:
        raise FPNError(f"{path}: cannot be converted ({exc})") from None
    print(f"{path}: converted to checkpoint format {FORMAT['version']} -> {target}")
    return target
