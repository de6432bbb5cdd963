"""Which unlabelled volumes to label next (``fpn_suggest_labels``): uncertainty with some diversity.

Every candidate is predicted with the ensemble's members kept apart and scored like ``fpn_predict``
scores a case (the QC score of :mod:`.ensemble_scores`, with the model folder's calibration). Each
volume also gets a small appearance descriptor: its en-face projection (mean over depth of the
preprocessed first channel) and its predicted lesion probability, each block-averaged to
:data:`GRID` x :data:`GRID` and standardised. The ranking is greedy: at each step the candidate
with the largest

    (1 - diversity) * uncertainty rank + diversity * distance / largest distance

is taken, where the uncertainty rank is in [0, 1] (1: most uncertain) and the distance is the
descriptor distance to the nearest already labelled case or already suggested one. With
``diversity`` 0 the order is by uncertainty alone; the default 0.3 keeps the top of the list from
being ten near-copies of one hard eye.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .ensemble_scores import CaseUncertainty

__all__ = ["GRID", "Candidate", "descriptor", "rank_candidates"]

GRID = 8


@dataclass
class Candidate:
    """One unlabelled volume: its scores, descriptor and what the pictures need."""

    case: str
    uncertainty: CaseUncertainty
    features: np.ndarray
    area_mm2: float
    rank: int = 0
    score: float = 0.0
    distance: float = float("nan")


def _grid(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    small = ndimage.zoom(image, (GRID / image.shape[0], GRID / image.shape[1]), order=1, grid_mode=True,
                         mode="nearest")
    small = small[:GRID, :GRID]
    return (small - small.mean()) / (small.std() + 1e-6)


def descriptor(volume: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
    """Appearance descriptor of a preprocessed volume ``(C, B, depth, A)`` (and its mean
    probabilities ``(K, B, A)``): the standardised :data:`GRID` x :data:`GRID` projection, followed by
    the lesion probability on the same grid when given."""
    projection = np.asarray(volume[0], dtype=np.float32).mean(axis=1)
    parts = [_grid(projection).ravel()]
    if probs is not None:
        lesion = probs[0] if probs.shape[0] == 1 else 1.0 - probs[0]
        small = ndimage.zoom(np.asarray(lesion, np.float32), (GRID / lesion.shape[0], GRID / lesion.shape[1]),
                             order=1, grid_mode=True, mode="nearest")[:GRID, :GRID]
        parts.append(small.ravel() * 2.0)  # probabilities in [0, 1]: weighted to the projection's spread
    return np.concatenate(parts)


def _distances(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    if reference.size == 0:
        return np.full(features.shape[0], np.inf)
    d = np.sqrt(((features[:, None, :] - reference[None, :, :]) ** 2).sum(-1))
    return d.min(1)


def rank_candidates(candidates: Sequence[Candidate], labelled_features: np.ndarray | None = None,
                    diversity: float = 0.3) -> list[Candidate]:
    """``candidates`` in suggested order (``rank`` 1 first), each with its ``score`` and ``distance``."""
    todo = list(candidates)
    if not todo:
        return []
    scores = np.array([c.uncertainty.qc_score for c in todo])
    order = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
    urank = order / max(len(todo) - 1, 1)
    feats = np.stack([c.features for c in todo])
    ref = labelled_features if labelled_features is not None and labelled_features.size else \
        np.zeros((0, feats.shape[1]), np.float32)
    nearest = _distances(feats, ref.reshape(-1, feats.shape[1]))
    left = list(range(len(todo)))
    out: list[Candidate] = []
    while left:
        d = nearest[left]
        finite = d[np.isfinite(d)]
        scale = finite.max() if finite.size and finite.max() > 0 else 1.0
        dn = np.where(np.isfinite(d), d / scale, 1.0)
        value = (1 - diversity) * urank[left] + diversity * dn
        j = int(np.argmax(value))
        i = left.pop(j)
        c = todo[i]
        c.rank, c.score, c.distance = len(out) + 1, float(value[j]), float(nearest[i])
        out.append(c)
        if left:
            nearest[left] = np.minimum(nearest[left], _distances(feats[left], feats[i][None]))
    return out
