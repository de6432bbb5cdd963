"""The report's QC part: the flag, the area interval and, for every flagged case, a picture of where
the ensemble's members disagree.

``fpn_predict`` writes, per case, the uncertainty columns of ``lesion_areas.csv`` (``qc``,
``qc_score``, ``area_low_mm2``, ``area_high_mm2``, ...) and, for a flagged case, its vote map
``uncertainty/CASE.npz`` (the share ``v`` of the members calling a lesion per pixel). The picture
shows the en-face image in grey with the disagreement ``4 v (1 - v)`` (0 where all members agree,
1 where they split evenly) painted in :data:`HEAT` over it, and the predicted outline; square
physical pixels as the overlays (:func:`fpnunet.report.overlay.display_factors`).
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from fpnunet.prediction_folder import PredictionFolder, read_label_map
from fpnunet.report.cases import CaseResult
from fpnunet.report.overlay import RGB, Layer, compose, display_factors, enface_background

__all__ = ["HEAT", "render_uncertainty", "attach_qc"]

HEAT: RGB = (255, 0, 255)


def render_uncertainty(background: np.ndarray | None, spacing: Sequence[float], votes: np.ndarray,
                       layers: Sequence[Layer] = ()) -> bytes:
    """PNG bytes: grey ``background``, disagreement ``4 v (1 - v)`` of ``votes`` ``(B, A)`` in :data:`HEAT`
    (opacity = disagreement), outlines of ``layers``."""
    from PIL import Image as PILImage

    votes = np.clip(np.asarray(votes, dtype=np.float32), 0, 1)
    factors = display_factors(votes.shape, spacing)
    rgb = compose(background, [], factors) if background is not None else \
        np.full((votes.shape[0] * factors[0], votes.shape[1] * factors[1], 3), 24, np.uint8)
    alpha = np.repeat(np.repeat(4 * votes * (1 - votes), factors[0], 0), factors[1], 1)[..., None]
    rgb = (rgb * (1 - alpha) + np.asarray(HEAT, np.float32) * alpha).astype(np.uint8)
    if layers:
        outlined = compose(None, list(layers), factors)  # outlines on a flat background
        line = np.any(outlined != 24, axis=2)
        rgb[line] = outlined[line]
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def attach_qc(results: list[CaseResult], pred_dir: str | Path, preds: Mapping[str, Path], labels: Mapping[str, int],
              colours: Mapping[str, RGB], folders: Iterable[str | Path | None], projection_axis: int | str = "auto"
              ) -> None:
    """Fill each result's ``qc``, ``qc_score`` and ``area_interval`` from ``lesion_areas.csv``, and the
    uncertainty picture of every flagged case that has a vote map."""
    folder = PredictionFolder(Path(pred_dir))
    qc = folder.read_qc()
    if not qc:
        return
    folders = list(folders)
    fg = {n: int(v) for n, v in labels.items() if int(v) != 0}
    for r in results:
        entry = qc.get(r.case)
        if entry is None or r.failed:
            continue
        r.qc, r.qc_score = str(entry["qc"]), float(entry["qc_score"])
        r.area_interval = {k: v for k, v in entry.items() if isinstance(v, tuple)}
        votes = folder.read_vote_map(r.case) if r.qc == "check" else None
        if votes is None or r.case not in preds:
            continue
        pred, spacing = read_label_map(preds[r.case], labels)
        if pred.shape != votes.shape:
            continue
        background, _ = enface_background(r.case, pred.shape, folders, projection_axis)
        r.uncertainty_picture = render_uncertainty(background, spacing, votes,
                                                   [Layer(pred == v, colours[n]) for n, v in fg.items()])
