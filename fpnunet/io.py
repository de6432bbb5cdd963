"""Image I/O through SimpleITK and the raw dataset layout (nnU-Net's, extended for 3D-to-2D).

Axis conventions (numpy order everywhere in fpnunet):

* a volume is ``(B, D, A)``: B-scans (slow axis), depth (axial, the axis that is collapsed),
  A-scans (fast axis). SimpleITK calls that size ``(A, D, B)``.
* the en-face plane is ``(B, A)``; labels and en-face images live on it (SimpleITK size
  ``(A, B)``, spacing ``(sA, sB)``).
* spacings returned here are in numpy order, in the file's unit (mm for NIfTI/MHA from
  scanners); origins and directions stay in SimpleITK's (x, y, z) order since they are only
  ever handed back to SimpleITK.

Raw dataset folder::

    DatasetXXX_Name/
      dataset.json
      imagesTr/CASE_0000.nii.gz      one file per channel (_0000, _0001, ...)
      enfaceTr/CASE_FAF.nii.gz       paired en-face images, names from "enface_modalities"
      labelsTr/CASE.nii.gz           en-face label map; a case without one is unlabelled
      imagesTs/CASE_0000.nii.gz      optional test cases
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from fpnunet.atomic import atomic_path, load_json
from fpnunet.errors import DatasetError, FPNError

SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png", ".tif", ".tiff", ".bmp", ".jpg")
REQUIRED_DATASET_KEYS = ("channel_names", "labels", "file_ending")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


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
    with atomic_path(path, suffix=end) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=end in (".nii.gz", ".mha", ".nrrd"))


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


# ----------------------------------------------------------------------------- dataset.json
@dataclass
class DatasetInfo:
    """The parsed ``dataset.json``."""

    name: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    enface_modalities: list[str] = field(default_factory=list)
    projection_axis: int | str = "auto"
    patients: dict[str, str] = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def foreground_labels(self) -> dict[str, int]:
        return {k: v for k, v in self.labels.items() if v != 0}

    @property
    def num_outputs(self) -> int:
        """Network output channels: 1 (sigmoid) for one foreground class, else one per label."""
        return 1 if len(self.foreground_labels) == 1 else len(self.labels)


def load_dataset_json(folder: str | os.PathLike) -> DatasetInfo:
    """Parse and check ``folder/dataset.json``; every problem is reported with the file's path."""
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise FPNError(f"{path}: dataset.json is missing (every dataset folder needs one)")
    try:
        d = load_json(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FPNError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise FPNError(f"{path}: expected a JSON object at the top level")
    problems = [f"{path}: required key {k!r} is missing" for k in REQUIRED_DATASET_KEYS if k not in d]
    if problems:
        raise DatasetError(problems, header=f"{path} is incomplete")
    labels = d["labels"]
    if not isinstance(labels, dict) or not labels:
        raise FPNError(f"{path}: 'labels' must be a non-empty object like {{\"background\": 0, \"GA\": 1}}")
    try:
        labels = {str(k): int(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        raise FPNError(f"{path}: 'labels' values must be integers, got {d['labels']}") from None
    if 0 not in labels.values():
        raise FPNError(f"{path}: 'labels' must map a background class to 0, got {labels}")
    if len(set(labels.values())) != len(labels):
        raise FPNError(f"{path}: 'labels' has repeated values: {labels}")
    ch = d["channel_names"]
    if not isinstance(ch, dict) or not ch:
        raise FPNError(f"{path}: 'channel_names' must be a non-empty object like {{\"0\": \"OCT\"}}")
    ending = str(d["file_ending"])
    if not ending.startswith("."):
        raise FPNError(f"{path}: 'file_ending' must start with a dot, e.g. \".nii.gz\"; got {ending!r}")
    axis = d.get("projection_axis", "auto")
    if axis != "auto" and axis not in (0, 1, 2):
        raise FPNError(f"{path}: 'projection_axis' must be \"auto\" or 0, 1, 2; got {axis!r}")
    mods = d.get("enface_modalities", [])
    if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
        raise FPNError(f"{path}: 'enface_modalities' must be a list of names like [\"FAF\", \"SLO\"]")
    return DatasetInfo(
        name=str(d.get("name", Path(folder).name)),
        channel_names={str(k): str(v) for k, v in ch.items()},
        labels=labels,
        file_ending=ending,
        enface_modalities=list(mods),
        projection_axis=axis,
        patients={str(k): str(v) for k, v in d.get("patients", {}).items()},
        raw=d,
    )


# ----------------------------------------------------------------------------- cases
@dataclass
class CaseFiles:
    """The files of one case. ``images[i]`` is channel ``i``; missing channels are ``None``."""

    case: str
    images: list[Path | None]
    enface: dict[str, Path] = field(default_factory=dict)
    label: Path | None = None

    @property
    def labelled(self) -> bool:
        return self.label is not None


def _find_with_ending(folder: Path, stem: str, ending: str) -> Path | None:
    p = folder / f"{stem}{ending}"
    if p.is_file():
        return p
    for end in SUPPORTED_ENDINGS:
        q = folder / f"{stem}{end}"
        if q.is_file():
            return q
    return None


def list_image_files(folder: Path, ending: str) -> tuple[dict[str, dict[int, Path]], list[Path]]:
    """Group ``CASE_XXXX<ending>`` files in ``folder`` by case. Also returns files whose name
    lacks the ``_XXXX`` channel suffix (reported by verification)."""
    cases: dict[str, dict[int, Path]] = {}
    bad: list[Path] = []
    if not folder.is_dir():
        return cases, bad
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if not p.name.lower().endswith(ending.lower()):
            bad.append(p)
            continue
        m = _CHANNEL_RE.match(p.name[: -len(ending)])
        if not m:
            bad.append(p)
            continue
        cases.setdefault(m.group("case"), {})[int(m.group("ch"))] = p
    return cases, bad


def list_cases(folder: str | os.PathLike, info: DatasetInfo, split: str = "Tr") -> list[CaseFiles]:
    """All cases of ``imagesTr`` (``split='Tr'``) or ``imagesTs`` with their en-face images and labels.

    Cases listed only in ``labelsTr`` or ``enfaceTr`` (no volume) appear with ``images == [None...]``
    so verification can name them.
    """
    folder = Path(folder)
    grouped, _ = list_image_files(folder / f"images{split}", info.file_ending)
    names = set(grouped)
    labels_dir = folder / f"labels{split}"
    enface_dir = folder / f"enface{split}"
    if split == "Tr" and labels_dir.is_dir():
        for p in labels_dir.iterdir():
            if p.is_file() and not p.name.startswith("."):
                names.add(strip_ending(p.name))
    out = []
    for case in sorted(names):
        chans = grouped.get(case, {})
        images = [chans.get(i) for i in range(info.num_channels)]
        enface = {}
        for mod in info.enface_modalities:
            q = _find_with_ending(enface_dir, f"{case}_{mod}", info.file_ending)
            if q is not None:
                enface[mod] = q
        label = _find_with_ending(labels_dir, case, info.file_ending) if split == "Tr" else None
        out.append(CaseFiles(case, images, enface, label))
    return out
