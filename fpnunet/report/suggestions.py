"""``suggestions.html`` of ``fpn_suggest_labels``: the ranked volumes as one self-contained page,
each top one with a picture (en-face projection, predicted outline, members' disagreement in
magenta: :func:`fpnunet.report.uncertainty.render_uncertainty`)."""
from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape
from typing import Any

__all__ = ["render_suggestions"]

_CSS = """body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td.t{text-align:left}img{height:96px;display:block}.muted{color:#666}"""


def render_suggestions(rows: list[dict[str, Any]], pictures: Mapping[str, bytes], title: str, note: str) -> str:
    """The HTML page: ``rows`` (``suggestions.csv``'s, in order) with ``pictures`` by case."""
    head = ("rank", "picture", "case", "priority", "QC score", "distance", "area mm\u00b2", "area interval mm\u00b2")
    body = []
    for r in rows:
        pic = pictures.get(r["case"])
        img = f'<img alt="{escape(r["case"])}" src="data:image/png;base64,{base64.b64encode(pic).decode()}">' \
            if pic else ""
        dist = "\u2013" if r["distance"] is None else f"{r['distance']:.3f}"
        body.append(f"<tr><td>{r['rank']}</td><td>{img}</td><td class=\"t\">{escape(r['case'])}</td>"
                    f"<td>{r['priority']:.3f}</td><td>{r['qc_score']:.4f}</td><td>{dist}</td>"
                    f"<td>{r['area_mm2']:.2f}</td><td>{r['area_low_mm2']:.2f}\u2013{r['area_high_mm2']:.2f}</td></tr>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n<h1>{escape(title)}</h1>\n"
            f"<p class=\"muted\">{escape(note)}</p>\n<table><thead><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>\n" + "\n".join(body)
            + "\n</tbody></table>\n</body></html>\n")
