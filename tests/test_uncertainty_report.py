"""The report with uncertainty columns: flagged cases first and coloured, a disagreement picture each."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fpnunet.io import write_image
from fpnunet.prediction_folder import UNCERTAINTY_COLUMNS, PredictionFolder
from fpnunet.report.html import make_report
from fpnunet.report.uncertainty import HEAT, render_uncertainty

LABELS = {"background": 0, "GA": 1}


def test_disagreement_is_painted_where_members_split():
    votes = np.zeros((4, 4), np.float32)
    votes[:2] = 0.5  # half the members: full disagreement
    png = Image.open(io.BytesIO(render_uncertainty(np.zeros((4, 4)), (1.0, 1.0), votes)))
    rgb = np.asarray(png.convert("RGB"))
    assert tuple(rgb[0, 0]) == HEAT  # top: magenta
    assert tuple(rgb[-1, -1]) != HEAT and rgb[-1, -1, 0] == rgb[-1, -1, 1]  # bottom: grey


def test_report_lists_flagged_cases_first_with_a_picture(tmp_path):
    folder = PredictionFolder(tmp_path)
    rows = []
    for case, qc, score in (("a_ok", "ok", 0.01), ("b_check", "check", 0.4), ("c_check", "check", 0.9)):
        mask = np.zeros((6, 8), np.uint8)
        mask[1:4, 2:6] = 1
        write_image(folder.mask_file(case, ".nii.gz"), mask, (0.1, 0.05))
        rows.append({"case": case, "class": "GA", "area_mm2": 0.06, "qc": qc, "qc_by": "near_miss", "qc_score": score,
                     "area_low_mm2": 0.05, "area_high_mm2": 0.08, "disagreement": score, "entropy": score,
                     "near_miss": score, "fold_disagreement": None})
        if qc == "check":
            votes = np.zeros((6, 8), np.float32)
            votes[1:4, 2:6] = 0.5
            folder.write_vote_map(case, votes)
    folder.write_areas(rows, ("case", "class", "area_mm2", *UNCERTAINTY_COLUMNS))
    html_path, _ = make_report(tmp_path, dataset_json={"labels": LABELS})
    html = html_path.read_text()
    order = [html.index(f">{c}<") for c in ("c_check", "b_check", "a_ok")]
    assert order == sorted(order)  # most uncertain first, the ok case last
    assert html.count('<tr class="check">') == 2 and "2 flagged for a check by near_miss" in html
    assert 'href="#unc0"' in html and 'id="unc0"' in html and 'id="unc1"' in html
    assert "0.05\u20130.08" in html


def test_a_table_from_before_qc_by_still_reads(tmp_path):
    """lesion_areas.csv written before the ``qc_by`` column: the flag reads, its score is unnamed."""
    folder = PredictionFolder(tmp_path)
    old = ("qc", "qc_score", "area_low_mm2", "area_high_mm2", "disagreement", "entropy", "fold_disagreement")
    folder.write_areas([{"case": "a", "class": "GA", "area_mm2": 0.06, "qc": "check", "qc_score": 0.4,
                         "area_low_mm2": 0.05, "area_high_mm2": 0.08, "disagreement": 0.4, "entropy": 0.2,
                         "fold_disagreement": None}], ("case", "class", "area_mm2", *old))
    assert folder.read_qc() == {"a": {"qc": "check", "qc_by": None, "qc_score": 0.4, "GA": (0.05, 0.08)}}
