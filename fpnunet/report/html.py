"""The report as ONE self-contained HTML file: pictures embedded as base64 PNG, no server, no
framework; a dozen lines of plain JavaScript sort the tables, a CSS ``:target`` box enlarges a
thumbnail. It opens from a USB stick in any browser.

Sections: a header (title, counts), failed cases with their errors, the case table (thumbnail,
case, patient/eye/date when known, per class area mm^2, square-root area mm, lesions, focality,
Dice and HD95 when a reference was given, status), growth per eye (charts and rates), and the
enlarged overlays (hidden until a thumbnail is clicked).

:func:`pictures_after_prediction` (and :class:`PredictionPictures` for ``--best``) are what
``fpn_predict --overlays/--report`` draws after a prediction: the overlay folder and this report.
"""
from __future__ import annotations

import base64
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from fpnunet.atomic import write_atomic
from fpnunet.errors import FPNError
from fpnunet.raw_dataset import DATASET_FILE
from fpnunet.report.build import Report, collect_report
from fpnunet.report.cases import OVERLAY_DIR, CaseResult, write_prediction_overlays
from fpnunet.report.growth import GROWTH_COLUMNS
from fpnunet.report.overlay import class_colours

__all__ = ["render_html", "write_report", "growth_csv_path", "make_report", "pictures_after_prediction",
           "PredictionPictures"]

_CSS = """
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0;cursor:pointer;white-space:nowrap}td.t{text-align:left}
tr.failed td{background:#fde8e8}td.err{color:#a00;text-align:left}
tr.check td{background:#fff3cd}td.qc-check{color:#8a5a00;font-weight:bold;text-align:left}
img.thumb{height:72px;display:block}
.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:middle;margin-right:3px}
.lightbox{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);text-align:center;padding-top:2vh}
.lightbox:target{display:block}.lightbox img{height:84vh;max-width:96vw;object-fit:contain}
.lightbox p{color:#fff}.lightbox a{color:#fff}
.chart{margin:.6em 0}.muted{color:#666}
"""

_JS = """
document.querySelectorAll('table.sortable th').forEach((th, i) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], up = th.dataset.dir !== 'up';
  th.dataset.dir = up ? 'up' : 'down';
  const key = r => { const c = r.cells[i], v = c.dataset.v ?? c.textContent, n = parseFloat(v);
                     return v === '' ? null : (isNaN(n) ? v : n); };
  const rows = [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    const r = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
    return up ? r : -r; });
  rows.forEach(r => body.appendChild(r));
}));
"""


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _num(value: float | int | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td data-v="">\u2013</td>'
    return f'<td data-v="{value!r}">{value:.{digits}f}</td>' if isinstance(value, float) else \
        f'<td data-v="{value}">{value}</td>'


def _text(value: str | None) -> str:
    return f'<td class="t">{escape(value)}</td>' if value else '<td class="t" data-v="">\u2013</td>'


def _swatch(rgb: tuple[int, int, int]) -> str:
    return f'<span class="swatch" style="background:rgb{tuple(rgb)}"></span>'


def _qc_cell(i: int, r: CaseResult) -> str:
    if r.qc == "check":
        text = f'<a href="#unc{i}">check</a>' if r.uncertainty_picture else "check"
        return f'<td class="qc-check" data-v="check">{text}</td>'
    return _text(r.qc)


def _case_rows(report: Report, show_visits: dict[str, bool]) -> tuple[str, str]:
    qc = any(r.qc for r in report.cases)
    made_by = any(r.configuration for r in report.cases)
    head = ["picture", "case"] + [k for k in ("patient", "eye", "date") if show_visits[k]]
    head += ["configuration"] if made_by else []
    for cls in report.classes:
        head += [f"{cls} area mm\u00b2", f"{cls} \u221aarea mm", f"{cls} lesions", f"{cls} focality"]
        if qc:
            head.append(f"{cls} area interval mm\u00b2")
        if report.with_reference:
            head += [f"{cls} Dice", f"{cls} HD95 mm"]
    if qc:
        head += ["QC", "QC score"]
    head.append("status")
    rows = []
    for i, r in enumerate(report.cases):
        cells = []
        if r.thumbnail:
            cells.append(f'<td><a href="#ov{i}"><img class="thumb" alt="{escape(r.case)}" '
                         f'title="{escape(r.background)}" src="{_png(r.thumbnail)}"></a></td>')
        else:
            cells.append('<td data-v=""></td>')
        cells.append(_text(r.case))
        v = r.visit
        if show_visits["patient"]:
            cells.append(_text(v.patient if v else None))
        if show_visits["eye"]:
            cells.append(_text(v.eye if v else None))
        if show_visits["date"]:
            cells.append(_text(v.date.isoformat() if v and v.date else None))
        if made_by:
            cells.append(_text(r.configuration))
        for cls in report.classes:
            s = r.stats.get(cls)
            cells += [_num(s.area_mm2 if s else None, 2), _num(s.sqrt_area_mm if s else None, 3),
                      _num(s.lesions if s else None, 0), _text(s.focality if s else None)]
            if qc:
                lo_hi = r.area_interval.get(cls)
                cells.append(_text(f"{lo_hi[0]:.2f}\u2013{lo_hi[1]:.2f}" if lo_hi else None))
            if report.with_reference:
                cells += [_num(r.dice.get(cls), 3), _num(r.hd95.get(cls), 2)]
        if qc:
            cells += [_qc_cell(i, r), _num(r.qc_score, 4)]
        cells.append(f'<td class="err">failed: {escape(r.error or "")}</td>' if r.failed else '<td class="t">ok</td>')
        kind = "failed" if r.failed else "check" if r.qc == "check" else "ok"
        rows.append(f'<tr class="{kind}">' + "".join(cells) + "</tr>")
    thead = "".join(f"<th>{escape(h)}</th>" for h in head)
    return thead, "\n".join(rows)


def _lightboxes(cases: list[CaseResult]) -> str:
    out = []
    for i, r in enumerate(cases):
        if r.overlay:
            out.append(f'<div class="lightbox" id="ov{i}"><a href="#cases" title="close">'
                       f'<img alt="overlay of {escape(r.case)}" src="{_png(r.overlay)}"></a>'
                       f'<p>{escape(r.case)} \u2014 <a href="#cases">close</a></p></div>')
        if r.uncertainty_picture:
            out.append(f'<div class="lightbox" id="unc{i}"><a href="#cases" title="close">'
                       f'<img alt="uncertainty of {escape(r.case)}" src="{_png(r.uncertainty_picture)}"></a>'
                       f'<p>{escape(r.case)}: where the members disagree (magenta: half of them call a lesion) '
                       '\u2014 <a href="#cases">close</a></p></div>')
    return "\n".join(out)


def _growth(report: Report) -> str:
    if not report.series:
        return ""
    parts = ["<h2 id=\"growth\">Growth per eye</h2>",
             '<p class="muted">Least-squares line through each eye\'s lesion area over the visit dates; '
             "\u00b1 is the slope's standard error (needs three visits or more).</p>",
             '<table class="sortable"><thead><tr>' + "".join(
                 f"<th>{h}</th>" for h in ("patient", "eye", "class", "visits", "first", "last", "years",
                                           "baseline mm\u00b2", "mm\u00b2/year", "\u00b1 SE",
                                           "\u221aarea mm/year", "\u00b1 SE")) + "</tr></thead><tbody>"]
    for g in report.growth:
        parts.append("<tr>" + _text(g.patient) + _text(g.eye) + _text(g.cls) + _num(g.visits, 0)
                     + _text(g.first_visit) + _text(g.last_visit) + _num(g.years, 2) + _num(g.baseline_area_mm2, 2)
                     + _num(g.area_rate_mm2_per_year, 3) + _num(g.area_rate_se, 3)
                     + _num(g.sqrt_area_rate_mm_per_year, 3) + _num(g.sqrt_area_rate_se, 3) + "</tr>")
    parts.append("</tbody></table>")
    for s in report.series:
        parts.append(f'<div class="chart"><img alt="growth of {escape(s.key)}" src="{_png(report.charts[s.key])}">'
                     "</div>")
    return "\n".join(parts)


def render_html(report: Report, growth_csv_name: str | None = None) -> str:
    """The whole HTML document of ``report``."""
    ok = [r for r in report.cases if not r.failed]
    failed = [r for r in report.cases if r.failed]
    show = {k: any(getattr(r.visit, k, None) for r in report.cases) for k in ("patient", "eye", "date")}
    thead, rows = _case_rows(report, show)
    legend = " ".join(f"{_swatch(c)}{escape(n)}" for n, c in report.colours.items())
    if report.with_reference:
        legend += f" {_swatch((0, 255, 0))}reference outline"
    summary = [f"{len(report.cases)} case(s): {len(ok)} predicted, {len(failed)} failed"]
    if any(r.qc for r in ok):
        by = sorted({r.qc_by for r in ok if r.qc_by})
        how = f" by {escape(', '.join(by))}" if by else ""
        summary.append(f"{sum(r.qc == 'check' for r in ok)} flagged for a check{how} (listed first)")
    if report.with_reference:
        dices = [d for r in ok for d in r.dice.values() if not math.isnan(d)]
        if dices:
            summary.append(f"mean Dice {sum(dices) / len(dices):.3f}")
    if report.growth and growth_csv_name:
        summary.append(f"growth rates also in {escape(growth_csv_name)}")
    body = [f"<h1>{escape(report.title)}</h1>",
            f'<p>{"; ".join(summary)}. <span class="muted">Made {escape(report.generated)} by fpn_report.</span></p>',
            f"<p>Outlines: {legend}</p>"]
    body += [f'<p class="muted">{escape(n)}</p>' for n in report.notes]
    if failed:
        body.append('<h2 id="failed">Failed cases</h2><table><thead><tr><th>case</th><th>error</th></tr></thead><tbody>'
                    + "".join(f'<tr class="failed">{_text(r.case)}<td class="err">{escape(r.error or "")}</td></tr>'
                              for r in failed) + "</tbody></table>")
    body += ['<h2 id="cases">Cases</h2>',
             '<p class="muted">Click a column header to sort, a picture to enlarge it.</p>',
             f'<table class="sortable" id="case-table"><thead><tr>{thead}</tr></thead>'
             f'<tbody>\n{rows}\n</tbody></table>',
             _growth(report), _lightboxes(report.cases)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(report.title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + f"\n<script>{_JS}</script>\n</body></html>\n")


def growth_csv_path(html_path: str | os.PathLike) -> Path:
    """``report.html`` -> ``report_growth.csv`` beside it."""
    p = Path(html_path)
    return p.with_name(f"{p.stem}_growth.csv")


def write_report(report: Report, html_path: str | os.PathLike) -> tuple[Path, Path | None]:
    """Write the HTML file and, when growth was fitted, the growth-rate CSV beside it (both atomically)."""
    html_path = Path(html_path)
    csv_path = growth_csv_path(html_path) if report.growth else None
    if csv_path is not None:
        import pandas as pd

        df = pd.DataFrame([g.to_dict() for g in report.growth], columns=list(GROWTH_COLUMNS))
        write_atomic(csv_path, lambda tmp: df.to_csv(tmp, index=False), suffix=".csv")
    text = render_html(report, csv_path.name if csv_path else None)
    write_atomic(html_path, lambda tmp: tmp.write_text(text, encoding="utf-8"), suffix=".html")
    return html_path, csv_path


def make_report(
    pred_dir: str | os.PathLike,
    output: str | os.PathLike | None = None,
    ref_dir: str | os.PathLike | None = None,
    dataset_json: Mapping[str, Any] | None = None,
    dataset_source: str = DATASET_FILE,
    image_folders: list[str | os.PathLike | None] | None = None,
    visits_csv: str | os.PathLike | None = None,
    failures: Mapping[str, str] | None = None,
    projection_axis: int | str = "auto",
) -> tuple[Path, Path | None]:
    """Collect and write the report; returns ``(html file, growth CSV or None)``."""
    report = collect_report(pred_dir, ref_dir, dataset_json, dataset_source, image_folders or [], visits_csv,
                            failures, projection_axis=projection_axis)
    out = Path(output) if output is not None else Path(pred_dir) / "report.html"
    try:
        return write_report(report, out)
    except OSError as exc:
        raise FPNError(f"{out}: cannot write the report ({exc.strerror or exc})") from None


# ----------------------------------------------------------------------------- after fpn_predict
def pictures_after_prediction(
    out_dir: Path,
    pred_files: Mapping[str, Path],
    labels: Mapping[str, int],
    dataset_json: Mapping[str, Any] | None,
    in_dir: Path,
    failed: Mapping[str, str],
    overlays: bool,
    report: bool,
    projection_axis: int | str = "auto",
) -> None:
    """``fpn_predict --overlays/--report``: overlay PNGs and/or ``report.html`` of the cases just
    predicted; problems with a picture are warnings, never a failed prediction."""
    if overlays:
        written, problems = write_prediction_overlays(pred_files, labels, out_dir / OVERLAY_DIR, dataset_json,
                                                      [in_dir], projection_axis)
        for msg in problems:
            print(f"warning: {msg}", file=sys.stderr)
        print(f"fpn_predict: {len(written)} overlay(s) in {out_dir / OVERLAY_DIR}", file=sys.stderr)
    if report:
        html, csv = make_report(out_dir, out_dir / "report.html", None, dataset_json, DATASET_FILE, [in_dir],
                                failures=failed, projection_axis=projection_axis)
        print(f"fpn_predict: report {html}" + (f", growth rates {csv}" if csv else ""), file=sys.stderr)


@dataclass(frozen=True)
class PredictionPictures:
    """``fpn_predict --best --overlays/--report``: the colours checked before any member is predicted,
    the pictures of the combined masks drawn after (:func:`pictures_after_prediction`)."""

    overlays: bool
    report: bool

    def check(self, labels: Mapping[str, int], dataset_json: Mapping[str, Any] | None) -> None:
        class_colours(labels, dataset_json)

    def draw(self, out_dir: Path, masks: Mapping[str, Path], labels: Mapping[str, int],
             dataset_json: Mapping[str, Any] | None, in_dir: Path, failed: Mapping[str, str],
             projection_axis: int | str) -> None:
        pictures_after_prediction(out_dir, masks, labels, dataset_json, in_dir, failed, self.overlays, self.report,
                                  projection_axis)
