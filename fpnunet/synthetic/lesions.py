"""Geographic-atrophy lesion shapes: a signed en-face level whose soft membership drives the
label, the RPE / ellipsoid-zone loss, outer-retina thinning, hypertransmission and dark FAF."""
from __future__ import annotations

import numpy as np

from fpnunet.synthetic.noise import _fourier_noise


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
