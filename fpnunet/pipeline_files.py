"""The owner of the chosen pipeline (``fpn_find_best_configuration`` writes it, ``fpn_predict --best``
reads it), in the dataset's results folder::

    $FPN_RESULTS/DatasetXXX/
      chosen_pipeline.json   for the tools: the members (model folders, folds, checkpoint), TTA, the
                             post-processing, every candidate's and ensemble's score, the predict command
      chosen_pipeline.txt    the same for people: the table and the command
      chosen_pipeline.png    the scores as a picture (bars and per-fold dots)

Plain JSON, nothing executable. :func:`read_chosen` checks what prediction relies on and names the
file in a one-line error otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fpnunet.atomic import read_json_object, save_json, write_atomic
from fpnunet.errors import FPNError

CHOSEN_FILE = "chosen_pipeline.json"
CHOSEN_TEXT = "chosen_pipeline.txt"
CHOSEN_PLOT = "chosen_pipeline.png"
CHOSEN_VERSION = 1
POSTPROCESSING_KEYS = ("threshold", "min_area_mm2", "fill_holes", "keep_largest")


def chosen_file(results_dataset_dir: str | Path) -> Path:
    return Path(results_dataset_dir) / CHOSEN_FILE


def chosen_text_file(results_dataset_dir: str | Path) -> Path:
    return Path(results_dataset_dir) / CHOSEN_TEXT


def chosen_plot_file(results_dataset_dir: str | Path) -> Path:
    return Path(results_dataset_dir) / CHOSEN_PLOT


def write_chosen(results_dataset_dir: str | Path, choice: dict[str, Any], text: str,
                 plot: bytes | None = None) -> tuple[Path, Path]:
    """The files, atomically (JSON last: its presence means the choice is complete); the PNG when
    ``plot`` is given."""
    check_chosen(choice, CHOSEN_FILE)
    txt = chosen_text_file(results_dataset_dir)
    write_atomic(txt, lambda tmp: Path(tmp).write_text(text if text.endswith("\n") else text + "\n"), suffix=".txt")
    if plot is not None:
        write_atomic(chosen_plot_file(results_dataset_dir), lambda tmp: Path(tmp).write_bytes(plot), suffix=".png")
    path = chosen_file(results_dataset_dir)
    save_json({"version": CHOSEN_VERSION, **choice}, path)
    return path, txt


def read_chosen(results_dataset_dir: str | Path) -> dict[str, Any]:
    path = chosen_file(results_dataset_dir)
    choice = read_json_object(path, "no chosen pipeline; run fpn_find_best_configuration first")
    check_chosen(choice, path)
    return choice


def check_chosen(choice: Any, where: str | Path) -> None:
    """The fields prediction relies on: members (model folder, folds), tta, checkpoint, post-processing."""
    if not isinstance(choice, dict):
        raise FPNError(f"{where}: not a chosen pipeline (expected a JSON object)")
    members = choice.get("members")
    if not isinstance(members, list) or not members:
        raise FPNError(f"{where}: 'members' must list at least one model folder")
    for m in members:
        if not (isinstance(m, dict) and isinstance(m.get("model_folder"), str) and isinstance(m.get("folds"), list)
                and m["folds"] and isinstance(m.get("candidate"), str)):
            raise FPNError(f"{where}: every member needs 'candidate', 'model_folder' and a non-empty 'folds' list")
        if "/" in m["model_folder"] or m["model_folder"].startswith("."):
            raise FPNError(f"{where}: member model_folder {m['model_folder']!r} must be a folder name in the "
                           "dataset's results folder")
    post = choice.get("postprocessing")
    if not isinstance(post, dict) or set(post) != set(POSTPROCESSING_KEYS):
        raise FPNError(f"{where}: 'postprocessing' must hold exactly {', '.join(POSTPROCESSING_KEYS)}")
    if not 0 < float(post["threshold"]) < 1 or float(post["min_area_mm2"]) < 0:
        raise FPNError(f"{where}: postprocessing threshold must be in (0, 1) and min_area_mm2 >= 0")
    if choice.get("checkpoint", "final") not in ("final", "best", "latest"):
        raise FPNError(f"{where}: checkpoint must be final, best or latest")
