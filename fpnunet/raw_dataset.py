"""The owner of a raw dataset folder (``$FPN_RAW/DatasetXXX_Name/``): ``dataset.json``, read and
written, and the names of its sub-folders and files (nnU-Net's layout, extended for 3D-to-2D)::

    DatasetXXX_Name/
      dataset.json
      imagesTr/CASE_0000.nii.gz      one file per channel (_0000, _0001, ...)
      enfaceTr/CASE_FAF.nii.gz       paired en-face images, names from "enface_modalities"
      labelsTr/CASE.nii.gz           en-face label map; a case without one is unlabelled
      imagesTs/CASE_0000.nii.gz      optional test cases (enfaceTs/, labelsTs/ likewise)

Every module that reads or writes such a folder (``fpn_make_synthetic``, ``fpn_import``, the
verification, the fingerprint, preprocessing, evaluation, the report) goes through the functions
here; nothing else spells these names (``tests/test_format_owners.py`` checks it). A model folder
and a preprocessed folder hold a copy of ``dataset.json`` (:func:`copy_dataset_json`), read with
:func:`load_dataset_json` too.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpnunet.atomic import read_json_object, save_json, write_atomic
from fpnunet.errors import DatasetError, FPNError

# fpnunet.io (SimpleITK, numpy) is imported inside the functions that list image files, so that a
# command importing this module stays light until it runs (its --help, fpn_paths).

DATASET_FILE = "dataset.json"
REQUIRED_DATASET_KEYS = ("channel_names", "labels", "file_ending")
SPLITS = ("Tr", "Ts")
"""``Tr``: training cases; ``Ts``: test cases."""
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


# ----------------------------------------------------------------------------- names
def images_dir(folder: str | os.PathLike, split: str = "Tr") -> Path:
    """``imagesTr`` / ``imagesTs``: the volumes ``CASE_0000<ending>`` (one file per channel)."""
    return Path(folder) / f"images{split}"


def enface_dir(folder: str | os.PathLike, split: str = "Tr") -> Path:
    """``enfaceTr`` / ``enfaceTs``: the paired en-face images ``CASE_<MOD><ending>``."""
    return Path(folder) / f"enface{split}"


def labels_dir(folder: str | os.PathLike, split: str = "Tr") -> Path:
    """``labelsTr`` / ``labelsTs``: the en-face label maps ``CASE<ending>``."""
    return Path(folder) / f"labels{split}"


def layout_split(folder: str | os.PathLike) -> str | None:
    """The split suffix of a layout folder (``imagesTs`` -> ``"Ts"``); ``None`` for any other folder."""
    name = Path(folder).name
    for kind in ("images", "labels", "enface"):
        if name.startswith(kind):
            return name[len(kind):]
    return None


def layout_dirs(folder: str | os.PathLike) -> list[Path]:
    """Every case sub-folder of the layout (images, en-face, labels; training and test)."""
    return [d(folder, s) for s in SPLITS for d in (images_dir, enface_dir, labels_dir)]


def volume_name(case: str, ending: str, channel: int = 0) -> str:
    """``CASE_0000<ending>``: channel ``channel`` of a volume."""
    return f"{case}_{channel:04d}{ending}"


def volume_stem(case: str, channel: int = 0) -> str:
    """``CASE_0000``: :func:`volume_name` without its ending."""
    return volume_name(case, "", channel)


def enface_stem(case: str, modality: str) -> str:
    """``CASE_<MOD>``: an en-face image's name without its ending."""
    return f"{case}_{modality}"


def enface_name(case: str, modality: str, ending: str) -> str:
    """``CASE_<MOD><ending>``."""
    return enface_stem(case, modality) + ending


def label_name(case: str, ending: str) -> str:
    """``CASE<ending>``: a label map."""
    return case + ending


def count_volumes(folder: str | os.PathLike, split: str = "Tr") -> int:
    """How many cases ``images<split>`` holds (channel-0 files; no image is opened)."""
    d = images_dir(folder, split)
    return sum(1 for _ in d.glob(volume_stem("*") + ".*")) if d.is_dir() else 0


def count_labels(folder: str | os.PathLike, split: str = "Tr") -> int:
    """How many label maps ``labels<split>`` holds (no image is opened)."""
    d = labels_dir(folder, split)
    return sum(1 for _ in d.glob("*.*")) if d.is_dir() else 0


def channel_of(stem: str) -> tuple[str, int] | None:
    """``("CASE", 0)`` for ``CASE_0000``; ``None`` when the name lacks the channel suffix."""
    m = _CHANNEL_RE.match(stem)
    return (m.group("case"), int(m.group("ch"))) if m else None


# ----------------------------------------------------------------------------- dataset.json
def dataset_file(folder: str | os.PathLike) -> Path:
    """``folder/dataset.json`` (a raw dataset, or the copy in a preprocessed or model folder)."""
    return Path(folder) / DATASET_FILE


def has_dataset_json(folder: str | os.PathLike) -> bool:
    return dataset_file(folder).is_file()


def read_dataset_json(folder: str | os.PathLike) -> dict[str, Any]:
    """The JSON object of ``folder/dataset.json``, unchecked (:func:`load_dataset_json` checks it);
    a missing file, invalid JSON or a non-object is an :class:`FPNError` naming the file."""
    return read_json_object(dataset_file(folder), "dataset.json is missing (every dataset folder needs one)")


def write_dataset_json(folder: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``meta`` as ``folder/dataset.json`` atomically; returns the path."""
    path = dataset_file(folder)
    save_json(meta, path)
    return path


def copy_dataset_json(src_folder: str | os.PathLike, dst_folder: str | os.PathLike) -> Path:
    """Copy ``src_folder/dataset.json`` byte for byte into ``dst_folder`` (atomically)."""
    import shutil

    src, dst = dataset_file(src_folder), dataset_file(dst_folder)
    write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp), suffix=".json")
    return dst


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
    path = dataset_file(folder)
    d = read_dataset_json(folder)
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


def image_files(folder: str | os.PathLike, stem: str, endings: tuple[str, ...] | None = None) -> list[Path]:
    """The files ``folder/<stem><ending>`` that exist, one per ending of ``endings`` (default: every
    supported ending) in that order."""
    from fpnunet.io import SUPPORTED_ENDINGS  # lazy: start-up time (SimpleITK)

    endings = SUPPORTED_ENDINGS if endings is None else endings
    return [Path(folder) / (stem + end) for end in endings if (Path(folder) / (stem + end)).is_file()]


def find_image(folder: str | os.PathLike, stem: str, ending: str | None = None) -> Path | None:
    """``folder/<stem><ending>``, else the first ``<stem>`` file with a supported ending; ``None`` if none."""
    from fpnunet.io import SUPPORTED_ENDINGS  # lazy: start-up time (SimpleITK)

    hits = image_files(folder, stem, ((ending,) if ending else ()) + SUPPORTED_ENDINGS)
    return hits[0] if hits else None


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
    from fpnunet.io import strip_ending  # lazy: start-up time (SimpleITK)

    folder = Path(folder)
    grouped, _ = list_image_files(images_dir(folder, split), info.file_ending)
    names = set(grouped)
    labels = labels_dir(folder, split)
    enface = enface_dir(folder, split)
    if split == "Tr" and labels.is_dir():
        for p in labels.iterdir():
            if p.is_file() and not p.name.startswith("."):
                names.add(strip_ending(p.name))
    out = []
    for case in sorted(names):
        chans = grouped.get(case, {})
        images = [chans.get(i) for i in range(info.num_channels)]
        found = {}
        for mod in info.enface_modalities:
            q = find_image(enface, enface_stem(case, mod), info.file_ending)
            if q is not None:
                found[mod] = q
        label = find_image(labels, case, info.file_ending) if split == "Tr" else None
        out.append(CaseFiles(case, images, found, label))
    return out
