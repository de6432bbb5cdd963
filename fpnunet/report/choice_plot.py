"""``chosen_pipeline.png``: the cross-validation scores of ``fpn_find_best_configuration`` as a
picture, for people who would rather look than read the table.

One row per pipeline (every single candidate, and the best ensembles up to :data:`MAX_ROWS` rows
in all), best at the top: a bar for the CV Dice (mean over cases), a dot per fold (the fold's
mean), the choice in :data:`CHOSEN`, the pipelines the cross-validation does not separate from it
(``within_noise``) in :data:`CLOSE`, the others grey. The x axis is Dice in %, from 0.
"""
from __future__ import annotations

import io
import math
from typing import Any

MAX_ROWS = 16
CHOSEN, CLOSE, OTHER = "tab:red", "tab:orange", "0.7"


def rows_to_draw(choice: dict[str, Any], max_rows: int = MAX_ROWS) -> list[dict[str, Any]]:
    """The scores drawn, in the table's order (best first): every single candidate, then the best
    ensembles until ``max_rows``."""
    scores = list(choice["scores"])
    singles = {s["name"] for s in scores if len(s["members"]) == 1}
    room = max(max_rows - len(singles), 0)
    keep, ensembles = [], 0
    for s in scores:
        if s["name"] in singles:
            keep.append(s)
        elif ensembles < room:
            keep.append(s)
            ensembles += 1
    return keep


def draw_choice(choice: dict[str, Any], dpi: int = 90) -> bytes:
    """PNG bytes of the scores of a chosen-pipeline record (:mod:`fpnunet.pipeline_files`)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    rows = rows_to_draw(choice)
    chosen = " + ".join(m["candidate"] for m in choice["members"])
    close = {c["name"] for c in choice.get("within_noise", [])}
    fig = Figure(figsize=(8.0, 0.9 + 0.32 * len(rows)), dpi=dpi)
    ax = fig.subplots()
    for y, s in enumerate(rows):
        colour = CHOSEN if s["name"] == chosen else CLOSE if s["name"] in close else OTHER
        ax.barh(y, 100 * s["dice"], color=colour, height=0.7)
        folds = [100 * v for v in s.get("fold_dice", {}).values() if not math.isnan(v)]
        ax.plot(folds, [y] * len(folds), "o", color="0.15", ms=3)
    ax.set_yticks(range(len(rows)), [s["name"] for s in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("cross-validation Dice % (bar: mean over cases; dots: folds)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{choice['dataset']}: chosen {chosen} (red)\n"
                 f"{len(close)} pipeline(s) the cross-validation does not separate from it (orange)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
