"""The problems verification finds in a raw dataset, one line each (:mod:`fpnunet.plans.verify`)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fpnunet.errors import DatasetError


@dataclass
class Report:
    """The problems found in the raw dataset ``raw``, one line each (paths relative to ``raw``)."""

    raw: Path
    problems: list[str] = field(default_factory=list)

    def rel(self, path: str | os.PathLike) -> str:
        try:
            return str(Path(path).relative_to(self.raw))
        except ValueError:
            return str(path)

    def add(self, msg: str) -> None:
        self.problems.append(msg.replace(str(self.raw) + os.sep, ""))

    def raise_if_any(self) -> None:
        """Raise the :class:`DatasetError` listing every problem, if there is any."""
        if self.problems:
            raise DatasetError(self.problems, header=f"{self.raw} failed verification")
