"""Other en-face images (``--enface FAF=DIR``) registered onto the SLO localizer and resampled onto
the en-face grid.

Matching: a file named like the case or the export file (``CASE.png``, ``scan.png``), or a DICOM
image of the same patient, eye and visit date. Registration (SimpleITK): affine transform,
Mattes mutual information, regular-step gradient descent, multi-resolution (shrink 4-2-1 where
the image is large enough), started from the images' centres. The registered image goes onto the
en-face grid through the composition (en-face index -> localizer -> image), and a check picture
(SLO, registered image, checkerboard) is written for a person to accept or reject. A registration
that did not converge (stopped at the iteration limit, or no better than its start) writes no
image: the report says so and the picture shows it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk

from fpnunet.errors import FPNError
from fpnunet.importer.dicom import _pixel_spacing, _pixels, read_header
from fpnunet.importer.geometry import Raster
from fpnunet.importer.labels import match
from fpnunet.importer.localizer import localizer_image, resample_onto_enface
from fpnunet.importer.scan import Scan, iso_date, laterality_of
from fpnunet.io import read_image, squeeze_2d, write_image


class Importer(Protocol):
    """What this module reads of the running import (:class:`fpnunet.importer.dataset.Importer`)."""

    opts: Any  # ImportOptions: .enface maps a modality to its folder
    enface_index: dict[str, dict[str, Path]]  # modality -> {file name without ending: path}
    enface_dicom: dict[str, list]  # modality -> (patient, eye, date, path) of its DICOM files, once read
    staging: Path

MAX_ITERATIONS = 300
MIN_SIZE = 16
"""Smallest en-face image (and localizer) side, in pixels, that is registered."""


@dataclass
class Registration:
    transform: sitk.Transform
    """Localizer physical point -> en-face image physical point."""
    metric: float
    initial_metric: float
    stop: str
    iterations: int

    @property
    def converged(self) -> bool:
        return self.iterations < MAX_ITERATIONS and self.metric < self.initial_metric


def _shrink_levels(size: tuple[int, ...]) -> list[int]:
    levels = [f for f in (4, 2) if min(size) // f >= 32]
    return [*levels, 1]


def register(fixed: sitk.Image, moving: sitk.Image, seed: int = 0) -> Registration:
    """Affine registration of ``moving`` onto ``fixed`` (Mattes MI, multi-resolution)."""
    for what, img in (("image", moving), ("SLO localizer", fixed)):
        arr = sitk.GetArrayViewFromImage(img)
        if min(arr.shape) < MIN_SIZE:
            raise FPNError(f"the {what} is {arr.shape[1]} x {arr.shape[0]} pixels (at least {MIN_SIZE} x {MIN_SIZE} "
                           "needed)")
        if float(arr.max()) == float(arr.min()):
            raise FPNError(f"the {what} is constant (nothing to register)")
    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(2),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    r.SetMetricSamplingStrategy(r.REGULAR)
    r.SetMetricSamplingPercentage(0.5, seed)
    r.SetInterpolator(sitk.sitkLinear)
    px = min(fixed.GetSpacing())  # steps in physical units: start at 4 pixels, stop below 1/1000 pixel
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=4 * px, minStep=1e-3 * px,
                                               numberOfIterations=MAX_ITERATIONS, relaxationFactor=0.6,
                                               gradientMagnitudeTolerance=1e-8)
    r.SetOptimizerScalesFromPhysicalShift()
    levels = _shrink_levels(fixed.GetSize())
    r.SetShrinkFactorsPerLevel(levels)
    r.SetSmoothingSigmasPerLevel([f / 2 for f in levels[:-1]] + [0])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    r.SetInitialTransform(init, inPlace=False)
    try:
        initial = r.MetricEvaluate(fixed, moving)
        t = r.Execute(fixed, moving)
    except RuntimeError as exc:
        raise FPNError(f"SimpleITK registration failed ({str(exc).strip().splitlines()[-1][:120]})") from None
    return Registration(t, float(r.GetMetricValue()), float(initial), r.GetOptimizerStopConditionDescription(),
                        int(r.GetOptimizerIteration()))


def _moving_image(path: Path, loc: sitk.Image) -> sitk.Image:
    """The en-face image as SimpleITK float; without a pixel size it is assumed to span the localizer's field."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        ds, arr = _pixels(path)
        arr = arr[..., :3].mean(axis=-1) if arr.ndim == 3 else arr
        sp = _pixel_spacing(ds)
    else:
        img = read_image(path)
        arr, sp = squeeze_2d(img.array), None
    if arr.ndim != 2:
        raise FPNError(f"{path}: an en-face image must be 2D, got shape {arr.shape}")
    m = sitk.GetImageFromArray(np.asarray(arr, dtype=np.float32))
    if sp is not None:
        m.SetSpacing([sp[1], sp[0]])
    else:
        fov = [s * n for s, n in zip(loc.GetSpacing(), loc.GetSize())]
        m.SetSpacing([f / n for f, n in zip(fov, m.GetSize())])
    m.SetOrigin(loc.GetOrigin())
    return m


def _dicom_index(folder: Path) -> list[tuple[str, str, str, Path]]:
    """``(patient key, eye, date, path)`` of the DICOM images in ``folder``."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in (".dcm", ".dicom"):
            try:
                ds = read_header(p)
            except FPNError:
                continue
            pid = str(getattr(ds, "PatientID", "") or "").strip()
            eye = laterality_of(getattr(ds, "ImageLaterality", "") or getattr(ds, "Laterality", ""))
            out.append((pid, eye, iso_date(getattr(ds, "StudyDate", "") or getattr(ds, "ContentDate", "")), p))
    return out


def _find(imp: Importer, mod: str, scan: Scan, names: list[str]) -> Path | None:
    hit = match(imp.enface_index[mod], names)
    if hit is not None:
        return hit
    if mod not in imp.enface_dicom:
        imp.enface_dicom[mod] = _dicom_index(imp.opts.enface[mod])
    for pid, eye, date, p in imp.enface_dicom[mod]:
        if pid and pid == scan.patient_id and eye == scan.laterality and date and date == scan.visit_date:
            return p
    return None


def check_picture(path: Path, fixed: sitk.Image, registered: sitk.Image) -> None:
    """One grey PNG, three panels on the localizer grid: SLO | registered image | checkerboard of the two
    (edges that continue across the tiles mean a good registration). Small images are enlarged."""
    def norm(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, [1, 99])
        return np.clip((a - lo) / (hi - lo + 1e-9), 0, 1)

    f = norm(sitk.GetArrayFromImage(fixed))
    m = norm(sitk.GetArrayFromImage(registered))
    tile = max(4, min(f.shape) // 8)
    yy, xx = np.indices(f.shape)
    board = np.where((yy // tile + xx // tile) % 2 == 0, f, m)
    gap = np.ones((f.shape[0], max(2, f.shape[1] // 40)))
    panel = np.concatenate([f, gap, m, gap, board], axis=1)
    zoom = max(1, int(np.ceil(256 / f.shape[0])))
    panel = np.kron(panel, np.ones((zoom, zoom)))
    write_image(path, np.round(panel * 255).astype(np.uint8), (1.0, 1.0))


def stage_enface(imp: Importer, scan: Scan, raster: Raster, slo: np.ndarray | None, names: list[str],
                 shape_ba: tuple[int, int], case: str) -> dict[str, tuple[np.ndarray | None, Path | None, dict]]:
    """Per modality: ``(image on the en-face grid or None, check picture or None, report columns)``."""
    out: dict[str, tuple[np.ndarray | None, Path | None, dict]] = {}
    for mod in imp.opts.enface:
        cols = {f"{mod}_metric": "", f"{mod}_status": ""}
        path = _find(imp, mod, scan, names)
        if path is None:
            cols[f"{mod}_status"] = "no matching image"
            out[mod] = (None, None, cols)
            continue
        if slo is None or raster.affine is None or scan.localizer is None or scan.localizer_spacing is None:
            cols[f"{mod}_status"] = "not registered: no SLO on the en-face grid to register onto"
            out[mod] = (None, None, cols)
            continue
        fixed = localizer_image(scan.localizer, scan.localizer_spacing, scan.localizer_origin)
        moving = _moving_image(path, fixed)
        try:
            reg = register(fixed, moving)
        except FPNError as exc:
            cols[f"{mod}_status"] = f"not registered: {exc}"
            out[mod] = (None, None, cols)
            continue
        cols[f"{mod}_metric"] = f"{reg.metric:.4f}"
        on_loc = sitk.Resample(moving, fixed, reg.transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        check = imp.staging / "checks" / f"{case}_{mod}.png"
        check_picture(check, fixed, on_loc)
        if not reg.converged:
            cols[f"{mod}_status"] = (f"not converged ({reg.iterations} iterations, metric {reg.metric:.4f} "
                                     f"from {reg.initial_metric:.4f}): not written")
            out[mod] = (None, check, cols)
            continue
        arr = resample_onto_enface(moving, raster.affine, shape_ba, extra=reg.transform)
        cols[f"{mod}_status"] = "registered"
        out[mod] = (arr.astype(np.float32), check, cols)
    return out
