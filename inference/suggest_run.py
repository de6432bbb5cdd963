"""The candidates of ``fpn_suggest_labels`` read, predicted and ranked (:mod:`.suggest`).

A candidate volume comes preprocessed, either from the dataset's preprocessed folder (its cases
without a label) or read from a folder of raw volumes like ``fpn_predict`` reads them
(:func:`.inputs.load_case`); a volume that cannot be read is reported and left out.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fpnunet.calibration_file import read_calibration
from fpnunet.errors import FPNError
from fpnunet.paths import preprocessed_dir
from fpnunet.preprocessed_dataset import PreprocessedDataset

from .ensemble_scores import case_uncertainty, vote_map
from .export import probabilities_to_segmentation
from .inputs import collect_inputs, load_case
from .predictor import Predictor
from .suggest import Candidate, descriptor, rank_candidates

__all__ = ["Picture", "candidate_volumes", "labelled_features", "score_volumes"]


@dataclass
class Picture:
    """What a candidate's picture needs: projection, spacing, members' votes, predicted label map."""

    projection: np.ndarray
    spacing: tuple[float, float]
    votes: np.ndarray
    mask: np.ndarray


Volume = tuple[str, np.ndarray, tuple[float, float]]


def _preprocessed(predictor: Predictor, dataset: str) -> PreprocessedDataset | None:
    folder = preprocessed_dir(dataset) / predictor.config.data_identifier
    if not folder.is_dir():
        return None
    return PreprocessedDataset.open(folder, hint=f"run fpn_plan_and_preprocess -d {dataset}")


def candidate_volumes(predictor: Predictor, dataset: str, folder: str | os.PathLike | None
                      ) -> tuple[Iterator[Volume], list[str], str]:
    """``(case, preprocessed volume, en-face spacing)`` of every candidate (lazily), their names, and a
    line saying where they come from."""
    if predictor.enface_inputs:
        raise FPNError("fpn_suggest_labels does not yet handle models with en-face input channels")
    if folder is not None:
        items, errors, _ = collect_inputs(Path(folder))
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        if not items:
            raise FPNError(f"{folder}: no input volumes (CASE_0000<ending>)")

        def from_folder() -> Iterator[Volume]:
            for item in items:
                loaded = load_case(item, predictor, Path(folder))
                if loaded.error is not None:
                    print(f"error: {loaded.error}", file=sys.stderr)
                    continue
                yield loaded.case, loaded.volume, tuple(loaded.geometry.spacing)

        return from_folder(), [item.case for item in items], f"{len(items)} volume(s) of {folder}"
    data = _preprocessed(predictor, dataset)
    if data is None:
        raise FPNError(f"{preprocessed_dir(dataset)}: dataset {dataset} is not preprocessed for "
                       f"{predictor.config.data_identifier} (run fpn_plan_and_preprocess, or give -i FOLDER)")
    cases = [c for c in data.case_names if not data.cases[c]["labelled"]]
    if not cases:
        raise FPNError(f"{data.folder}: every case of dataset {dataset} is labelled; nothing to suggest "
                       "(add unlabelled volumes to imagesTr and rerun fpn_plan_and_preprocess, or give -i FOLDER)")

    def from_dataset() -> Iterator[Volume]:
        for case in cases:
            yield case, data.load_volume(case), tuple(data.geometry(case).spacing)

    return from_dataset(), cases, f"{len(cases)} unlabelled case(s) of dataset {dataset}"


def labelled_features(predictor: Predictor, dataset: str, candidates: Collection[str] = ()) -> np.ndarray:
    """Descriptors ``(N, d)`` of the dataset's labelled cases that are not ``candidates`` (their reference
    label stands for the prediction); empty when the dataset is not preprocessed."""
    data = _preprocessed(predictor, dataset)
    if data is None:
        return np.zeros((0, 0), np.float32)
    feats = []
    for case in sorted(set(data.labelled) - set(candidates)):
        label = (data.load_label(case) != 0).astype(np.float32)[None]
        feats.append(descriptor(data.load_volume(case, mmap=True), label))
    return np.stack(feats) if feats else np.zeros((0, 0), np.float32)


def score_volumes(predictor: Predictor, model_dir: str | os.PathLike, volumes: Iterator[Volume],
                  reference: np.ndarray, diversity: float, pictures: int) -> tuple[list[Candidate], dict[str, Picture]]:
    """Predict and score every volume, rank them; the picture data of the first ``pictures``."""
    calibration = read_calibration(model_dir)
    labels = predictor.dataset_info.labels if predictor.dataset_info else predictor.plan.labels
    names = [n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0]
    candidates, data = [], {}
    for case, volume, spacing in volumes:
        members = predictor.predict_preprocessed(volume, members=True)
        probs = members.mean((0, 1))
        unc = case_uncertainty(members, spacing, names, calibration)
        mask = probabilities_to_segmentation(probs, labels=labels)
        area = float(np.count_nonzero(mask)) * spacing[0] * spacing[1]
        candidates.append(Candidate(case, unc, descriptor(volume, probs), area))
        data[case] = Picture(np.asarray(volume[0], np.float32).mean(axis=1), spacing, vote_map(members), mask)
    if not candidates:
        raise FPNError("no candidate volume could be read")
    ranked = rank_candidates(candidates, reference if reference.size else None, diversity)
    keep = {c.case for c in ranked[:pictures]}
    return ranked, {c: p for c, p in data.items() if c in keep}
