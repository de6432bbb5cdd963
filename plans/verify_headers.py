"""Verification step 2, from the image headers only: dimensionality, shapes, the projection axis.

SimpleITK reads only the image information (:func:`read_header`). Per ``imagesTr`` case,
:func:`check_headers` checks the channels' dimensionality and shapes and which projection
(depth) axes the label (or, for an unlabelled case, the en-face images) fit: a label is an
en-face plane ``(B, A)`` of the volume, i.e. the volume's shape with the depth axis removed.
:func:`resolve_axis` takes dataset.json's ``projection_axis`` or the consensus of the cases.
Problems go into the :class:`~fpnunet.plans.verify_report.Report`.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from fpnunet.errors import FPNError
from fpnunet.plans.geometry import plane_shape, squeeze_shape
from fpnunet.plans.verify_report import Report
from fpnunet.raw_dataset import CaseFiles, DatasetInfo


@dataclass
class Header:
    """Image information read without the pixel data. ``shape``/``spacing`` in numpy order."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    components: int
    pixel_type: str


def read_header(path: str | os.PathLike) -> Header:
    """Read only the header of an image file; :class:`FPNError` naming the file if SimpleITK cannot."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        why = lines[-1].split("ERROR:")[-1].strip() if lines else "unreadable"
        raise FPNError(f"{path}: SimpleITK cannot read this file as an image ({why})") from None
    return Header(
        shape=tuple(int(s) for s in reversed(reader.GetSize())),
        spacing=tuple(float(s) for s in reversed(reader.GetSpacing())),
        components=int(reader.GetNumberOfComponents()),
        pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
    )


@dataclass
class CaseCheck:
    """What the header step learnt about one ``imagesTr`` case."""

    files: CaseFiles
    ok: bool = True
    raw_shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    fits: list[int] | None = None
    """Axes whose en-face plane equals the label (labelled) or an en-face image (unlabelled)."""
    fit_source: str = ""
    axis_conflict: bool = False
    """Its label / en-face image contradicts the dataset's projection axis (already reported)."""


def check_headers(rep: Report, info: DatasetInfo, cf: CaseFiles, axis: int | None) -> CaseCheck:
    """Dimensionality and shapes from the headers; which projection axes the label / en-face fit."""
    chk = CaseCheck(cf)
    shapes: list[tuple[Path, tuple[int, ...]]] = []
    for p in cf.images:
        if p is None:
            chk.ok = False  # reported by the structure step
            continue
        try:
            h = read_header(p)
        except FPNError as exc:
            rep.add(str(exc))
            chk.ok = False
            continue
        if "complex" in h.pixel_type:
            rep.add(f"{rep.rel(p)}: volume has complex pixels ({h.pixel_type}); export magnitudes")
            chk.ok = False
        shape = squeeze_shape(h.shape, 3)
        if len(shape) != 3:
            hint = (" (a single B-scan or an en-face image? volumes go in imagesTr, en-face images in "
                    "enfaceTr, labels in labelsTr)") if len(shape) == 2 else ""
            rep.add(f"{rep.rel(p)}: volume must be 3D, got shape {h.shape}{hint}")
            chk.ok = False
            continue
        if any(s <= 0 or not math.isfinite(s) for s in h.spacing):
            rep.add(f"{rep.rel(p)}: invalid voxel spacing {h.spacing}")
            chk.ok = False
        shapes.append((p, shape))
        if chk.raw_shape is None:
            chk.raw_shape = shape
            chk.spacing = tuple(float(s) for s in (h.spacing if len(h.spacing) == 3 else (1.0, 1.0, 1.0)))
    if len({s for _, s in shapes}) > 1:
        desc = ", ".join(f"{p.name} {s}" for p, s in shapes)
        rep.add(f"case {cf.case}: channels have different shapes: {desc}")
        chk.ok = False

    label_shape = None
    if cf.label is not None:
        try:
            h = read_header(cf.label)
            shape = squeeze_shape(h.shape, 2)
            if h.components > 1:
                rep.add(
                    f"{rep.rel(cf.label)}: label has {h.components} colour components (RGB?); save it as a "
                    f"single-channel integer image with the values of dataset.json labels"
                )
                chk.ok = False
            elif len(shape) != 2:
                rep.add(f"{rep.rel(cf.label)}: label must be 2D (the en-face plane), got shape {h.shape}")
                chk.ok = False
            else:
                label_shape = shape
        except FPNError as exc:
            rep.add(str(exc))
            chk.ok = False
    enface_shapes: list[tuple[int, ...]] = []
    for mod, p in cf.enface.items():
        try:
            h = read_header(p)
        except FPNError as exc:
            rep.add(str(exc))
            chk.ok = False
            continue
        shape = squeeze_shape(h.shape, 2)
        if len(shape) != 2:
            rep.add(f"{rep.rel(p)}: en-face image ({mod}) must be 2D, got shape {h.shape}")
            chk.ok = False
        else:
            enface_shapes.append(shape)

    if chk.raw_shape is None or not chk.ok:
        return chk
    vs = chk.raw_shape
    planes = {k: plane_shape(vs, k) for k in range(3)}
    if label_shape is not None:
        fits = [k for k in range(3) if planes[k] == label_shape]
        transposed = [k for k in range(3) if planes[k] == label_shape[::-1]]
        if axis is not None and axis not in fits:
            if fits:
                why = (f"it is the en-face plane of projection_axis {fits[0]}, but dataset.json sets "
                       f"projection_axis {axis}")
            elif axis in transposed:
                why = f"it looks transposed (the en-face plane is {planes[axis]})"
            else:
                why = f"the en-face plane of projection_axis {axis} is {planes[axis]}"
            rep.add(f"{rep.rel(cf.label)}: label shape {label_shape} does not match volume shape {vs}: {why}")
            chk.ok = False
        elif not fits:
            hint = f"; it looks transposed (plane {planes[transposed[0]]})" if transposed else ""
            rep.add(
                f"{rep.rel(cf.label)}: label shape {label_shape} matches no en-face plane of volume shape {vs} "
                f"(removing axis 0, 1, 2 gives {planes[0]}, {planes[1]}, {planes[2]}){hint}"
            )
            chk.ok = False
        else:
            chk.fits, chk.fit_source = fits, "label"
    elif enface_shapes:
        fits_sets = [{k for k in range(3) if planes[k] == s} for s in enface_shapes]
        fits_sets = [s for s in fits_sets if s]
        if fits_sets:
            common = set.intersection(*fits_sets)
            if common:
                chk.fits, chk.fit_source = sorted(common), "en-face image"
    return chk


def resolve_axis(rep: Report, info: DatasetInfo, checks: list[CaseCheck]) -> int | None:
    """Projection axis: dataset.json's int, else the consensus of the cases that identify one."""
    if isinstance(info.projection_axis, int):
        return info.projection_axis
    votes = {c.files.case: (c.fits[0], c.fit_source) for c in checks if c.fits and len(c.fits) == 1}
    if not votes:
        if any(c.ok for c in checks):
            rep.add(
                "dataset.json: cannot tell the projection (depth) axis: no label or en-face image identifies "
                "it (none on the volume's en-face grid, or the volume shape is ambiguous); set "
                '"projection_axis" to 0, 1 or 2 (the numpy axis of the volume that is depth)'
            )
        return None
    count = Counter(a for a, _ in votes.values())
    (axis, n), *rest = count.most_common()
    if rest and rest[0][1] == n:
        rep.add(
            "projection axis inconsistent across cases: "
            + "; ".join(f"axis {a}: {sorted(c for c, (v, _) in votes.items() if v == a)}" for a in sorted(count))
            + '; fix the odd cases or set "projection_axis" in dataset.json'
        )
        return None
    by_case = {c.files.case: c for c in checks}
    for case, (a, src) in sorted(votes.items()):
        if a != axis:
            by_case[case].axis_conflict = True
            rep.add(
                f"case {case}: its {src} fits projection axis {a}, but the other cases ({n} of them) use "
                f"axis {axis}: projection axis inconsistent across cases (volume stored in another "
                f"orientation?)"
            )
    for c in checks:
        if c.fits and len(c.fits) > 1 and axis not in c.fits and c.fit_source == "label":
            c.axis_conflict = True
            rep.add(f"case {c.files.case}: label does not match the en-face plane of projection axis {axis}")
    return axis
