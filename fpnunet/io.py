"""Image I/O through SimpleITK and the en-face geometry of a volume.

Axis conventions (numpy order everywhere in fpnunet):

* a volume is ``(B, D, A)``: B-scans (slow axis), depth (axial, the axis that is collapsed),
  A-scans (fast axis). SimpleITK calls that size ``(A, D, B)``.
* the en-face plane is ``(B, A)``; labels and en-face images live on it (SimpleITK size
  ``(A, B)``, spacing ``(sA, sB)``).
* spacings returned here are in numpy order, in the file's unit (mm for NIfTI/MHA from
  scanners); origins and directions stay in SimpleITK's (x, y, z) order since they are only
  ever handed back to SimpleITK.

The raw dataset folder (``dataset.json`` and its sub-folders) is :mod:`fpnunet.raw_dataset`.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fpnunet.atomic import atomic_path
from fpnunet.errors import FPNError

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".tif", ".tiff", ".bmp", ".jpg")


# ----------------------------------------------------------------------------- images
@dataclass
class Image:
    """An image read by SimpleITK: ``array`` in numpy order, ``spacing`` in numpy order."""

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    path: str = ""

    @property
    def ndim(self) -> int:
        return self.array.ndim


def file_ending(path: str | os.PathLike) -> str:
    name = Path(path).name.lower()
    for end in sorted(SUPPORTED_ENDINGS, key=len, reverse=True):
        if name.endswith(end):
            return end
    return Path(path).suffix.lower()


def strip_ending(name: str) -> str:
    end = file_ending(name)
    return name[: -len(end)] if end and name.lower().endswith(end) else name


def read_image(path: str | os.PathLike) -> Image:
    """Read any format SimpleITK reads. Multi-component pixels (RGB PNG) are averaged to grey.

    Raises :class:`FPNError` naming the file when it cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FPNError(f"{path}: file not found")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise FPNError(f"{path}: SimpleITK cannot read this file as an image ({first})") from None
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = arr.astype(np.float32).mean(axis=-1)
    spacing = tuple(float(s) for s in reversed(img.GetSpacing()))
    return Image(arr, spacing, tuple(img.GetOrigin()), tuple(img.GetDirection()), str(path))


def write_image(
    path: str | os.PathLike,
    array: np.ndarray,
    spacing: tuple[float, ...],
    origin: tuple[float, ...] | None = None,
    direction: tuple[float, ...] | None = None,
) -> None:
    """Write ``array`` (numpy order) with ``spacing`` (numpy order), atomically.

    PNG holds only uint8/uint16: integer arrays that fit are cast, anything else is an error.
    """
    path = Path(path)
    end = file_ending(path)
    arr = np.asarray(array)
    if end == ".png":
        if arr.dtype.kind == "b":
            arr = arr.astype(np.uint8)
        if arr.dtype.kind in "iu" and arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535:
            arr = arr.astype(np.uint8 if arr.max(initial=0) <= 255 else np.uint16)
        else:
            raise FPNError(f"{path}: PNG stores only uint8/uint16 values; got {arr.dtype}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(s) for s in reversed(spacing)])
    if origin is not None:
        img.SetOrigin([float(o) for o in origin])
    if direction is not None:
        img.SetDirection([float(d) for d in direction])
    try:
        with atomic_path(path, suffix=end) as tmp:
            sitk.WriteImage(img, str(tmp), useCompression=end in (".nii.gz", ".mha", ".nrrd"))
    except RuntimeError as exc:  # SimpleITK's failed write (disk full, ...) names the temporary file
        last = (str(exc).strip().splitlines() or ["write failed"])[-1].replace(str(tmp), path.name)
        raise FPNError(f"{path}: cannot write the image (disk full or read-only? SimpleITK: {last[:160]})") from None


def check_output_ending(ending: str | None) -> None:
    """Refuse an output ending SimpleITK cannot write a mask in (``--file-ending .exe``), before
    any model runs: a 2x2 uint8 image is written with it into a temporary folder. ``None``: nothing
    to check (the dataset's ending is used)."""
    if ending is None:
        return
    if not ending.startswith("."):
        raise FPNError(f"--file-ending {ending!r}: must start with a dot, e.g. .nii.gz")
    import tempfile  # lazy: start-up time

    try:
        with tempfile.TemporaryDirectory(prefix="fpn_ending_") as folder:
            sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2), np.uint8)), str(Path(folder) / f"probe{ending}"))
    except (RuntimeError, OSError) as exc:  # only "no writer for it" is the ending's fault; a full disk is not
        if "Unable to determine ImageIO writer" in str(exc):
            raise FPNError(f"--file-ending {ending!r}: SimpleITK cannot write masks with this ending; use one of "
                           f"{', '.join(SUPPORTED_ENDINGS)}") from None


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def check_nifti(path: str | os.PathLike) -> tuple[str | None, int]:
    """``(why the file is incomplete or None, number of NaN/Inf voxels)`` of a ``.nii``/``.nii.gz``;
    ``(None, 0)`` for other formats.

    SimpleITK reads a truncated NIfTI without complaint, filling the missing voxels with zeros
    (an interrupted copy looks like a volume whose last B-scans are black), and it turns NaN and
    Inf voxels into 0. So verification decompresses the file once, compares its length with what
    the header promises and counts the non-finite values of float data itself.
    """
    end = file_ending(path)
    if end not in (".nii", ".nii.gz"):
        return None, 0
    opener = gzip.open if end == ".nii.gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        return f"file is truncated or corrupt ({exc})", 0
    if len(data) < 348:
        return f"file is truncated ({len(data)} bytes, less than a NIfTI header)", 0
    for order in "<>":
        size = struct.unpack(order + "i", data[:4])[0]
        if size == 348:
            dims = struct.unpack(order + "8h", data[40:56])
            dtype, bitpix = struct.unpack(order + "2h", data[70:74])
            offset = int(struct.unpack(order + "f", data[108:112])[0])
            break
        if size == 540 and len(data) >= 540:
            dims = struct.unpack(order + "8q", data[16:80])
            dtype, bitpix = struct.unpack(order + "2h", data[12:16])
            offset = int(struct.unpack(order + "q", data[168:176])[0])
            break
    else:
        return None, 0  # not a header we know: leave it to SimpleITK
    n = int(np.prod([max(1, int(d)) for d in dims[1 : 1 + max(0, min(7, dims[0]))]], dtype=np.int64))
    offset = max(offset, size)
    expected = offset + n * max(1, bitpix) // 8
    if len(data) < expected:
        return f"file is truncated: {len(data)} bytes where the header promises {expected}", 0
    bad = 0
    if dtype in _NIFTI_FLOAT_TYPES:
        values = np.frombuffer(data, dtype=order + _NIFTI_FLOAT_TYPES[dtype], count=n, offset=offset)
        bad = int(np.count_nonzero(~np.isfinite(values)))
    return None, bad


# ----------------------------------------------------------------------------- geometry
def find_projection_axis(volume_shape: tuple[int, ...], enface_shape: tuple[int, ...]) -> int | None:
    """The numpy axis of a 3D volume whose removal makes its shape equal ``enface_shape``.

    Returns ``None`` when no axis fits or when more than one does (ambiguous).
    """
    if len(volume_shape) != 3 or len(enface_shape) != 2:
        return None
    hits = [k for k in range(3) if tuple(s for i, s in enumerate(volume_shape) if i != k) == tuple(enface_shape)]
    return hits[0] if len(hits) == 1 else None


def to_bda(array: np.ndarray, axis: int) -> np.ndarray:
    """Move the projection (depth) ``axis`` of a raw 3D array to position 1: ``(B, D, A)``."""
    return np.moveaxis(array, axis, 1)


@dataclass
class EnfaceGeometry:
    """The en-face grid of a volume: shape ``(B, A)``, spacing numpy order, SimpleITK origin/direction."""

    shape: tuple[int, int]
    spacing: tuple[float, float]
    origin: tuple[float, float]
    direction: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": list(self.direction)}

    @classmethod
    def from_dict(cls, d: dict) -> EnfaceGeometry:
        return cls(tuple(d["shape"]), tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))


def enface_geometry(volume: Image, axis: int) -> EnfaceGeometry:
    """En-face grid of a raw 3D image whose numpy ``axis`` is depth (that axis removed)."""
    keep = [i for i in range(3) if i != axis]
    shape = tuple(int(volume.array.shape[i]) for i in keep)
    spacing = tuple(float(volume.spacing[i]) for i in keep)
    sitk_axis = 2 - axis  # numpy axis k is SimpleITK axis 2 - k
    keep_xyz = [i for i in range(3) if i != sitk_axis]
    origin = tuple(float(volume.origin[i]) for i in keep_xyz)
    d = np.asarray(volume.direction, dtype=float).reshape(3, 3)[np.ix_(keep_xyz, keep_xyz)]
    if not np.allclose(np.abs(np.linalg.det(d)), 1.0, atol=1e-3):
        d = np.eye(2)
    return EnfaceGeometry(shape, spacing, origin, tuple(float(v) for v in d.ravel()))  # type: ignore[arg-type]


def resample_to_shape(array: np.ndarray, shape: tuple[int, int], is_label: bool) -> np.ndarray:
    """Resample a 2D image covering the same field of view onto a ``shape`` pixel grid.

    Linear interpolation for images, nearest neighbour for labels (values preserved).
    """
    if tuple(array.shape) == tuple(shape):
        return array
    src = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32 if not is_label else array.dtype))
    # same field of view: pixel centres of both grids span [0, 1] x [0, 1] edges
    src.SetSpacing([1.0 / array.shape[1], 1.0 / array.shape[0]])
    src.SetOrigin([0.5 / array.shape[1], 0.5 / array.shape[0]])
    ref = sitk.Image([int(shape[1]), int(shape[0])], src.GetPixelID())
    ref.SetSpacing([1.0 / shape[1], 1.0 / shape[0]])
    ref.SetOrigin([0.5 / shape[1], 0.5 / shape[0]])
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    out = sitk.Resample(src, ref, sitk.Transform(), interp, 0.0, src.GetPixelID())
    return sitk.GetArrayFromImage(out)


def squeeze_2d(array: np.ndarray) -> np.ndarray:
    """Drop singleton axes of a label/en-face image exported as ``(1, B, A)`` or ``(B, A, 1)``."""
    if array.ndim > 2:
        squeezed = np.squeeze(array)
        if squeezed.ndim == 2:
            return squeezed
    return array
