"""Lesion growth per eye: the slope of area (mm^2/year) and square-root area (mm/year) over visits.

GA trials measure growth as the slope of an ordinary least-squares line through an eye's lesion
areas against the visit dates; the square-root area grows more nearly linearly and is less
dependent on the baseline size. :func:`fit_rate` gives the slope and its standard error
(``sqrt(residual variance / sum((t - mean t)^2))`` with ``n - 2`` degrees of freedom: NaN with two
visits, where a line always fits exactly). Time is in years of 365.25 days from the first visit.
"""
from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Rate", "fit_rate", "EyeSeries", "GrowthRow", "growth_rows", "draw_series", "GROWTH_COLUMNS"]

DAYS_PER_YEAR = 365.25
GROWTH_COLUMNS = ("patient", "eye", "class", "visits", "first_visit", "last_visit", "years",
                  "baseline_area_mm2", "area_rate_mm2_per_year", "area_rate_se",
                  "sqrt_area_rate_mm_per_year", "sqrt_area_rate_se")


@dataclass(frozen=True)
class Rate:
    """Slope (per year) of a least-squares line, its standard error and intercept at ``t = 0``."""

    slope: float
    se: float
    intercept: float


def years_since(dates: Sequence[dt.date], start: dt.date | None = None) -> np.ndarray:
    start = start or min(dates)
    return np.asarray([(d - start).days / DAYS_PER_YEAR for d in dates], dtype=float)


def fit_rate(years: Sequence[float], values: Sequence[float]) -> Rate:
    """Ordinary least squares ``values ~ intercept + slope * years``.

    At least two distinct times are needed (else slope NaN); the standard error needs three.
    """
    t = np.asarray(years, dtype=float)
    y = np.asarray(values, dtype=float)
    if t.shape != y.shape or t.size < 2 or np.ptp(t) == 0:
        return Rate(math.nan, math.nan, math.nan)
    tm, ym = t.mean(), y.mean()
    sxx = float(((t - tm) ** 2).sum())
    slope = float(((t - tm) * (y - ym)).sum() / sxx)
    intercept = float(ym - slope * tm)
    if t.size < 3:
        return Rate(slope, math.nan, intercept)
    resid = y - (intercept + slope * t)
    se = math.sqrt(float((resid ** 2).sum()) / (t.size - 2) / sxx)
    return Rate(slope, se, intercept)


@dataclass
class EyeSeries:
    """One eye's visits of one class: dates, cases and areas (sorted by date)."""

    patient: str
    eye: str
    cls: str
    dates: list[dt.date]
    cases: list[str]
    areas: list[float]

    @property
    def key(self) -> str:
        return f"{self.patient} {self.eye} {self.cls}"

    def area_rate(self) -> Rate:
        return fit_rate(years_since(self.dates), self.areas)

    def sqrt_rate(self) -> Rate:
        return fit_rate(years_since(self.dates), [math.sqrt(a) for a in self.areas])


@dataclass(frozen=True)
class GrowthRow:
    """One line of the growth-rate CSV (columns :data:`GROWTH_COLUMNS`)."""

    patient: str
    eye: str
    cls: str
    visits: int
    first_visit: str
    last_visit: str
    years: float
    baseline_area_mm2: float
    area_rate_mm2_per_year: float
    area_rate_se: float
    sqrt_area_rate_mm_per_year: float
    sqrt_area_rate_se: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class"] = d.pop("cls")
        return {k: d[k] for k in GROWTH_COLUMNS}


def build_series(points: Sequence[tuple[str, str, str, dt.date, str, float]]) -> list[EyeSeries]:
    """Group ``(patient, eye, class, date, case, area)`` points into per-eye series sorted by date."""
    groups: dict[tuple[str, str, str], list[tuple[dt.date, str, float]]] = {}
    for patient, eye, cls, date, case, area in points:
        groups.setdefault((patient, eye, cls), []).append((date, case, area))
    out = []
    for (patient, eye, cls), pts in sorted(groups.items()):
        pts.sort()
        out.append(EyeSeries(patient, eye, cls, [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]))
    return out


def growth_rows(series: Sequence[EyeSeries]) -> list[GrowthRow]:
    """One :class:`GrowthRow` per series with at least two distinct visit dates."""
    rows = []
    for s in series:
        if len(set(s.dates)) < 2:
            continue
        a, r = s.area_rate(), s.sqrt_rate()
        rows.append(GrowthRow(s.patient, s.eye, s.cls, len(s.dates), s.dates[0].isoformat(), s.dates[-1].isoformat(),
                              float(years_since(s.dates)[-1]), s.areas[0], a.slope, a.se, r.slope, r.se))
    return rows


def _fmt_rate(rate: Rate, unit: str) -> str:
    se = "" if math.isnan(rate.se) else f" \u00b1 {rate.se:.3f}"
    return f"{rate.slope:.3f}{se} {unit}/year"


def draw_series(s: EyeSeries, colour: str = "tab:red", dpi: int = 90) -> bytes:
    """PNG of an eye's area and square-root area against time with the fitted lines and rates."""
    from matplotlib.figure import Figure

    t = years_since(s.dates)
    fig = Figure(figsize=(7.2, 2.8), dpi=dpi)
    axes = fig.subplots(1, 2)
    for ax, values, rate, label, unit in (
        (axes[0], np.asarray(s.areas), s.area_rate(), "area (mm\u00b2)", "mm\u00b2"),
        (axes[1], np.sqrt(s.areas), s.sqrt_rate(), "\u221aarea (mm)", "mm"),
    ):
        ax.plot(t, values, "o", color=colour)
        if not math.isnan(rate.slope):
            tt = np.array([t.min(), t.max()])
            ax.plot(tt, rate.intercept + rate.slope * tt, "-", color="0.3", lw=1)
        ax.set_title(_fmt_rate(rate, unit), fontsize=9)
        ax.set_xlabel(f"years since {s.dates[0].isoformat()}")
        ax.set_ylabel(label)
        top = float(np.nanmax(values)) if len(values) else 1.0
        ax.set_ylim(0, max(top * 1.15, 1e-3))  # from zero: small changes are not stretched over the axis
        ax.grid(alpha=0.3)
    fig.suptitle(f"patient {s.patient}, eye {s.eye}, {s.cls}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
