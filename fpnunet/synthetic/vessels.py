"""Retinal vessels: a tree of arcades and branches from the optic disc, rendered on the en-face grid."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_filter1d, map_coordinates, uniform_filter1d

from fpnunet.synthetic.geometry import FIELD_OF_VIEW_MM


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
