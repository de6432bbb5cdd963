"""The owner of ``fpn_suggest_labels -o OUT``::

    OUT/
      suggestions.csv    one row per candidate volume, in suggested order (columns SUGGESTION_COLUMNS)
      suggestions.html   the same list with a picture per volume (top ones), for a grader to work down
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fpnunet.atomic import write_atomic

__all__ = ["SUGGESTIONS_CSV", "SUGGESTIONS_HTML", "SUGGESTION_COLUMNS", "SuggestionFolder"]

SUGGESTIONS_CSV = "suggestions.csv"
SUGGESTIONS_HTML = "suggestions.html"
SUGGESTION_COLUMNS = ("rank", "case", "priority", "qc_score", "distance", "area_mm2", "area_low_mm2",
                      "area_high_mm2", "qc")


@dataclass(frozen=True)
class SuggestionFolder:
    folder: Path

    @property
    def table(self) -> Path:
        return Path(self.folder) / SUGGESTIONS_CSV

    @property
    def page(self) -> Path:
        return Path(self.folder) / SUGGESTIONS_HTML

    def write(self, rows: list[dict[str, Any]], html: str) -> tuple[Path, Path]:
        """Both files, atomically (the folder is created)."""
        import pandas as pd  # lazy: start-up time

        Path(self.folder).mkdir(parents=True, exist_ok=True)
        df = pd.DataFrame(rows, columns=list(SUGGESTION_COLUMNS))
        write_atomic(self.table, lambda tmp: df.to_csv(tmp, index=False), suffix=".csv")
        write_atomic(self.page, lambda tmp: tmp.write_text(html, encoding="utf-8"), suffix=".html")
        return self.table, self.page
