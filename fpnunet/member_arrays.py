"""The owner of the ensemble members kept per case, in two places::

    OUT/.members/<candidate>/
      members/CASE_members.npz   key ``members``: the configuration's members (folds, flips, K, B, A), float16
    MODEL/crossval_results/
      members/CASE_members.npz   the case's out-of-fold members (1, flips, K, B, A), float16

``fpn_evaluate --crossval --calibrate`` keeps the out-of-fold members next to the per-case
uncertainty table, so a candidate score is rated on them without predicting again
(``benchmarks/uncertainty.py --report-only``); the probabilities are the uncalibrated ones
(``calibration.json``'s temperature applies on top).

``fpn_predict --best`` predicts each configuration of the chosen pipeline into its own scratch
folder; with the uncertainty on, each also keeps its members here, and the combination stacks them
(configurations x folds as rows, flips as columns) for the per-case scores, the area interval and
the QC flag (:func:`fpnunet.inference.qc.ensemble_calibration`). The scratch folders are removed
when the combination is written. float16 halves the scratch space; the scores threshold the
members at 0.5 and average their probabilities, for which float16's 1e-3 steps are enough.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fpnunet.atomic import write_atomic
from fpnunet.errors import FPNError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MEMBERS_DIR", "MemberArrays"]

MEMBERS_DIR = "members"


@dataclass(frozen=True)
class MemberArrays:
    """The members of the cases of one prediction folder."""

    folder: Path

    def file(self, case: str) -> Path:
        return Path(self.folder) / MEMBERS_DIR / f"{case}_members.npz"

    def write(self, case: str, members: np.ndarray) -> Path:
        """Write ``members`` ``(F, T, K, B, A)`` atomically."""
        import numpy as np  # lazy: start-up time

        if members.ndim != 5:
            raise FPNError(f"{case}: members must be (folds, flips, K, B, A), got shape {members.shape}")
        path = self.file(case)
        path.parent.mkdir(parents=True, exist_ok=True)

        def _w(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, members=np.asarray(members, dtype=np.float16))

        write_atomic(path, _w, suffix=".npz")
        return path

    def read(self, case: str) -> np.ndarray:
        """The members ``(F, T, K, B, A)`` float32; a missing or broken file is one line naming it."""
        import numpy as np  # lazy: start-up time

        path = self.file(case)
        try:
            with np.load(path, allow_pickle=False) as z:
                members = z["members"].astype(np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise FPNError(f"{path}: unreadable ensemble members ({exc})") from None
        if members.ndim != 5:
            raise FPNError(f"{path}: members must be (folds, flips, K, B, A), got shape {members.shape}")
        return members
