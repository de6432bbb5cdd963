"""One case: the OCT volume rendered from an eye's anatomy (layered retina, choroid and sclera),
degraded like a real scan (roll-off, vignetting, gain, speckle, noise, 10-bit grid), with its GA
label, en-face images and surfaces."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d

from fpnunet.synthetic.anatomy import _anatomy, _layers, _surface
from fpnunet.synthetic.enface import _faf, _slo
from fpnunet.synthetic.geometry import DEFAULT_SHAPE, spacing_for_shape
from fpnunet.synthetic.noise import _sigmoid, _smooth_noise
from fpnunet.synthetic.patients import PatientTraits, patient_traits

_QUANT = 1024.0  # volumes are stored on a 1/1024 intensity grid (exact in float32, compresses well)


PERILESIONAL_MM = 0.2
"""Width of the perilesional zone (label 2 with ``classes=2``): where the outer-retina thinning
around the lesion (its wider membership) still shows."""

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


def generate_case(shape: tuple[int, int, int] = DEFAULT_SHAPE, rng: np.random.Generator | None = None,
                  traits: PatientTraits | None = None, right_eye: bool | None = None,
                  enface_lesion_contrast: float = 1.0, classes: int = 1) -> SyntheticCase:
    """Generate one case on a ``(B, D, A)`` grid covering :data:`FIELD_OF_VIEW_MM`.

    ``rng`` drives everything (default: a seed-0 generator); ``traits`` are the patient's (drawn
    from ``rng`` when omitted); ``right_eye`` puts the optic disc at +A (left eye: -A).
    ``SyntheticCase.surfaces`` gives the ILM and Bruch's membrane depths ``(B, A)`` in pixels.
    ``enface_lesion_contrast`` in [0, 1] scales how much the lesion shows in the FAF and SLO images
    (1: as drawn; 0.1: barely); the volume and the label do not change with it. ``classes=2`` adds
    label 2, the perilesional zone: the band up to :data:`PERILESIONAL_MM` outside the lesion border,
    where the outer retina thins and the ellipsoid zone fades (the volume does not change with it).
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
    if classes == 2:
        label[(an.level <= 0) & (an.level > -PERILESIONAL_MM)] = 2
    info = {**an.info, "lesion_fraction": round(float(label.mean()), 6), "hypertransmission": round(hyper, 4)}
    enface = {"FAF": _faf(rng, an, (sb, sa), enface_lesion_contrast),
              "SLO": _slo(rng, an, (sb, sa), enface_lesion_contrast)}
    surfaces = {"ILM": ilm_px.astype(np.float32), "BM": bm_px.astype(np.float32)}
    return SyntheticCase(vol, label, enface, (sb, sd, sa), surfaces, info)
