"""Difficulty check: how far a known-best threshold on an en-face image gets."""
from __future__ import annotations

import numpy as np


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
