"""Writing a synthetic dataset folder: case names, patients, files, ``dataset.json``, stale-file cleanup."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.io import write_image
from fpnunet.raw_dataset import (
    dataset_file,
    enface_dir,
    enface_name,
    images_dir,
    label_name,
    labels_dir,
    layout_dirs,
    read_dataset_json,
    volume_name,
    write_dataset_json,
)
from fpnunet.synthetic.case import generate_case
from fpnunet.synthetic.enface import ENFACE_MODALITIES
from fpnunet.synthetic.geometry import DEFAULT_SHAPE, FIELD_OF_VIEW_MM, VOLUME_ENDINGS
from fpnunet.synthetic.patients import _TEST, _TRAIN, _traits_for, assign_patients

GENERATOR_VERSION = 1


def _case_names(prefix: str, count: int, test: bool) -> list[str]:
    width = max(3, len(str(max(count - 1, 0))))
    tag = "T" if test else ""
    return [f"{prefix}_{tag}{i:0{width}d}" for i in range(count)]


def _validate(n: int, labelled_fraction: float, seed: int, shape: tuple[int, ...], num_test: int,
              ending: str) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise FPNError(f"-n/--num-cases must be an integer >= 1; got {n!r}")
    if not (isinstance(labelled_fraction, (int, float)) and 0 < labelled_fraction <= 1):
        raise FPNError(f"--labelled-fraction must be in (0, 1]; got {labelled_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FPNError(f"--seed must be an integer >= 0; got {seed!r}")
    if len(shape) != 3 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape):
        raise FPNError(f"--shape must be three positive integers B D A (B-scans, depth, A-scans); got {shape!r}")
    if shape[1] < 16 or shape[2] < 4:
        raise FPNError(f"--shape {' '.join(map(str, shape))}: depth D must be >= 16 and A >= 4 "
                       "(a retina needs some depth rows)")
    if isinstance(num_test, bool) or not isinstance(num_test, (int, np.integer)) or num_test < 0:
        raise FPNError(f"--num-test must be an integer >= 0; got {num_test!r}")
    if ending not in VOLUME_ENDINGS:
        raise FPNError(f"--file-ending {ending!r} cannot hold a float 3D volume; "
                       f"use one of {', '.join(VOLUME_ENDINGS)}")


def _default_name(out_dir: Path) -> str:
    m = re.match(r"^Dataset\d{3,}_(\S+)$", out_dir.name)
    return m.group(1) if m else "SynthGA"


def make_synthetic_dataset(
    out_dir: str | Path,
    n: int = 60,
    labelled_fraction: float = 1.0,
    seed: int = 0,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    num_test: int | None = None,
    file_ending: str = ".nii.gz",
    name: str | None = None,
    show_progress: bool = True,
    enface_lesion_contrast: float = 1.0,
    classes: int = 1,
) -> Path:
    """Write a raw dataset (layout of ``docs/layout.md``) of ``n`` training and ``num_test`` test cases.

    ``out_dir/imagesTr/CASE_0000<ending>``: float32 volume, numpy ``(B, D, A)`` = ``shape``
    (SimpleITK size ``(A, D, B)``), spacing ``(6/B, 1.9/D, 6/A)`` mm; ``enfaceTr/CASE_FAF`` and
    ``CASE_SLO``: float32 ``(B, A)``; ``labelsTr/CASE``: uint8 ``(B, A)`` for the first
    ``max(1, round(labelled_fraction * n))`` cases only (the rest are unlabelled);
    ``imagesTs/`` + ``enfaceTs/`` + ``labelsTs/`` for the test cases (default ``max(2, n // 5)``). Case names are
    ``NAME_000`` (training) and ``NAME_T000`` (test); ``NAME`` defaults to the ``Dataset900_NAME``
    part of ``out_dir`` or ``SynthGA``. ``enface_lesion_contrast`` in [0, 1]: how much the lesion
    shows in the FAF and SLO images (1: as drawn, 0.1: barely; volumes and labels unchanged; recorded
    in dataset.json's ``synthetic`` entry when not 1). ``classes=2``: labels GA (1) and the
    perilesional zone (2) around it (:func:`generate_case`). Same arguments, same files.

    ``out_dir`` must be empty, absent, or a synthetic dataset written before (which is then
    regenerated; its stale case files are removed). Returns ``out_dir``.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    try:
        shape = tuple(int(s) if isinstance(s, (int, np.integer)) and not isinstance(s, bool) else s for s in shape)
    except TypeError:
        raise FPNError(f"--shape must be three positive integers B D A; got {shape!r}") from None
    num_test = max(2, n // 5) if num_test is None and isinstance(n, int) else num_test
    _validate(n, labelled_fraction, seed, shape, num_test, file_ending)
    if not (isinstance(enface_lesion_contrast, (int, float)) and 0 <= enface_lesion_contrast <= 1):
        raise FPNError(f"--enface-lesion-contrast {enface_lesion_contrast!r}: must be a number in [0, 1]")
    if classes not in (1, 2):
        raise FPNError(f"--classes {classes!r}: must be 1 (GA) or 2 (GA and the perilesional zone)")
    name = name or _default_name(out_dir)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
        raise FPNError(f"--name {name!r}: use letters, digits and '-' only (it prefixes the case names)")
    if out_dir.exists() and not out_dir.is_dir():
        raise FPNError(f"-o {out_dir}: exists and is not a folder")
    prefixes = {name}
    if out_dir.is_dir() and any(out_dir.iterdir()):
        try:
            previous = read_dataset_json(out_dir) if dataset_file(out_dir).is_file() else None
        except FPNError:
            previous = None
        if not (isinstance(previous, dict) and "synthetic" in previous):
            raise FPNError(f"-o {out_dir}: folder is not empty and holds no synthetic dataset written by "
                           "fpn_make_synthetic; choose a new folder, e.g. .../Dataset900_SynthGA")
        prefixes.add(str(previous.get("name", name)))

    n_lab = max(1, int(round(labelled_fraction * n)))
    train = _case_names(name, n, test=False)
    test = _case_names(name, num_test, test=True)
    train_pat = assign_patients(seed, n, _TRAIN)
    test_pat = assign_patients(seed, num_test, _TEST)
    params = {"generator_version": GENERATOR_VERSION, "seed": seed, "n": n, "num_test": num_test,
              "labelled_fraction": labelled_fraction, "num_labelled": n_lab, "shape_bda": list(shape),
              "field_of_view_mm_bda": list(FIELD_OF_VIEW_MM),
              **({"enface_lesion_contrast": float(enface_lesion_contrast)} if enface_lesion_contrast != 1 else {}),
              **({"classes": classes} if classes != 1 else {})}
    meta = {
        "name": name,
        "channel_names": {"0": "OCT"},
        "enface_modalities": list(ENFACE_MODALITIES),
        "labels": {"background": 0, "GA": 1, **({"perilesional": 2} if classes == 2 else {})},
        "file_ending": file_ending,
        "projection_axis": "auto",
        "numTraining": n,
        "patients": {c: f"P{p:03d}" for c, (p, _) in zip(train, train_pat)},
        "synthetic": {**params, "complete": False},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_dataset_json(out_dir, meta)
    written: set[Path] = set()

    def put(path: Path, arr: np.ndarray, sp: tuple[float, ...]) -> None:
        write_image(path, arr, sp)
        written.add(path)

    jobs = [(c, _TRAIN, i, pat) for i, (c, pat) in enumerate(zip(train, train_pat))]
    jobs += [(c, _TEST, j, pat) for j, (c, pat) in enumerate(zip(test, test_pat))]
    with tqdm(total=len(jobs), desc="synthetic cases", unit="case", disable=not show_progress,
              file=sys.stderr) as bar:
        for case, split, idx, (patient, eye) in jobs:
            traits = _traits_for(seed, split, patient)
            right = traits.first_eye_right if eye == 0 else not traits.first_eye_right
            cs = generate_case(shape, np.random.default_rng([seed, split, idx]), traits, right,  # type: ignore[arg-type]
                               enface_lesion_contrast=float(enface_lesion_contrast), classes=classes)
            sp2 = (cs.spacing[0], cs.spacing[2])
            part = "Tr" if split == _TRAIN else "Ts"
            put(images_dir(out_dir, part) / volume_name(case, file_ending), cs.volume, cs.spacing)
            for mod, img in cs.enface.items():
                put(enface_dir(out_dir, part) / enface_name(case, mod, file_ending), img, sp2)
            if split != _TRAIN or idx < n_lab:
                put(labels_dir(out_dir, part) / label_name(case, file_ending), cs.label, sp2)
            bar.update(1)
    # remove stale case files of an earlier generation (other n, ending or labelled share)
    alternatives = "|".join(re.escape(p) for p in sorted(prefixes))
    pattern = re.compile(rf"^({alternatives})_T?\d+(_\d{{4}}|_FAF|_SLO)?\.")
    for folder in layout_dirs(out_dir):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and p not in written and pattern.match(p.name):
                    p.unlink()
    meta["synthetic"]["complete"] = True
    write_dataset_json(out_dir, meta)
    return out_dir
