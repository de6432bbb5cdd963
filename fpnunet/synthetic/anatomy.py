"""One eye's anatomy: en-face maps (fovea, disc, lesion membership, vessels, drusen), the
retinal layers' thicknesses and reflectivities, and the depth of Bruch's membrane."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fpnunet.synthetic.geometry import FIELD_OF_VIEW_MM
from fpnunet.synthetic.lesions import _lesion_level
from fpnunet.synthetic.noise import _sigmoid
from fpnunet.synthetic.patients import PatientTraits
from fpnunet.synthetic.vessels import _render_vessels, _vessel_tree


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
