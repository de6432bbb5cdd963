"""Who and when each case is: patient, eye and visit date, from dataset.json or a CSV.

Sources, in this order (a later one fills what an earlier one left empty, never overrides):

* a CSV given by the user with the columns ``case, patient, eye, date`` (``--visits FILE``);
* ``dataset.json`` ``"visits"``: ``{"CASE": {"patient": "P001", "eye": "OD", "date": "2024-03-01"}}``
  (what ``fpn_import`` writes, patients pseudonymised);
* ``dataset.json`` ``"patients"``: ``{"CASE": "P001"}`` (patient only).

Only these fields are ever shown or written: nothing is read from image headers, so no patient
identifier reaches a report unless the dataset (or the user's CSV) carries it. Dates are ISO
``YYYY-MM-DD`` (a time part is ignored).
"""
from __future__ import annotations

import csv
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpnunet.errors import FPNError

__all__ = ["Visit", "visits_from_dataset", "read_visits_csv", "merge_visits", "parse_date"]

CSV_COLUMNS = ("case", "patient", "eye", "date")


@dataclass(frozen=True)
class Visit:
    """Patient (pseudonym), eye (``OD``/``OS`` or as given) and visit date of one case; any may be unknown."""

    patient: str | None = None
    eye: str | None = None
    date: dt.date | None = None

    @property
    def eye_key(self) -> tuple[str, str] | None:
        """``(patient, eye)`` when both are known: the series a growth rate is fitted to."""
        return (self.patient, self.eye) if self.patient and self.eye else None


def parse_date(value: Any, where: str) -> dt.date | None:
    """An ISO date (``2024-03-01``, a ``T...`` time part ignored); empty -> ``None``; else
    :class:`FPNError` naming ``where``."""
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    try:
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        raise FPNError(f"{where}: date {text!r} is not an ISO date (YYYY-MM-DD)") from None


def _text(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def _eye(value: Any) -> str | None:
    """The eye as written (``OD``/``OS``); ``unknown`` (what an importer writes without laterality) -> ``None``."""
    text = _text(value)
    return None if text is None or text.lower() == "unknown" else text


def visits_from_dataset(raw: Mapping[str, Any], source: str) -> dict[str, Visit]:
    """Visits of a parsed ``dataset.json`` (``raw``; ``source`` names the file in errors)."""
    out: dict[str, Visit] = {}
    visits = raw.get("visits", {}) or {}
    if not isinstance(visits, dict):
        raise FPNError(f"{source}: 'visits' must map a case to {{\"patient\", \"eye\", \"date\"}}")
    for case, v in visits.items():
        if not isinstance(v, dict):
            raise FPNError(f"{source}: visits[{case!r}] must be an object with patient, eye and date")
        out[str(case)] = Visit(_text(v.get("patient")), _eye(v.get("eye")),
                               parse_date(v.get("date"), f"{source}: visits[{case!r}]"))
    patients = raw.get("patients", {}) or {}
    if isinstance(patients, dict):
        for case, p in patients.items():
            known = out.get(str(case), Visit())
            if known.patient is None and _text(p):
                out[str(case)] = Visit(_text(p), known.eye, known.date)
    return out


def read_visits_csv(path: str | os.PathLike) -> dict[str, Visit]:
    """Visits from a CSV with the header ``case,patient,eye,date`` (extra columns ignored)."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise FPNError(f"{path}: visits CSV lacks the column(s) {', '.join(missing)} "
                               f"(expected the header {','.join(CSV_COLUMNS)})")
            out: dict[str, Visit] = {}
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip(): v for k, v in row.items()}
                case = _text(row.get("case"))
                if case is None:
                    raise FPNError(f"{path}: line {line}: empty case name")
                out[case] = Visit(_text(row.get("patient")), _eye(row.get("eye")),
                                  parse_date(row.get("date"), f"{path}: line {line}"))
            return out
    except OSError as exc:
        raise FPNError(f"{path}: cannot read the visits CSV ({exc.strerror or exc})") from None


def merge_visits(*sources: Mapping[str, Visit]) -> dict[str, Visit]:
    """Merge visit maps; the first source that knows a field wins."""
    out: dict[str, Visit] = {}
    for src in sources:
        for case, v in src.items():
            old = out.get(case, Visit())
            out[case] = Visit(old.patient or v.patient, old.eye or v.eye, old.date or v.date)
    return out
