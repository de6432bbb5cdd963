"""``fpn_predict -d ID --best``: predict with exactly the pipeline ``fpn_find_best_configuration`` chose.

Every member of ``chosen_pipeline.json`` (a model folder with its folds, checkpoint and TTA) is
predicted by ``fpn_predict``'s own loop into ``OUT/.members/<candidate>/`` with probabilities;
the members' probabilities are averaged per case, the chosen post-processing
(:mod:`fpnunet.inference.postprocess`: threshold, fill holes, minimum lesion area, keep largest)
makes the label map, written on the member's en-face grid, and ``lesion_areas.csv`` gains the
column ``configuration`` naming the candidate(s) that made each mask, and (unless
``--no-uncertainty``) the uncertainty columns, computed over every member of the ensemble:
configurations x folds x flips (:class:`EnsembleQC`). The member folders are removed at the end.
With ``--overlays``/``--report`` the pictures and ``report.html`` are drawn from the combined masks
(the report's case table has the ``configuration`` column); fpn_predict hands in the report layer's
:class:`Pictures` (checked before any member runs, drawn after).
"""
from __future__ import annotations

import csv
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fpnunet.calibration_file import read_calibration
from fpnunet.choice_caveats import caveats
from fpnunet.errors import FPNError
from fpnunet.inference.ensemble_scores import mean_pairwise_dice, member_masks, vote_map
from fpnunet.inference.export import LESION_COLUMNS, lesion_rows, write_probabilities
from fpnunet.inference.inputs import model_dataset_json
from fpnunet.inference.postprocess import PostProcessing
from fpnunet.inference.qc import PredictionQC, ensemble_calibration
from fpnunet.io import read_image, write_image
from fpnunet.member_arrays import MemberArrays
from fpnunet.paths import raw_dir, results_dir
from fpnunet.pipeline_files import read_chosen
from fpnunet.plans.plan import Plan
from fpnunet.prediction_folder import CONFIGURATION_COLUMN, PredictionFolder
from fpnunet.preprocessed_dataset import PLANS_FILE
from fpnunet.raw_dataset import DatasetInfo, has_dataset_json, load_dataset_json

MEMBERS_DIR = ".members"
COLUMNS = (*LESION_COLUMNS, CONFIGURATION_COLUMN)
FIXED_BY_CHOICE = ("-m", "--model-dir", "--model", "-c", "--config", "--network", "-f", "--folds", "-chk",
                   "--checkpoint", "--disable-tta", "--threshold", "--devices", "--num-parts", "--part-id")
"""fpn_predict flags the choice decides (or that --best does not take yet)."""


class Pictures(Protocol):
    """``--overlays``/``--report`` of the combined masks (fpnunet.report.html.PredictionPictures)."""

    def check(self, labels: dict[str, int], dataset_json: dict[str, Any]) -> None: ...

    def draw(self, out_dir: Path, masks: dict[str, Path], labels: dict[str, int], dataset_json: dict[str, Any],
             in_dir: Path, failed: dict[str, str], projection_axis: int | str) -> None: ...


def check_best_flags(dataset: str | None, argv: list[str]) -> None:
    """One-line error for ``--best`` without ``-d`` or with a flag the choice decides (``None``: no
    model folder, the choice names them)."""
    if dataset is None:
        raise FPNError("--best needs -d DATASET (the choice is in the dataset's results folder)")
    taken = [a for a in argv if a.split("=")[0] in FIXED_BY_CHOICE]
    if taken:
        raise FPNError(f"{taken[0]}: not with --best (chosen_pipeline.json decides the models, folds, TTA, threshold "
                       "and post-processing; --devices/--num-parts are not supported with --best)")
    read_chosen(results_dir(dataset))  # present and valid before any folder is written


def _model_facts(model_dir: Path, dataset: str) -> tuple[dict[str, int], dict[str, Any], int]:
    """The labels, the dataset.json the pictures read (+ the raw dataset's visits) and the projection axis."""
    plan = Plan.load(model_dir / PLANS_FILE)
    info: DatasetInfo | None = load_dataset_json(model_dir) if has_dataset_json(model_dir) else None
    try:
        raw: Path | None = raw_dir(dataset)
    except FPNError:
        raw = None  # another site's installed pipeline: no raw dataset
    return dict(info.labels if info else plan.labels), model_dataset_json(info, raw), plan.projection_axis


def predict_chosen(config: Any, run_member: Callable[[Any], int], pictures: Pictures | None = None) -> int:
    """Predict ``config`` (fpn_predict's :class:`PredictConfig` with ``best``) with the chosen pipeline;
    ``pictures`` draws ``--overlays``/``--report`` of the combined masks."""
    root = results_dir(config.dataset)
    choice = read_chosen(root)
    post = PostProcessing.from_dict(choice["postprocessing"])
    members = choice["members"]
    model_dirs = [root / m["model_folder"] for m in members]
    for d in model_dirs:
        if not d.is_dir():
            raise FPNError(f"{d}: a model folder of the chosen pipeline is missing; rerun fpn_train_folds and "
                           "fpn_find_best_configuration")
    names = " + ".join(m["candidate"] for m in members)
    labels, dataset_json, projection_axis = _model_facts(model_dirs[0], config.dataset)
    pictures = pictures if config.overlays or config.report else None
    if pictures is not None:
        pictures.check(labels, dataset_json)  # a bad colour in dataset.json stops here, before any output
    out = Path(config.output)
    scratch = out / MEMBERS_DIR
    notes = "".join(f" ({c.short})" for c in caveats(choice))
    print(f"fpn_predict --best: {names}; {post.describe()}{notes}", file=sys.stderr)
    folders, status = [], 0
    for m, model_dir in zip(members, model_dirs):
        sub = replace(config, best=False, model_dir=model_dir, folds=[str(f) for f in m["folds"]],
                      checkpoint=choice.get("checkpoint", "final"), disable_tta=not choice.get("tta", True),
                      save_probabilities=True, output=scratch / m["candidate"], threshold=0.5, overlays=False,
                      report=False, devices=(), uncertainty=False, keep_members=config.uncertainty)
        status = max(status, run_member(sub))
        folders.append(PredictionFolder(scratch / m["candidate"]))
    qc = None
    if config.uncertainty:  # the members are configurations x folds x flips; each fold with its temperature
        qc = EnsembleQC.for_members(model_dirs, [len(m["folds"]) for m in members], labels, out, post.threshold)
        print(f"fpn_predict --best: {qc.qc.describe()}, over {qc.rows} member row(s) (configurations x folds)",
              file=sys.stderr)
    written, failed = combine(folders, PredictionFolder(out), post, labels, names, config.save_probabilities, qc)
    shutil.rmtree(scratch, ignore_errors=True)
    if pictures is not None:
        masks = {c: f for c, f in PredictionFolder(out).masks().items() if c not in failed}
        pictures.draw(out, masks, labels, dataset_json, Path(config.input), failed, projection_axis)
    print(f"fpn_predict --best: wrote {written} case(s) to {out}" + (f", {len(failed)} failed" if failed else ""),
          file=sys.stderr)
    return 1 if failed or status else 0


def _visit_fields(folder: PredictionFolder) -> dict[str, dict[str, Any]]:
    path = folder.areas_file()
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["case"]: {k: row.get(k) or None for k in ("patient", "eye", "visit")} for row in csv.DictReader(f)}


@dataclass
class EnsembleQC:
    """The scores of an ensemble of configurations: the fpn_predict QC with the combined flag
    (:func:`ensemble_calibration`) and each member row's temperature."""

    qc: PredictionQC
    temperatures: list[float]

    @classmethod
    def for_members(cls, model_dirs: list[Path], folds: list[int], labels: dict[str, int], out: Path,
                    threshold: float) -> EnsembleQC:
        calibrations = [read_calibration(d) for d in model_dirs]
        qc = PredictionQC.for_model(model_dirs[0], labels, out, threshold)
        qc.calibration = ensemble_calibration(calibrations, folds)
        return cls(qc, [c.temperature for c, n in zip(calibrations, folds) for _ in range(n)])

    @property
    def rows(self) -> int:
        return len(self.temperatures)

    def score(self, case: str, members: list[PredictionFolder], spacing: tuple[float, float]) -> None:
        """Stack the configurations' members (rows: configurations x folds) and score the case; it is
        also flagged when the configurations' own masks disagree (:data:`CONFIGURATION_DISAGREEMENT_MAX`)."""
        arrays = [MemberArrays(m.folder).read(case) for m in members]
        stacked = np.concatenate(arrays, axis=0)
        if stacked.shape[0] != self.rows:
            raise FPNError(f"{case}: {stacked.shape[0]} member row(s), expected {self.rows} (configurations x folds)")
        self.qc.reduce(case, stacked, spacing, self.temperatures)
        scores = self.qc.scores[case]
        split = len(arrays) > 1 and configuration_disagreement(arrays) > CONFIGURATION_DISAGREEMENT_MAX
        if split and scores.qc == "ok":
            self.qc.scores[case] = replace(scores, qc="check")
            if self.qc.folder is not None:
                self.qc.folder.write_vote_map(case, vote_map(stacked, self.qc.threshold))


CONFIGURATION_DISAGREEMENT_MAX = 0.5
"""An ensemble of configurations flags a case whose configurations' masks (each the mean of its folds
and flips) have a mean pairwise Dice below 0.5 for some class, whatever the calibrated score says:
the calibrated threshold is set on one fold's flips (out of fold), which cannot see two trained
configurations disagreeing about where the lesion is."""


def configuration_disagreement(arrays: list[np.ndarray], threshold: float = 0.5) -> float:
    """1 - mean pairwise Dice of the configurations' masks, the largest over the foreground channels."""
    means = np.stack([a.mean((0, 1)) for a in arrays])  # (C, K, B, A)
    k = means.shape[1]
    return max(1.0 - mean_pairwise_dice(member_masks(means, c, threshold)) for c in ([0] if k == 1 else range(1, k)))


def combine(members: list[PredictionFolder], out: PredictionFolder, post: PostProcessing, labels: dict[str, int],
            configuration: str, save_probabilities: bool, qc: EnsembleQC | None = None) -> tuple[int, dict[str, str]]:
    """Average the members' probabilities, post-process, write masks and the lesion table (with
    ``qc``: the uncertainty columns over configurations x folds x flips); returns
    ``(cases written, {case: error})``. The masks come from the uncalibrated average, on which the
    choice's threshold was set."""
    failed: dict[str, str] = {}
    for m in members:
        failed.update(m.read_failed())
    per_member = [m.probabilities() for m in members]
    cases = sorted(set.intersection(*(set(p) for p in per_member)) - set(failed)) if per_member else []
    for p in per_member:
        for case in set(p) - set(cases) - set(failed):
            failed[case] = "not predicted by every member of the chosen pipeline"
    masks = members[0].masks()
    visits = _visit_fields(members[0])
    rows: list[dict[str, Any]] = []
    for case in cases:
        probs = np.mean([m.read_probabilities(case) for m in members], axis=0)
        ref = read_image(masks[case])
        spacing = (float(ref.spacing[-2]), float(ref.spacing[-1]))
        seg = post.apply(probs, spacing, labels).reshape(ref.array.shape)
        name = masks[case].name
        write_image(out.folder / name, seg.astype(ref.array.dtype if ref.array.dtype.kind in "iu" else np.uint8),
                    ref.spacing, ref.origin, ref.direction)
        if save_probabilities:
            write_probabilities(probs, out.probabilities_file(case), labels=labels)
        if qc is not None:
            qc.score(case, members, spacing)
        for row in lesion_rows(case, seg.reshape(probs.shape[1:]), spacing, labels, visits.get(case)):
            rows.append(row | {CONFIGURATION_COLUMN: configuration})
    if rows:
        out.write_areas(*(qc.qc.table(rows, COLUMNS) if qc is not None else (rows, COLUMNS)))
    out.write_failed(failed)
    return len(cases), failed
