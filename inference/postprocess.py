"""Post-processing of predicted probabilities into a label map (``fpn_find_best_configuration``
decides it on the cross-validation predictions, ``fpn_predict --best`` applies it).

:class:`PostProcessing` holds four choices, applied per foreground class in this order:

* ``threshold``: one foreground class (sigmoid): foreground where the probability exceeds it;
  several classes: the arg-max (the threshold is not used);
* ``fill_holes``: background enclosed by a lesion becomes lesion;
* ``min_area_mm2``: lesions (8-connected components, as :mod:`fpnunet.inference.export` counts them)
  smaller than this area are removed;
* ``keep_largest``: only the largest lesion of the class is kept.

The identity (0.5, no filling, 0 mm^2, everything kept) is what ``fpn_predict`` does without it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from fpnunet.inference.export import probabilities_to_segmentation

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class PostProcessing:
    threshold: float = 0.5
    min_area_mm2: float = 0.0
    fill_holes: bool = False
    keep_largest: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostProcessing:
        return cls(float(d["threshold"]), float(d["min_area_mm2"]), bool(d["fill_holes"]), bool(d["keep_largest"]))

    def describe(self) -> str:
        parts = [f"threshold {self.threshold:g}"]
        if self.fill_holes:
            parts.append("fill holes")
        if self.min_area_mm2 > 0:
            parts.append(f"remove lesions < {self.min_area_mm2:.4g} mm^2")
        if self.keep_largest:
            parts.append("keep the largest lesion")
        return ", ".join(parts)

    def apply(self, probs: np.ndarray, spacing: tuple[float, float], labels: dict[str, int]) -> np.ndarray:
        """Label map ``(B, A)`` of probabilities ``(K, B, A)`` on a grid of ``spacing`` mm."""
        seg = probabilities_to_segmentation(probs, threshold=self.threshold, labels=labels)
        return self.clean(seg, spacing, labels)

    def clean(self, seg: np.ndarray, spacing: tuple[float, float], labels: dict[str, int]) -> np.ndarray:
        """The component steps on a label map (a copy)."""
        if not (self.fill_holes or self.min_area_mm2 > 0 or self.keep_largest):
            return seg
        out = np.array(seg, copy=True)
        pixel = float(spacing[0]) * float(spacing[1])
        for value in sorted({int(v) for v in labels.values() if int(v) != 0}):
            mask = out == value
            if self.fill_holes:
                filled = ndimage.binary_fill_holes(mask)
                out[filled & (out == 0)] = value
                mask = out == value
            if self.min_area_mm2 > 0 or self.keep_largest:
                components, n = ndimage.label(mask, structure=_EIGHT)
                if n == 0:
                    continue
                sizes = np.bincount(components.ravel())[1:]
                keep = sizes * pixel >= self.min_area_mm2
                if self.keep_largest:
                    keep &= sizes == sizes[keep].max() if keep.any() else False
                    if keep.sum() > 1:  # equal sizes: the first one
                        keep[np.flatnonzero(keep)[1:]] = False
                drop = np.flatnonzero(~keep) + 1
                out[np.isin(components, drop)] = 0
        return out
