"""Shared helpers for the ``fpn_*`` command-line entry points."""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from fpnunet.cli_args import print_data_roots
from fpnunet.errors import FPNError


def run_cli(func: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main``: print :class:`FPNError` as ``error: ...`` and exit with status 1.

    An :class:`OSError` (permission denied, not a directory, disk full, ...) is the user's to fix
    too: it becomes ``error: <path>: <reason>``, status 1. Any other exception keeps its
    traceback: that is a bug, not a user error.
    """

    @functools.wraps(func)
    def wrapper(argv: list[str] | None = None) -> int:
        tune_malloc()
        try:
            rc = func(argv)
        except FPNError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        except OSError as exc:
            print(f"error: {describe_os_error(exc)}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        rc = 0 if rc is None else int(rc)
        if rc:
            raise SystemExit(rc)
        return rc

    return wrapper


def describe_os_error(exc: OSError) -> str:
    """``<path>: <reason>`` (``<path> -> <other>: <reason>`` for a rename) in one line."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, FileExistsError) and exc.filename is not None and os.path.isfile(exc.filename):
        reason = "Not a directory (a file is in the way of a folder)"
    if exc.filename is None:
        return reason
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{where}: {reason}"


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


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MALLOC_THRESHOLD_BYTES = 1 << 30


def tune_malloc(threshold: int = MALLOC_THRESHOLD_BYTES) -> bool:
    """Stop glibc from returning freed activation memory to the OS after every step.

    With the default thresholds a training step of a 3D network page-faults its activations
    back in every iteration; raising ``M_MMAP_THRESHOLD``/``M_TRIM_THRESHOLD`` made steps
    1.3-2x faster here at +1-3 GB RSS (docs/networks.md). The same effect as setting
    ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``, applied at run time. Skipped when
    ``FPN_NO_MALLOC_TUNING=1``, when those variables are already set, or off glibc.
    Returns whether it was applied.
    """
    if os.environ.get("FPN_NO_MALLOC_TUNING") == "1" or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, int(threshold)) == 1 and ok
    except (OSError, AttributeError):
        return False
    return ok


def run_command(argv: list[str] | None, build_parser: Callable[[], Any], config_from_args: Callable[[Any], Any],
                run: Callable[[Any], int]) -> int:
    """The one shape of a command: parse -> config (every flag checked, nothing touched yet) -> the
    data-roots line -> ``run(config)``. A command's ``main`` is ``run_cli`` around this call."""
    config = config_from_args(build_parser().parse_args(argv))
    print_data_roots()
    return run(config)
