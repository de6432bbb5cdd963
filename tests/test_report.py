"""What a person sees: lesion measures, overlay pictures, growth rates and the HTML report."""
from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from fpnunet.atomic import save_json
from fpnunet.commands.report import main as report_main
from fpnunet.inference.export import lesion_stats
from fpnunet.io import write_image
from fpnunet.report.growth import fit_rate, years_since
from fpnunet.report.overlay import FOOTER_PX, REFERENCE_COLOUR, Layer, display_factors, render_overlay

GA = (255, 48, 48)  # the palette's first colour: GA's outline when dataset.json gives no colour


def _run(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# ----------------------------------------------------------------------------- lesions
def test_lesion_stats_count_components_and_focality():
    seg = np.zeros((10, 20), np.uint8)
    seg[1:3, 1:4] = 1          # lesion 1: 6 px
    seg[3, 4] = 1              # touches lesion 1 at a corner only: the same lesion (8-connected)
    seg[6:9, 10:15] = 1        # lesion 2: 15 px
    seg[0:2, 18:20] = 2        # another class
    stats = lesion_stats(seg, (0.1, 0.05), {"background": 0, "GA": 1, "drusen": 2, "RPD": 3})
    px = 0.1 * 0.05
    assert stats["GA"].area_mm2 == pytest.approx(22 * px)
    assert stats["GA"].sqrt_area_mm == pytest.approx(math.sqrt(22 * px))
    assert (stats["GA"].lesions, stats["GA"].focality) == (2, "multifocal")
    assert (stats["drusen"].lesions, stats["drusen"].focality) == (1, "unifocal")
    assert (stats["RPD"].area_mm2, stats["RPD"].lesions, stats["RPD"].focality) == (0.0, 0, "none")


# ----------------------------------------------------------------------------- overlays
def test_overlay_size_and_outline_on_the_mask_boundary():
    b, a, spacing = 12, 48, (0.25, 0.125)  # B-scans twice as far apart as A-scans
    pred = np.zeros((b, a), bool)
    pred[3:9, 10:30] = True
    pred[0:2, 40:44] = True  # touches the top edge: closed there
    ref = np.zeros((b, a), bool)
    ref[4:10, 12:32] = True
    png = render_overlay(np.random.default_rng(0).random((b, a)), spacing,
                         [Layer(ref, REFERENCE_COLOUR, inner=False), Layer(pred, GA)], title="c", corner="Dice 0.8")
    fb, fa = display_factors((b, a), spacing)
    assert fb == 2 * fa  # square physical pixels
    rgb = _pixels(png)
    assert rgb.shape == (b * fb + FOOTER_PX, a * fa, 3)
    image = rgb[: b * fb]
    rows, cols = np.nonzero(np.all(image == GA, axis=-1))
    # every outline pixel lies on an en-face pixel of the mask that touches the outside
    boundary = pred & ~ndimage.binary_erosion(pred, ndimage.generate_binary_structure(2, 1), border_value=0)
    assert rows.size and boundary[rows // fb, cols // fa].all()
    # and every boundary pixel of the mask carries outline
    hit = np.zeros_like(pred)
    hit[rows // fb, cols // fa] = True
    assert (hit == boundary).all()
    # the reference outline lies just outside the reference
    rr, rc = np.nonzero(np.all(image == REFERENCE_COLOUR, axis=-1))
    assert rr.size and not ref[rr // fb, rc // fa].any()
    assert ndimage.binary_dilation(ref, np.ones((3, 3), bool))[rr // fb, rc // fa].all()  # next to it


# ----------------------------------------------------------------------------- growth
def test_fit_rate_exact_and_standard_error():
    t = np.array([0.0, 0.5, 1.0, 2.0])
    r = fit_rate(t, 3.0 + 1.7 * t)
    assert (r.slope, r.intercept, r.se) == pytest.approx((1.7, 3.0, 0.0), abs=1e-12)
    noisy = fit_rate(t, 3.0 + 1.7 * t + np.array([0.1, -0.1, -0.1, 0.1]))
    # textbook standard error of an OLS slope
    resid = 3.0 + 1.7 * t + np.array([0.1, -0.1, -0.1, 0.1]) - (noisy.intercept + noisy.slope * t)
    assert noisy.se == pytest.approx(math.sqrt((resid ** 2).sum() / 2 / ((t - t.mean()) ** 2).sum()))
    assert math.isnan(fit_rate([0.0, 1.0], [1.0, 2.0]).se) and math.isnan(fit_rate([1.0], [1.0]).slope)


def _growth_dataset(tmp_path: Path, rate_mm2: float) -> tuple[Path, Path, list[dt.date]]:
    """Masks of one eye at six visits whose GA area grows ``rate_mm2`` mm^2/year (rectangles of 40 rows)."""
    pred = tmp_path / "pred"
    dates = [dt.date(2020, 1, 1), dt.date(2020, 7, 1), dt.date(2021, 1, 4), dt.date(2021, 6, 30),
             dt.date(2022, 1, 1), dt.date(2023, 1, 2)]
    years = years_since(dates)
    visits = {}
    for i, (d, t) in enumerate(zip(dates, years)):
        seg = np.zeros((48, 200), np.uint8)
        width = int(round(20 + rate_mm2 * t / (40 * 0.05 * 0.05)))  # one column of 40 px = 0.1 mm^2
        seg[4:44, 5:5 + width] = 1
        write_image(pred / f"eye_v{i}.nii.gz", seg, (0.05, 0.05))
        visits[f"eye_v{i}"] = {"patient": "PSEUDO-17", "eye": "OS", "date": d.isoformat()}
    raw = tmp_path / "raw" / "Dataset950_Growth"
    raw.mkdir(parents=True)
    save_json({"name": "Growth", "channel_names": {"0": "OCT"}, "labels": {"background": 0, "GA": 1},
               "file_ending": ".nii.gz", "visits": visits, "colors": {"GA": "#0000ff"}}, raw / "dataset.json")
    return pred, raw, dates


class _Collect(HTMLParser):
    """Rows of the case table, image sources, and text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.imgs: list[dict] = []
        self.text: list[str] = []
        self._in_cases = self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._in_cases = a.get("id") == "case-table"
        if tag == "tbody" and self._in_cases:
            self._in_body = True
        if tag == "tr" and self._in_body:
            self.rows.append({"class": a.get("class"), "text": []})
        if tag == "img":
            self.imgs.append(a)

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        if tag == "table":
            self._in_cases = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_body and self.rows:
            self.rows[-1]["text"].append(data)


def test_growth_rate_of_a_known_series_within_one_percent(tmp_path, monkeypatch):
    pred, raw, dates = _growth_dataset(tmp_path, rate_mm2=1.8)
    monkeypatch.setenv("FPN_RAW", str(raw.parent))
    out = tmp_path / "r" / "report.html"
    assert _run(report_main, ["-p", str(pred), "-d", "950", "-o", str(out)]) == 0
    rates = pd.read_csv(tmp_path / "r" / "report_growth.csv")
    assert len(rates) == 1
    row = rates.iloc[0]
    assert (row["patient"], row["eye"], row["class"], row["visits"]) == ("PSEUDO-17", "OS", "GA", 6)
    assert row["area_rate_mm2_per_year"] == pytest.approx(1.8, rel=0.01)
    assert row["area_rate_se"] < 0.05
    # the square-root rate is the slope through the square roots of the measured areas
    from fpnunet.prediction_folder import read_label_map

    areas = [lesion_stats(*read_label_map(pred / f"eye_v{i}.nii.gz"), {"background": 0, "GA": 1})["GA"].area_mm2
             for i in range(6)]
    expected = fit_rate(years_since(dates), np.sqrt(areas)).slope
    assert row["sqrt_area_rate_mm_per_year"] == pytest.approx(expected, rel=1e-9)
    html = out.read_text()
    p = _Collect()
    p.feed(html)
    assert len(p.rows) == 6
    assert "mm\u00b2/year" in html and "PSEUDO-17" in html
    assert sum(1 for i in p.imgs if i.get("alt", "").startswith("growth of")) == 1


def test_report_rows_images_failed_cases_and_self_contained(tmp_path):
    pred, ref, images = tmp_path / "pred", tmp_path / "labelsTs", tmp_path / "imagesTs"
    rng = np.random.default_rng(0)
    for i in range(3):
        seg = np.zeros((8, 32), np.uint8)
        seg[2:6, 4 + i:12 + 2 * i] = 1
        write_image(ref / f"c{i}.nii.gz", seg, (0.375, 0.1875))
        write_image(pred / f"c{i}.nii.gz", np.roll(seg, 1, axis=1), (0.375, 0.1875))
        write_image(images / f"c{i}_0000.nii.gz", rng.random((8, 20, 32)).astype(np.float32), (0.375, 0.1, 0.1875))
    write_image(ref / "c3.nii.gz", np.zeros((8, 32), np.uint8), (0.375, 0.1875))  # its prediction failed
    write_image(images / "c3_0000.nii.gz", rng.random((8, 20, 32)).astype(np.float32), (0.375, 0.1, 0.1875))
    (pred / "failed_cases.csv").write_text("case,error\nc3,imagesTs/c3_0000.nii.gz: file is truncated\n")
    out = tmp_path / "report.html"
    assert _run(report_main, ["-p", str(pred), "-r", str(ref), "-i", str(images), "-o", str(out)]) == 0
    html = out.read_text()
    p = _Collect()
    p.feed(html)
    assert len(p.rows) == 4
    assert [r["class"] for r in p.rows] == ["ok", "ok", "ok", "failed"]
    assert "file is truncated" in "".join(p.rows[3]["text"])
    thumbs = [i for i in p.imgs if i.get("class") == "thumb"]
    overlays = [i for i in p.imgs if i.get("alt", "").startswith("overlay of")]
    assert len(thumbs) == 3 and len(overlays) == 3
    assert all(i["src"].startswith("data:image/png;base64,") for i in p.imgs)  # nothing outside the file
    assert "http://" not in html and "https://" not in html and "<link" not in html
    dice = [float(t) for t in p.rows[0]["text"] if t.replace(".", "").isdigit() and "." in t]
    assert dice  # Dice and HD95 columns are filled
    assert not (tmp_path / "report_growth.csv").exists()  # no visits: no growth


def test_no_patient_identifier_unless_pseudonymised_in_dataset_json(tmp_path, monkeypatch):
    pred, images = tmp_path / "pred", tmp_path / "imagesTs"
    seg = np.zeros((8, 32), np.uint8)
    seg[2:5, 3:9] = 1
    write_image(pred / "c0.nii.gz", seg, (0.375, 0.1875))
    write_image(pred / "c1.nii.gz", seg, (0.375, 0.1875))
    import SimpleITK as sitk

    vol = sitk.GetImageFromArray(np.random.default_rng(1).random((8, 20, 32)).astype(np.float32))
    vol.SetMetaData("descrip", "Jane Doe 1950-02-03")  # an identifier in an image header
    images.mkdir()
    sitk.WriteImage(vol, str(images / "c0_0000.nii.gz"))
    out = tmp_path / "a.html"
    assert _run(report_main, ["-p", str(pred), "-i", str(images), "-o", str(out)]) == 0
    html = out.read_text()
    assert "Jane" not in html and "1950" not in html and ">patient<" not in html
    raw = tmp_path / "raw" / "Dataset951_Pseudo"
    raw.mkdir(parents=True)
    save_json({"channel_names": {"0": "OCT"}, "labels": {"background": 0, "GA": 1}, "file_ending": ".nii.gz",
               "patients": {"c0": "H-3f9a"}}, raw / "dataset.json")
    monkeypatch.setenv("FPN_RAW", str(raw.parent))
    assert _run(report_main, ["-p", str(pred), "-i", str(images), "-d", "951", "-o", str(out)]) == 0
    html = out.read_text()
    assert ">patient<" in html and "H-3f9a" in html and "Jane" not in html


def test_report_flags_checked_before_writing(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    assert _run(report_main, ["-p", str(tmp_path / "nope")]) == 1
    assert "nope: prediction folder not found" in capsys.readouterr().err
    assert _run(report_main, ["-p", str(tmp_path / "pred"), "-o", str(tmp_path / "r.pdf")]) == 1
    assert "ending in .html" in capsys.readouterr().err
    bad = tmp_path / "v.csv"
    bad.write_text("case,patient,date\nc0,P1,2020-01-01\n")
    assert _run(report_main, ["-p", str(tmp_path / "pred"), "--visits", str(bad)]) == 1
    assert "v.csv: visits CSV lacks the column(s) eye" in capsys.readouterr().err
    assert not (tmp_path / "pred" / "report.html").exists()


def test_colour_from_dataset_json_is_used_and_checked(tmp_path, monkeypatch):
    pred, raw, _ = _growth_dataset(tmp_path, rate_mm2=1.0)
    monkeypatch.setenv("FPN_RAW", str(raw.parent))
    from fpnunet.report.cases import write_prediction_overlays

    broken = tmp_path / "broken.nii.gz"
    broken.write_text("not an image")
    files = {"eye_v0": pred / "eye_v0.nii.gz", "broken": broken}
    info = json.loads((raw / "dataset.json").read_text())
    written, problems = write_prediction_overlays(files, info["labels"], tmp_path / "ov", info)
    assert [p.name for p in written] == ["eye_v0.png"] and sorted(os.listdir(tmp_path / "ov")) == ["eye_v0.png"]
    assert len(problems) == 1 and problems[0].startswith(f"{broken}: no overlay ("), problems  # skipped, said why
    rgb = np.asarray(Image.open(written[0]).convert("RGB"))
    assert np.all(rgb == (0, 0, 255), axis=-1).sum() > 100 and not np.all(rgb == GA, axis=-1).any()
    info["colors"] = {"GA": "not-a-colour"}
    save_json(info, raw / "dataset.json")
    assert _run(report_main, ["-p", str(pred), "-d", "950", "-o", str(tmp_path / "x.html")]) == 1


def test_visits_as_fpn_import_writes_them():
    from fpnunet.report.visits import visits_from_dataset

    raw = {"visits": {"a": {"patient": "K1", "eye": "OS", "date": "2023-04-05", "mirrored": True, "split": "Ts"},
                      "b": {"patient": "K1", "eye": "unknown", "date": "", "split": "Tr"}},
           "patients": {"c": "K2"}}
    v = visits_from_dataset(raw, "dataset.json")
    assert (v["a"].patient, v["a"].eye, v["a"].date, v["a"].eye_key) == ("K1", "OS", dt.date(2023, 4, 5), ("K1", "OS"))
    assert (v["b"].eye, v["b"].date, v["b"].eye_key) == (None, None, None)  # no laterality: no growth series
    assert (v["c"].patient, v["c"].eye) == ("K2", None)
    from fpnunet.errors import FPNError

    with pytest.raises(FPNError, match=r"dataset.json: visits\['a'\]: date '05/04/2023' is not an ISO date"):
        visits_from_dataset({"visits": {"a": {"date": "05/04/2023"}}}, "dataset.json")


def test_overlay_bar_follows_progress(tmp_path, capsys):
    """``--no-progress`` runs (training's final validation) print no overlay bar; 8 cases do otherwise."""
    from fpnunet.report.cases import write_evaluation_overlays

    entries = [{"case": f"c{i}", "reference_file": str(tmp_path / f"c{i}.nii.gz"),
                "prediction_file": str(tmp_path / f"missing{i}.nii.gz")} for i in range(8)]
    summary = {"labels": {"background": 0, "GA": 1}, "metric_per_case": entries}
    for progress in (False, True):
        written, problems = write_evaluation_overlays(summary, tmp_path / "ov", progress=progress)
        assert written == [] and len(problems) == 8
        assert ("overlays" in capsys.readouterr().err) is progress
