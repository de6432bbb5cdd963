"""Atomic file writes: write to a temporary name in the same folder, then ``os.replace``.

A crash or Ctrl-C never leaves a half-written output under the final name.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpnunet.errors import FPNError

if TYPE_CHECKING:
    import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    ``suffix`` defaults to the full file ending of ``path`` (e.g. ``.nii.gz``) so writers that
    pick the format from the extension (SimpleITK, numpy) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as exc:  # a read-only folder: name the file the user asked for, not the temporary one
        raise _naming(exc, path, None) from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the result the mode open() would
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):  # disk full mid-write (no file name) or on the temporary name
            raise _naming(exc, path, tmp) from None
        raise


def _naming(exc: OSError, path: Path, tmp: str | None) -> OSError:
    """``exc`` naming ``path`` when it named no file or a temporary one (so the one-line error the
    commands print, ``error: <path>: <reason>``, names the output that could not be written)."""
    prefix = str(path.parent / f".{path.name}.")
    named = None if exc.filename is None else str(exc.filename)
    if exc.filename2 is not None or (named is not None and named != tmp and not named.startswith(prefix)):
        return exc
    reason = exc.strerror or str(exc) or type(exc).__name__
    return type(exc)(exc.errno, reason, str(path)) if exc.errno is not None else OSError(reason, str(path))


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], Any], suffix: str | None = None) -> None:
    with atomic_path(path, suffix) as tmp:
        writer(tmp)


def save_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    def _w(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, default=_json_default)
            f.write("\n")

    write_atomic(path, _w, suffix=".json")


def load_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def read_json_object(path: str | os.PathLike, missing: str) -> dict[str, Any]:
    """The JSON object in ``path``. A missing file (``missing`` says why it matters), invalid JSON or
    another JSON value is one :class:`~fpnunet.errors.FPNError` naming the file."""
    if not Path(path).is_file():
        raise FPNError(f"{path}: {missing}")
    try:
        d = load_json(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise FPNError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise FPNError(f"{path}: expected a JSON object at the top level")
    return d


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    import numpy as np  # lazily: the command-line parsers import this module and must stay light

    def _w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))

    write_atomic(path, _w, suffix=".npy")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
