"""Shared helpers for the ``fpn_*`` command-line entry points."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from fpnunet.errors import FPNError


def run_cli(func: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main``: print :class:`FPNError` as ``error: ...`` and exit with status 1.

    Any other exception keeps its traceback: that is a bug, not a user error.
    """

    @functools.wraps(func)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            rc = func(argv)
        except FPNError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        rc = 0 if rc is None else int(rc)
        if rc:
            raise SystemExit(rc)
        return rc

    return wrapper


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; validates explicit names."""
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FPNError(f"--device {name} was asked for but CUDA is not available on this machine")
    if name not in ("cpu",) and not name.startswith("cuda") and name != "mps":
        raise FPNError(f"unknown --device {name!r}: expected auto, cpu, cuda or cuda:N")
    return name
