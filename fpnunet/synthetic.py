"""Synthetic OCT volumes with geographic atrophy (GA) and paired en-face images: ``fpn_make_synthetic``.

Every case is an OCT macular cube in numpy order ``(B, D, A)`` (B-scans, depth, A-scans) with
an en-face GA label ``(B, A)`` and two paired en-face images on the same grid: fundus
autofluorescence (FAF, GA dark) and infrared SLO (GA only faintly brighter). The field of view
is ``6 mm (B) x 1.9 mm (D) x 6 mm (A)`` whatever the shape, so with ``B < A`` the en-face plane
is anisotropic like a Spectralis cube (49 x 496 x 512: 122 um x 3.8 um x 11.7 um).

What a volume holds, top to bottom: dark vitreous; a layered retina (bright nerve fibre layer,
alternating plexiform / nuclear layers, dark outer nuclear layer, bright ellipsoid zone and
retinal pigment epithelium (RPE)) whose surface is bowl-shaped, tilted and jittered per B-scan;
a foveal pit; drusen lifting the RPE; a textured choroid fading into the sclera. Retinal vessels
(a tree of arcades and branches from an optic disc outside the field) cast shadows down to the
choroid and show dark in FAF and SLO. Inside a GA lesion the ellipsoid zone and RPE are lost,
the outer nuclear layer thins, and light reaches deeper (choroidal hypertransmission); the label
is exactly the set of en-face pixels whose soft lesion membership exceeds one half, the same
membership that drives the RPE loss, the hypertransmission and the dark FAF (the outer-retina
thinning starts a little outside the border, as in real GA).

The volume is then degraded like a real scan: multiplicative speckle, additive noise, a gain
per B-scan (with occasional dim scans), lateral vignetting and depth roll-off. Those, plus
RPE loss and hypertransmission pulling the depth mean in opposite directions, keep a plain
mean-intensity projection from solving the task (see :func:`oracle_threshold_dice`).

Randomness: case ``i`` of the training set is drawn from ``np.random.default_rng([seed, 0, i])``
(test case ``j`` from ``[seed, 1, j]``) and its patient's traits from a patient generator, so a
case never changes with ``n``. Patients hold one or two eyes (a right and a left eye, with the
optic disc on opposite sides, sharing GA severity, retinal thickness and brightness).
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d, map_coordinates, uniform_filter1d

from fpnunet.atomic import load_json, save_json
from fpnunet.cli_utils import run_cli
from fpnunet.errors import FPNError
from fpnunet.io import write_image

DEFAULT_SHAPE: tuple[int, int, int] = (32, 160, 128)
"""Default ``(B, D, A)``: CPU-friendly, B divisible by 4 and A by 16 as the FPN needs."""

FIELD_OF_VIEW_MM: tuple[float, float, float] = (6.0, 1.9, 6.0)
"""Physical extent ``(B, D, A)`` in mm of every synthetic volume, whatever its shape."""

ENFACE_MODALITIES: tuple[str, ...] = ("FAF", "SLO")
VOLUME_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".nrrd")
GENERATOR_VERSION = 1

_TRAIN, _TEST = 0, 1
_QUANT = 1024.0  # volumes are stored on a 1/1024 intensity grid (exact in float32, compresses well)


# ----------------------------------------------------------------------------- data classes
@dataclass
class PatientTraits:
    """Traits shared by the eyes of one patient."""

    severity: float  # 0..1: lesion count and size
    thickness: float  # retinal thickness scale
    brightness: float  # overall reflectivity scale
    first_eye_right: bool


@dataclass
class SyntheticCase:
    """One generated case; every array on the grid of ``volume``.

    ``volume``: float32 ``(B, D, A)`` in [0, 1]; ``label``: uint8 ``(B, A)`` (1 = GA);
    ``enface``: float32 ``(B, A)`` images in [0, 1] keyed by modality (``FAF``, ``SLO``);
    ``spacing``: ``(sB, sD, sA)`` in mm; ``surfaces``: float32 ``(B, A)`` depths in pixels (row
    ``i``'s centre at ``i``) of the inner limiting membrane (``ILM``) and Bruch's membrane
    (``BM``, the bottom of the RPE); ``info``: generation facts (lesion count, eye, ...).
    """

    volume: np.ndarray
    label: np.ndarray
    enface: dict[str, np.ndarray]
    spacing: tuple[float, float, float]
    surfaces: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- small helpers
def spacing_for_shape(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Spacing ``(sB, sD, sA)`` in mm that makes ``shape`` cover :data:`FIELD_OF_VIEW_MM`."""
    return tuple(float(f) / int(s) for f, s in zip(FIELD_OF_VIEW_MM, shape))  # type: ignore[return-value]


def _fourier_noise(rng: np.random.Generator, yb: np.ndarray, xa: np.ndarray, n: int, fmin: float,
                   fmax: float) -> np.ndarray:
    """Smooth random field on physical en-face coordinates (mm), unit variance, shape of ``yb + xa``.

    A sum of ``n`` plane waves with spatial frequencies in ``[fmin, fmax]`` cycles/mm.
    """
    f = rng.uniform(fmin, fmax, n)
    ang = rng.uniform(0, 2 * np.pi, n)
    ph = rng.uniform(0, 2 * np.pi, n)
    out = np.zeros(np.broadcast_shapes(yb.shape, xa.shape), dtype=np.float64)
    for k in range(n):
        out += np.cos(2 * np.pi * f[k] * (np.sin(ang[k]) * yb + np.cos(ang[k]) * xa) + ph[k])
    return out * np.sqrt(2.0 / n)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation (float32)."""
    z = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return z / max(float(z.std()), 1e-6)


# ----------------------------------------------------------------------------- patients
def patient_traits(rng: np.random.Generator) -> PatientTraits:
    """Draw the traits one patient's eyes share."""
    return PatientTraits(
        severity=float(rng.beta(1.6, 1.6)),
        thickness=float(rng.uniform(0.88, 1.12)),
        brightness=float(rng.uniform(0.9, 1.1)),
        first_eye_right=bool(rng.random() < 0.5),
    )


def assign_patients(seed: int, n: int, split: int = _TRAIN) -> list[tuple[int, int]]:
    """``(patient index, eye index)`` of cases ``0..n-1``: patients hold one or two eyes.

    Patient ``p``'s size comes from its own generator, so the mapping of early cases does not
    depend on ``n``.
    """
    out: list[tuple[int, int]] = []
    p = 0
    while len(out) < n:
        size = 2 if np.random.default_rng([seed, 2 + 2 * split, p]).random() < 0.6 else 1
        out.extend((p, e) for e in range(size))
        p += 1
    return out[:n]


def _traits_for(seed: int, split: int, patient: int) -> PatientTraits:
    return patient_traits(np.random.default_rng([seed, 3 + 2 * split, patient]))


# ----------------------------------------------------------------------------- en-face maps
def _lesion_level(rng: np.random.Generator, yb: np.ndarray, xa: np.ndarray, fovea: tuple[float, float],
                  severity: float) -> tuple[np.ndarray, int, bool]:
    """Signed lesion level (mm, > 0 inside, roughly the distance to the border) on ``yb + xa``.

    0-3 lobulated lesions (unions of ellipses) around the fovea with an irregular border; now
    and then the fovea is spared. Returns ``(level, number of lesions drawn, fovea spared)``.
    """
    shape = np.broadcast_shapes(yb.shape, xa.shape)
    p_free = 0.16 - 0.1 * severity
    p = np.array([p_free, 0.5, 0.22 + 0.1 * severity, 0.12 + 0.1 * severity])
    count = int(rng.choice(4, p=p / p.sum()))
    level = np.full(shape, -10.0)
    spared = False
    if count == 0:
        return level, 0, spared
    fb, fa = fovea
    for k in range(count):
        # equivalent radius: log-uniform, later lesions smaller, more severe patients larger
        lo, hi = np.log(0.45), np.log(0.9 + 1.5 * severity)
        r = float(np.exp(rng.uniform(lo, hi))) * (1.0 if k == 0 else rng.uniform(0.4, 0.8))
        if k == 0:
            cb, ca = fb + rng.normal(0, 0.5), fa + rng.normal(0, 0.5)
        else:
            rad, ang = rng.uniform(0.8, 2.4), rng.uniform(0, 2 * np.pi)
            cb, ca = fb + rad * np.sin(ang), fa + rad * np.cos(ang)
        cb, ca = float(np.clip(cb, -2.6, 2.6)), float(np.clip(ca, -2.6, 2.6))
        lobes = [(cb, ca, r * rng.uniform(0.75, 1.3), r * rng.uniform(0.6, 1.05), rng.uniform(0, np.pi))]
        for _ in range(int(rng.integers(0, 5))):
            ang, dist = rng.uniform(0, 2 * np.pi), r * rng.uniform(0.45, 0.95)
            rl = r * rng.uniform(0.3, 0.65)
            lobes.append((cb + dist * np.sin(ang), ca + dist * np.cos(ang), rl * rng.uniform(0.8, 1.2),
                          rl * rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)))
        for lb, la, ax1, ax2, th in lobes:
            u = (yb - lb) * np.cos(th) + (xa - la) * np.sin(th)
            v = -(yb - lb) * np.sin(th) + (xa - la) * np.cos(th)
            q = np.sqrt((u / ax1) ** 2 + (v / ax2) ** 2)
            level = np.maximum(level, min(ax1, ax2) * (1.0 - q))
    level = level + rng.uniform(0.03, 0.08) * _fourier_noise(rng, yb, xa, 16, 0.5, 2.2)
    level = level + rng.uniform(0.008, 0.02) * _fourier_noise(rng, yb, xa, 16, 2.5, 6.0)
    if rng.random() < 0.3:  # foveal sparing: GA wraps around a preserved centre
        spared = True
        rf = np.sqrt((yb - fb) ** 2 + (xa - fa) ** 2)
        level = np.minimum(level, rf - rng.uniform(0.2, 0.45))
    return level, count, spared


def _vessel_tree(rng: np.random.Generator, disc: tuple[float, float], fovea: tuple[float, float],
                 side: float) -> list[tuple[np.ndarray, float]]:
    """Retinal vessels as polylines ``(N, 2)`` of ``(b, a)`` points in mm with a width in mm.

    ``side`` is +1 when the optic disc lies at +a (outside the field), -1 at -a. Two arcades
    (an artery and a vein each) leave the disc, arch above and below the fovea and converge
    toward the temporal raphe; branches leave them; a few small papillomacular vessels head for
    the fovea. Nothing enters the foveal avascular zone.
    """
    vessels: list[tuple[np.ndarray, float]] = []
    d_fovea = abs(disc[1] - fovea[1])
    s = np.arange(0.0, d_fovea + 4.5, 0.02)
    arcades = []
    for up in (-1.0, 1.0):
        height = rng.uniform(1.7, 2.6)
        for k in range(2):
            h = height * rng.uniform(0.9, 1.1)
            lam = rng.uniform(0.7, 1.4)
            conv = rng.uniform(0.1, 0.35)
            wig = gaussian_filter1d(rng.normal(0, 1, s.size), 25) * 3.0 * rng.uniform(0.03, 0.08)
            b = disc[0] + up * (0.15 + h * np.tanh(s / lam) - conv * np.maximum(s - d_fovea, 0)) + wig
            a = disc[1] - side * s
            pts = np.stack([b, a], axis=1)
            vessels.append((pts, rng.uniform(0.1, 0.14) if k else rng.uniform(0.08, 0.11)))
            arcades.append((pts, up))

    def walk(start: np.ndarray, heading: float, curvature: float, length: float) -> np.ndarray:
        m = max(2, int(length / 0.03))
        theta = heading + curvature * 0.03 * np.arange(m) + 0.02 * rng.normal(0, 1, m).cumsum()
        steps = 0.03 * np.stack([np.sin(theta), np.cos(theta)], axis=1)
        return start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)[:-1]], axis=0)

    for _ in range(int(rng.integers(8, 15))):
        src, up = arcades[int(rng.integers(0, len(arcades)))]
        i = int(rng.integers(40, len(src) - 2))
        d = src[i + 1] - src[i]
        tangent = float(np.arctan2(d[0], d[1]))
        inward = rng.random() < 0.6  # toward the horizontal meridian (the fovea) or away from it
        turn = np.deg2rad(rng.uniform(35, 80))
        cand = (tangent + turn, tangent - turn)
        toward = [np.sin(c) * -up for c in cand]  # b component pointing to the meridian
        heading = cand[int(np.argmax(toward))] if inward else cand[int(np.argmin(toward))]
        vessels.append((walk(src[i], heading, rng.normal(0, 0.4), rng.uniform(0.8, 2.8)),
                        rng.uniform(0.035, 0.07)))
    for _ in range(int(rng.integers(2, 5))):
        start = np.array(disc) + rng.normal(0, 0.15, 2)
        d = np.array(fovea) + rng.normal(0, 0.6, 2) - start
        vessels.append((walk(start, float(np.arctan2(d[0], d[1])), rng.normal(0, 0.15), float(np.hypot(*d))),
                        rng.uniform(0.03, 0.05)))
    faz = rng.uniform(0.3, 0.5)
    out = []
    for pts, w in vessels:
        keep = np.hypot(pts[:, 0] - fovea[0], pts[:, 1] - fovea[1]) > faz
        if not keep.all():  # a vessel ends where it first reaches the avascular zone
            pts = pts[: int(np.argmin(keep))]
        if len(pts) > 2:
            out.append((pts, w))
    return out


def _render_vessels(vessels: list[tuple[np.ndarray, float]], yb: np.ndarray,
                    xa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vessel maps in [0, 1] (1 on a vessel's centre line) on the ``(B, A)`` grid whose B-scan
    rows are at ``yb`` (B,) and A-scan columns at ``xa`` (A,), mm from the field's centre.

    Lines are splatted on an isotropic fine grid and blurred to their width (a Gaussian profile
    with unit peak). Returns ``(oct, enface)``: ``oct`` point-samples the B-scan centres (a thin
    vessel running along a B-scan may fall between two scans, as in a real cube); ``enface``
    averages over each B-scan's slab as a fundus image resampled to the cube's grid would.
    """
    half_b, half_a = FIELD_OF_VIEW_MM[0] / 2, FIELD_OF_VIEW_MM[2] / 2
    g = max(128, len(xa))
    px = 2 * half_a / g
    gb = int(round(2 * half_b / px))
    fine = np.zeros((gb, g), dtype=np.float64)
    for lo_w, hi_w in ((0.0, 0.075), (0.075, 1.0)):
        acc = np.zeros(gb * g, dtype=np.float64)
        widths = []
        for pts, w in vessels:
            if not lo_w <= w < hi_w:
                continue
            widths.append(w)
            seg = np.hypot(*np.diff(pts, axis=0).T)
            wgt = np.append(seg, seg[-1]) / px  # line density: arc length per grid pixel
            fb = (pts[:, 0] + half_b) / px - 0.5
            fa = (pts[:, 1] + half_a) / px - 0.5
            b0, a0 = np.floor(fb).astype(np.int64), np.floor(fa).astype(np.int64)
            tb, ta = fb - b0, fa - a0
            for db, da, ww in ((0, 0, (1 - tb) * (1 - ta)), (1, 0, tb * (1 - ta)), (0, 1, (1 - tb) * ta),
                               (1, 1, tb * ta)):
                bb, aa = b0 + db, a0 + da
                inside = (bb >= 0) & (bb < gb) & (aa >= 0) & (aa < g)
                acc += np.bincount(bb[inside] * g + aa[inside], weights=(wgt * ww)[inside], minlength=gb * g)
        if not widths:
            continue
        sigma = max(float(np.mean(widths)) / 2.5 / px, 0.3)
        blurred = gaussian_filter(acc.reshape(gb, g), sigma)
        fine = np.maximum(fine, np.clip(blurred * np.sqrt(2 * np.pi) * sigma, 0, 1))
    rows = (yb + half_b) / px - 0.5
    cols = (xa + half_a) / px - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    point = map_coordinates(fine, [rr, cc], order=1, mode="nearest")
    slab = (FIELD_OF_VIEW_MM[0] / len(yb)) / px
    if slab > 1.5:
        fine = uniform_filter1d(fine, size=int(round(slab)), axis=0, mode="nearest")
    avg = map_coordinates(fine, [rr, cc], order=1, mode="nearest")
    return np.clip(point, 0, 1), np.clip(avg, 0, 1)


# ----------------------------------------------------------------------------- volume synthesis
def _deposit(imp: np.ndarray, pos_px: np.ndarray, delta: np.ndarray, bi: np.ndarray, ai: np.ndarray) -> None:
    """Add a step of ``delta`` (B, A) at continuous depth ``pos_px`` (B, A) to the impulse array.

    ``imp`` is ``(B, R + 1, A)``; after a cumulative sum along depth, row ``i`` (covering
    ``[i - 0.5, i + 0.5)``) holds ``delta`` times the fraction of it below ``pos_px``: layer
    boundaries get exact partial-volume values at any depth resolution.
    """
    last = imp.shape[1] - 1
    t = pos_px + 0.5
    j0 = np.floor(t)
    f = (t - j0).astype(np.float32)
    j0 = j0.astype(np.int64)
    imp[bi, np.clip(j0, 0, last), ai] += delta * (1 - f)
    imp[bi, np.clip(j0 + 1, 0, last), ai] += delta * f


def _grid_noise(rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float],
                sigma_mm: float) -> np.ndarray:
    """Smooth unit-variance noise ``(B, A)`` with correlation length ``sigma_mm`` on a grid of
    ``spacing`` (mm, numpy order)."""
    return _smooth_noise(rng, shape, tuple(sigma_mm / s for s in spacing))


@dataclass
class _EnfaceAnatomy:
    """En-face maps of one eye on the cube's ``(B, A)`` grid (all float64 ``(B, A)``)."""

    yb: np.ndarray  # (B, 1) mm from the centre
    xa: np.ndarray  # (1, A) mm from the centre
    fovea: tuple[float, float]
    rf2: np.ndarray  # squared distance to the fovea (mm^2)
    pit: np.ndarray  # foveal pit profile, 1 at the fovea
    ring: np.ndarray  # parafoveal ring where the ganglion cells pile up
    d_disc: np.ndarray  # distance to the optic disc (mm)
    level: np.ndarray  # signed lesion level (mm, > 0 inside)
    m: np.ndarray  # soft lesion membership (> 0.5 exactly on the label)
    m_outer: np.ndarray  # wider membership for the outer-retina thinning around the lesion
    junction: np.ndarray  # band just outside the lesion border
    vessels: np.ndarray  # vessel map sampled at the B-scan centres (OCT)
    vessels_enface: np.ndarray  # vessel map averaged over each B-scan's slab (fundus images)
    drusen: np.ndarray  # RPE elevation (um)
    info: dict


def _anatomy(rng: np.random.Generator, nb: int, na: int, traits: PatientTraits, right_eye: bool) -> _EnfaceAnatomy:
    sb, sa = FIELD_OF_VIEW_MM[0] / nb, FIELD_OF_VIEW_MM[2] / na
    yb = ((np.arange(nb) + 0.5) * sb - FIELD_OF_VIEW_MM[0] / 2)[:, None]
    xa = ((np.arange(na) + 0.5) * sa - FIELD_OF_VIEW_MM[2] / 2)[None, :]
    side = 1.0 if right_eye else -1.0
    fovea = (float(rng.normal(0, 0.25)), float(rng.normal(0, 0.3)))
    disc = (fovea[0] + float(rng.normal(0.1, 0.2)), fovea[1] + side * float(rng.uniform(3.9, 4.5)))
    rf2 = (yb - fovea[0]) ** 2 + (xa - fovea[1]) ** 2
    rf = np.sqrt(rf2)
    pit = np.exp(-rf2 / (2 * rng.uniform(0.3, 0.45) ** 2))
    ring = np.exp(-(((rf - 1.0) / 0.6) ** 2))
    d_disc = np.sqrt((yb - disc[0]) ** 2 + (xa - disc[1]) ** 2)
    level, n_lesions, spared = _lesion_level(rng, yb, xa, fovea, traits.severity)
    m = _sigmoid(level / rng.uniform(0.018, 0.03))
    m_outer = _sigmoid((level + 0.05) / rng.uniform(0.08, 0.14))
    junction = np.exp(-((level + 0.06) ** 2) / (2 * 0.05**2)) * (level < 0)
    vessels, vessels_enface = _render_vessels(_vessel_tree(rng, disc, fovea, side), yb[:, 0], xa[0, :])
    drusen = np.zeros((nb, na))
    for _ in range(int(rng.poisson(1.0 + 7.0 * traits.severity))):
        rad, ang = rng.uniform(0.2, 2.6), rng.uniform(0, 2 * np.pi)
        cb, ca = fovea[0] + rad * np.sin(ang), fovea[1] + rad * np.cos(ang)
        r = rng.uniform(0.06, 0.22)
        drusen += rng.uniform(20, 75) * np.exp(-((yb - cb) ** 2 + (xa - ca) ** 2) / r**2)
    drusen *= np.clip(1 - 1.6 * m, 0, 1)  # no drusen left inside the atrophy
    info = {"lesions": n_lesions, "fovea_spared": spared, "right_eye": right_eye,
            "fovea_mm": [round(fovea[0], 4), round(fovea[1], 4)], "severity": round(traits.severity, 4)}
    return _EnfaceAnatomy(yb, xa, fovea, rf2, pit, ring, d_disc, level, m, m_outer, junction, vessels,
                          vessels_enface, drusen, info)


def _layers(rng: np.random.Generator, an: _EnfaceAnatomy, traits: PatientTraits
            ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Retinal layers top to bottom: thicknesses (um) and reflectivities, each ``(B, A)``, and the
    vessel shadow factor ``(B, A)`` that dims everything below the nerve fibre layer."""
    m, mo, pit, ring, vs, dr = an.m, an.m_outer, an.pit, an.ring, an.vessels, an.drusen
    ts = traits.thickness * rng.uniform(0.95, 1.05)
    onl_loss = rng.uniform(0.45, 0.85)
    thick = [
        28 * ts * (0.45 + 1.9 * np.exp(-(an.d_disc - 1.0) / 2.2)) * (1 - 0.93 * pit) + 12 * vs,  # NFL
        42 * ts * (1 + 0.45 * ring) * (1 - 0.95 * pit),  # GCL
        36 * ts * (1 + 0.2 * ring) * (1 - 0.9 * pit),  # IPL
        34 * ts * (1 + 0.2 * ring) * (1 - 0.85 * pit),  # INL
        24 * ts * (1 - 0.5 * pit),  # OPL
        np.maximum(72 * ts * (1 + 0.45 * pit) * (1 - onl_loss * mo) - 0.3 * dr, 8.0),  # ONL
        6.0 * (1 - 0.9 * mo),  # external limiting membrane
        18 * ts * (1 + 0.3 * pit) * (1 - 0.85 * mo),  # myoid zone
        14 * ts * (1 - 0.85 * mo),  # ellipsoid zone
        12 * ts * (1 - 0.9 * mo),  # interdigitation zone
        22 * ts * (1 - 0.45 * m),  # RPE / Bruch's membrane
        dr,  # drusen material between RPE and Bruch's membrane
    ]
    br = traits.brightness * rng.uniform(0.92, 1.08)

    def jit(v: float) -> float:
        return v * br * rng.uniform(0.9, 1.1)

    shadow = 1 - rng.uniform(0.45, 0.75) * vs
    rpe_left = rng.uniform(0.2, 0.45)  # residual Bruch's membrane signal inside GA
    refl = [
        jit(0.72) * (1 + 0.25 * vs),  # NFL (vessel walls bright)
        jit(0.36) * shadow,
        jit(0.50) * shadow,
        jit(0.20) * shadow,
        jit(0.44) * shadow,
        (jit(0.12) + 0.05 * m) * shadow,  # ONL, a little brighter where collapsed
        jit(0.30) * (1 - 0.6 * m) * shadow,
        jit(0.16) * shadow,
        (jit(0.70) * (1 - m) + 0.16 * m) * (1 - 0.4 * an.junction) * shadow,  # EZ lost in GA
        (jit(0.42) * (1 - m) + 0.16 * m) * shadow,
        jit(0.92) * (rpe_left + (1 - rpe_left) * (1 - m)) * shadow,  # RPE lost in GA
        jit(0.38) * shadow,
    ]
    return thick, refl, shadow


def _surface(rng: np.random.Generator, an: _EnfaceAnatomy, total_mm: np.ndarray) -> np.ndarray:
    """Bruch's membrane depth (mm, ``(B, A)``): a tilted bowl with per-B-scan axial motion, placed
    so the whole retina and some choroid fit in the 1.9 mm of depth."""
    yb, xa = an.yb, an.xa
    nb = yb.shape[0]
    cb, ca = an.fovea[0] + rng.normal(0, 0.4), an.fovea[1] + rng.normal(0, 0.4)
    bowl = rng.uniform(0.004, 0.018) * ((yb - cb) ** 2 + (xa - ca) ** 2)
    tilt = rng.uniform(-0.04, 0.04) * yb + rng.uniform(-0.05, 0.05) * xa
    motion = rng.normal(0, 0.006, (nb, 1)) + (rng.random((nb, 1)) < 0.08) * rng.normal(0, 0.03, (nb, 1))
    bm = -bowl + tilt + motion
    below, top_margin = 0.38, 0.08  # mm of choroid kept under the deepest point; vitreous above
    room = FIELD_OF_VIEW_MM[1] - top_margin - 0.02
    if float((bm.max() + below) - (bm - total_mm).min()) > room:  # flatten until it fits
        mean = bm.mean()
        shrink = (room - float(total_mm.max()) - below) / max(float(bm.max() - bm.min()), 1e-6)
        bm = mean + (bm - mean) * float(np.clip(shrink, 0.0, 1.0))
    lo = top_margin - float((bm - total_mm).min())
    hi = FIELD_OF_VIEW_MM[1] - below - float(bm.max())
    return bm + lo + rng.uniform(0.15, 0.6) * max(hi - lo, 0.0)


def generate_case(shape: tuple[int, int, int] = DEFAULT_SHAPE, rng: np.random.Generator | None = None,
                  traits: PatientTraits | None = None, right_eye: bool | None = None) -> SyntheticCase:
    """Generate one case on a ``(B, D, A)`` grid covering :data:`FIELD_OF_VIEW_MM`.

    ``rng`` drives everything (default: a seed-0 generator); ``traits`` are the patient's (drawn
    from ``rng`` when omitted); ``right_eye`` puts the optic disc at +A (left eye: -A).
    ``SyntheticCase.surfaces`` gives the ILM and Bruch's membrane depths ``(B, A)`` in pixels.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    traits = patient_traits(rng) if traits is None else traits
    right_eye = bool(rng.random() < 0.5) if right_eye is None else right_eye
    nb, nd, na = (int(s) for s in shape)
    sb, sd, sa = spacing_for_shape((nb, nd, na))
    an = _anatomy(rng, nb, na, traits, right_eye)
    thick, refl, shadow = _layers(rng, an, traits)
    total_mm = sum(thick) / 1000.0
    bm = _surface(rng, an, total_mm)
    ilm = bm - total_mm
    ilm_px, bm_px = ilm / sd - 0.5, bm / sd - 0.5  # row coordinates (row i's centre at i)

    # layered retina: steps at each boundary, summed along depth, over the rows it spans only
    s0 = max(0, int(np.floor(ilm_px.min())) - 1)
    s1 = min(nd, int(np.ceil(bm_px.max())) + 2)
    bi, ai = np.indices((nb, na))
    imp = np.zeros((nb, s1 - s0 + 1, na), dtype=np.float32)
    top = ilm.copy()
    prev: np.ndarray | float = 0.0
    for t_um, r in zip(thick, refl):
        _deposit(imp, top / sd - 0.5 - s0, np.asarray(r - prev, np.float32), bi, ai)
        top = top + t_um / 1000.0
        prev = r
    _deposit(imp, bm_px - s0, np.asarray(-prev, np.float32), bi, ai)
    psf = 4.5e-3 / sd  # axial point-spread function (sigma, rows); blurring the steps blurs the layers
    if psf > 0.35:
        imp = gaussian_filter1d(imp, psf, axis=1, truncate=2.5, mode="constant")
    vol = np.zeros((nb, nd, na), dtype=np.float32)
    vol[:, s0:s1] = np.cumsum(imp, axis=1)[:, : s1 - s0]
    del imp

    # choroid and sclera under Bruch's membrane: textured, fading with depth; in GA light
    # reaches deeper (hypertransmission), drusen and vessels shadow it
    m = an.m
    deep_mm = 0.8
    hyper = rng.uniform(0.3, 1.5)
    deeper = rng.uniform(0.2, 0.8)
    c_amp = (0.5 * traits.brightness * rng.uniform(0.9, 1.1) * (1 + hyper * m) * shadow
             * np.exp(-an.drusen / 90.0)).astype(np.float32)[:, None, :]
    decay = (rng.uniform(0.10, 0.15) * (1 + deeper * m)).astype(np.float32)[:, None, :]
    choroid_mm = (rng.uniform(0.16, 0.3) * (1 - 0.25 * m)).astype(np.float32)[:, None, :]
    tex_step = 0.01  # mm per texture row
    n_tex = int(np.ceil(deep_mm / tex_step))
    r_lo = max(0, int(np.floor(bm_px.min())))
    r_hi = min(nd, int(np.ceil(bm_px.max() + deep_mm / sd)) + 1)
    if r_hi > r_lo:
        sig_a = max(0.04 / sa, 0.3)
        fine = _smooth_noise(rng, (nb, n_tex, na), (0.0, 2.0, sig_a))
        coarse = _smooth_noise(rng, (nb, n_tex, na), (0.0, 5.0, 2.75 * sig_a))
        wdeep = np.clip(np.arange(n_tex, dtype=np.float32) * (tex_step / 0.2), 0, 1)[None, :, None]
        tex = 0.3 + 0.85 * _sigmoid(2.2 * ((1 - wdeep) * fine + wdeep * coarse) + 0.6)
        rows = np.arange(r_lo, r_hi, dtype=np.float32)[None, :, None]
        dz_px = rows - bm_px.astype(np.float32)[:, None, :]  # (B, R, A)
        cover = np.clip(dz_px + 0.5, 0, 1)
        dz = np.maximum(dz_px, 0) * np.float32(sd)
        t = np.take_along_axis(tex, np.minimum((dz * (1 / tex_step)).astype(np.int64), n_tex - 1), axis=1)
        sclera = 0.45 + 0.55 * _sigmoid((choroid_mm - dz) * np.float32(1 / 0.03))
        taper = np.clip((deep_mm - dz) * np.float32(1 / 0.25), 0, 1)
        vol[:, r_lo:r_hi] += c_amp * cover * (1 + (t - 1) * sclera) * sclera * taper * np.exp(-dz / decay)

    # acquisition: roll-off, vignetting, gain per B-scan, speckle, noise, 10-bit grid
    z = ((np.arange(nd) + 0.5) * sd)[None, :, None]
    vig = 1 - rng.uniform(0.0, 0.25) * (an.xa / 3.0) ** 2
    gain = np.exp(rng.uniform(0.12, 0.4) * gaussian_filter1d(rng.standard_normal(nb), 1.5)
                  + rng.normal(0, 0.05, nb))
    gain *= np.where(rng.random(nb) < 0.07, rng.uniform(0.45, 0.8, nb), 1.0)  # dim scans (blinks)
    rolloff = np.exp(-z / rng.uniform(2.5, 5.0)).astype(np.float32)  # (1, D, 1)
    c = rng.uniform(0.7, 1.0)
    speck = rng.standard_exponential(vol.shape, dtype=np.float32)
    np.sqrt(speck, out=speck)  # Rayleigh amplitude speckle, mean sqrt(pi)/2
    speck *= np.float32(c * 2 / np.sqrt(np.pi))
    speck += np.float32(1 - c)
    speck *= (gain[:, None] * vig).astype(np.float32)[:, None, :]
    speck *= rolloff
    vol += np.float32(rng.uniform(0.03, 0.06))  # noise floor
    vol *= speck
    del speck
    noise = rng.standard_normal(vol.shape, dtype=np.float32)
    noise *= np.float32(rng.uniform(0.012, 0.03))
    vol += noise
    del noise
    np.clip(vol, 0, 1, out=vol)
    vol *= np.float32(_QUANT)
    np.rint(vol, out=vol)
    vol *= np.float32(1 / _QUANT)

    label = (an.level > 0).astype(np.uint8)
    info = {**an.info, "lesion_fraction": round(float(label.mean()), 6), "hypertransmission": round(hyper, 4)}
    enface = {"FAF": _faf(rng, an, (sb, sa)), "SLO": _slo(rng, an, (sb, sa))}
    surfaces = {"ILM": ilm_px.astype(np.float32), "BM": bm_px.astype(np.float32)}
    return SyntheticCase(vol, label, enface, (sb, sd, sa), surfaces, info)


def _faf(rng: np.random.Generator, an: _EnfaceAnatomy, spacing: tuple[float, float]) -> np.ndarray:
    """Fundus autofluorescence ``(B, A)`` in [0, 1]: GA dark, vessels dark, fovea dark (macular
    pigment), often a patchy hyper-autofluorescent rim around the lesion."""
    yb, xa, m, level = an.yb, an.xa, an.m, an.level
    shape = m.shape
    illum = rng.uniform(0.42, 0.58) * (1 - rng.uniform(0.1, 0.3) * (yb**2 + xa**2) / 18.0)
    illum = illum * (1 + rng.uniform(-0.06, 0.06) * yb / 3 + rng.uniform(-0.06, 0.06) * xa / 3)
    img = illum * (1 - rng.uniform(0.25, 0.5) * np.exp(-an.rf2 / (2 * rng.uniform(0.4, 0.6) ** 2)))
    img = img * (1 - rng.uniform(0.4, 0.65) * an.vessels_enface)
    img = img * (1 + 0.05 * _grid_noise(rng, shape, spacing, 0.05) + 0.04 * _grid_noise(rng, shape, spacing, 0.25))
    img = img * (1 + 0.06 * np.tanh(an.drusen / 40.0))
    rim = np.exp(-((level + 0.07) ** 2) / (2 * 0.05**2)) * (level < 0.02)
    patch = np.clip(0.6 + 0.8 * _grid_noise(rng, shape, spacing, 0.2), 0, 1)
    img = img + rng.choice([0.0, rng.uniform(0.05, 0.3)], p=[0.35, 0.65]) * rim * patch
    img = img * (1 - rng.uniform(0.72, 0.9) * m) + 0.02 * m * _grid_noise(rng, shape, spacing, 0.1)
    img = img + rng.uniform(0.012, 0.03) * rng.standard_normal(shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _slo(rng: np.random.Generator, an: _EnfaceAnatomy, spacing: tuple[float, float]) -> np.ndarray:
    """Infrared SLO ``(B, A)`` in [0, 1]: vessels dark, choroidal mottling, GA only slightly brighter."""
    yb, xa, m = an.yb, an.xa, an.m
    shape = m.shape
    illum = rng.uniform(0.35, 0.5) * (1 + rng.uniform(0.05, 0.25) * np.exp(-(yb**2 + xa**2) / 8.0))
    img = illum * (1 - rng.uniform(0.05, 0.15) * np.exp(-an.rf2 / 0.3))
    img = img * (1 - rng.uniform(0.25, 0.45) * an.vessels_enface)
    img = img * (1 + 0.1 * _grid_noise(rng, shape, spacing, 0.25) + 0.05 * _grid_noise(rng, shape, spacing, 0.06))
    img = img * (1 + 0.08 * np.tanh(an.drusen / 40.0))
    img = img * (1 + rng.uniform(0.06, 0.18) * m)
    img = img + rng.uniform(0.015, 0.035) * rng.standard_normal(shape)
    return np.clip(img, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- difficulty check
def oracle_threshold_dice(images: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, float]:
    """How far thresholding an en-face image gets, knowing the answer.

    ``images`` and ``labels`` are matching ``(B, A)`` arrays (e.g. a depth-mean projection of
    each volume and its GA label); only cases with some foreground count. Returns
    ``per_case``: the mean Dice when each case gets its own best threshold and polarity (lesion
    brighter or darker), and ``global``: the mean Dice of the single best threshold and polarity
    shared by all cases (the threshold searched over 512 quantiles of the pooled values).
    """
    pairs = [(np.asarray(i, np.float64).ravel(), np.asarray(lb).ravel() > 0) for i, lb in zip(images, labels)]
    pairs = [(i, lb) for i, lb in pairs if lb.any()]
    if not pairs:
        return {"per_case": float("nan"), "global": float("nan"), "cases": 0}
    best = []
    for img, lab in pairs:
        pos = lab.sum()
        top = 0.0
        for order in (np.argsort(-img, kind="stable"), np.argsort(img, kind="stable")):
            tp = np.cumsum(lab[order])
            k = np.arange(1, len(img) + 1)
            top = max(top, float((2 * tp / (k + pos)).max()))
        best.append(top)
    pooled = np.concatenate([i for i, _ in pairs])
    thresholds = np.unique(np.quantile(pooled, np.linspace(0, 1, 512)))
    g = 0.0
    for sign in (1.0, -1.0):
        dices = np.zeros(len(thresholds))
        for img, lab in pairs:
            pred = (sign * img)[None, :] > (sign * thresholds)[:, None]
            tp = (pred & lab[None, :]).sum(axis=1)
            dices += 2 * tp / (pred.sum(axis=1) + lab.sum())
        g = max(g, float(dices.max() / len(pairs)))
    return {"per_case": float(np.mean(best)), "global": g, "cases": len(pairs)}


# ----------------------------------------------------------------------------- dataset writer
def _case_names(prefix: str, count: int, test: bool) -> list[str]:
    width = max(3, len(str(max(count - 1, 0))))
    return [f"{prefix}_{'T' if test else ''}{i:0{width}d}" for i in range(count)]


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
) -> Path:
    """Write a raw dataset (layout of ``docs/layout.md``) of ``n`` training and ``num_test`` test cases.

    ``out_dir/imagesTr/CASE_0000<ending>``: float32 volume, numpy ``(B, D, A)`` = ``shape``
    (SimpleITK size ``(A, D, B)``), spacing ``(6/B, 1.9/D, 6/A)`` mm; ``enfaceTr/CASE_FAF`` and
    ``CASE_SLO``: float32 ``(B, A)``; ``labelsTr/CASE``: uint8 ``(B, A)`` for the first
    ``max(1, round(labelled_fraction * n))`` cases only (the rest are unlabelled);
    ``imagesTs/`` + ``labelsTs/`` for the test cases (default ``max(2, n // 5)``). Case names are
    ``NAME_000`` (training) and ``NAME_T000`` (test); ``NAME`` defaults to the ``Dataset900_NAME``
    part of ``out_dir`` or ``SynthGA``. Same arguments, same files.

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
    name = name or _default_name(out_dir)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", name):
        raise FPNError(f"--name {name!r}: use letters, digits and '-' only (it prefixes the case names)")
    if out_dir.exists() and not out_dir.is_dir():
        raise FPNError(f"-o {out_dir}: exists and is not a folder")
    ds_json = out_dir / "dataset.json"
    prefixes = {name}
    if out_dir.is_dir() and any(out_dir.iterdir()):
        try:
            previous = load_json(ds_json) if ds_json.is_file() else None
        except ValueError:
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
              "field_of_view_mm_bda": list(FIELD_OF_VIEW_MM)}
    meta = {
        "name": name,
        "channel_names": {"0": "OCT"},
        "enface_modalities": list(ENFACE_MODALITIES),
        "labels": {"background": 0, "GA": 1},
        "file_ending": file_ending,
        "projection_axis": "auto",
        "numTraining": n,
        "patients": {c: f"P{p:03d}" for c, (p, _) in zip(train, train_pat)},
        "synthetic": {**params, "complete": False},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json(meta, ds_json)
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
            cs = generate_case(shape, np.random.default_rng([seed, split, idx]), traits, right)  # type: ignore[arg-type]
            sp2 = (cs.spacing[0], cs.spacing[2])
            if split == _TRAIN:
                put(out_dir / "imagesTr" / f"{case}_0000{file_ending}", cs.volume, cs.spacing)
                for mod, img in cs.enface.items():
                    put(out_dir / "enfaceTr" / f"{case}_{mod}{file_ending}", img, sp2)
                if idx < n_lab:
                    put(out_dir / "labelsTr" / f"{case}{file_ending}", cs.label, sp2)
            else:
                put(out_dir / "imagesTs" / f"{case}_0000{file_ending}", cs.volume, cs.spacing)
                put(out_dir / "labelsTs" / f"{case}{file_ending}", cs.label, sp2)
            bar.update(1)
    # remove stale case files of an earlier generation (other n, ending or labelled share)
    alternatives = "|".join(re.escape(p) for p in sorted(prefixes))
    pattern = re.compile(rf"^({alternatives})_T?\d+(_\d{{4}}|_FAF|_SLO)?\.")
    for sub in ("imagesTr", "enfaceTr", "labelsTr", "imagesTs", "labelsTs"):
        folder = out_dir / sub
        if folder.is_dir():
            for p in folder.iterdir():
                if p.is_file() and p not in written and pattern.match(p.name):
                    p.unlink()
    meta["synthetic"]["complete"] = True
    save_json(meta, ds_json)
    return out_dir


# ----------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpn_make_synthetic",
        description="Write a synthetic OCT + en-face (FAF, SLO) geographic-atrophy dataset in the raw "
                    "fpnunet layout (imagesTr, enfaceTr, labelsTr, imagesTs, labelsTs, dataset.json).",
    )
    p.add_argument("-o", "--output", required=True, help="dataset folder to write, e.g. $FPN_RAW/Dataset900_SynthGA")
    p.add_argument("-n", "--num-cases", type=int, default=60, help="training cases (default 60)")
    p.add_argument("--labelled-fraction", type=float, default=1.0,
                   help="share of training cases with a label, in (0, 1] (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same files")
    p.add_argument("--shape", type=int, nargs=3, metavar=("B", "D", "A"), default=list(DEFAULT_SHAPE),
                   help=f"volume shape: B-scans, depth, A-scans (default {' '.join(map(str, DEFAULT_SHAPE))}; "
                        "Spectralis-like: 49 496 512)")
    p.add_argument("--num-test", type=int, default=None, help="test cases (default max(2, n // 5))")
    p.add_argument("--file-ending", default=".nii.gz", help=f"one of {', '.join(VOLUME_ENDINGS)} (default .nii.gz)")
    p.add_argument("--name", default=None, help="dataset and case-name prefix (default: from the folder, or SynthGA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@run_cli
def main(argv: list[str] | None = None) -> int:
    """``fpn_make_synthetic -o DIR [-n N] [--labelled-fraction F] [--seed S] [--shape B D A] ...``."""
    args = _parser().parse_args(argv)
    out = make_synthetic_dataset(args.output, n=args.num_cases, labelled_fraction=args.labelled_fraction,
                                 seed=args.seed, shape=tuple(args.shape), num_test=args.num_test,
                                 file_ending=args.file_ending, name=args.name, show_progress=not args.no_progress)
    meta = load_json(out / "dataset.json")["synthetic"]
    b, d, a = meta["shape_bda"]
    sb, sd, sa = spacing_for_shape((b, d, a))
    print(f"wrote {out}")
    print(f"{meta['n']} training cases ({meta['num_labelled']} labelled) + {meta['num_test']} test cases, "
          f"volume {b}x{d}x{a} (B x D x A), spacing {sb * 1000:.0f} x {sd * 1000:.1f} x {sa * 1000:.1f} um, "
          f"en-face FAF + SLO, seed {meta['seed']}")
    return 0
