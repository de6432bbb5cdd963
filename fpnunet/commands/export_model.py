"""``fpn_export_model -m MODEL_FOLDER -o model.zip --licence TEXT``: hand a trained model to another site.

::

    fpn_export_model -m MODEL_DIR -o model.zip --licence "CC-BY-4.0" [-f 0 1 ...] [-chk final|best]
                     [--intended-use TEXT] [--onnx] [--overwrite]
    fpn_export_model -d 900 --best -o pipeline.zip --licence "CC-BY-4.0"   # the chosen pipeline

One ``.zip`` (format: :mod:`fpnunet.model_package`): the plan, dataset.json without patients or
visits, every other JSON file of the model folder that names no case, each fold's weights as
safetensors with its network spec, the model card (``MODEL_CARD.md`` + ``model_card.json``:
:mod:`fpnunet.model_card`), ``--onnx`` the fold ensemble as ``model.onnx``, and a SHA-256 manifest
of every file. No member may hold a case name or patient id of the dataset (checked byte by byte);
the other site installs it with ``fpn_install_model``.

``-d ID --best``: the pipeline ``fpn_find_best_configuration`` chose, as one pipeline package
(:mod:`fpnunet.pipeline_package`): one model package per member (its folds and checkpoint as the
choice says) and ``chosen_pipeline.json``; installed, ``fpn_predict -d ID --best`` runs it there.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import fpnunet
from fpnunet import cli_args
from fpnunet.cli_utils import run_cli, run_command
from fpnunet.errors import FPNError
from fpnunet.model_card import DEFAULT_INTENDED_USE, CardFacts, build_card, card_markdown, summary_line
from fpnunet.model_package import (
    CARD_FILE,
    CARD_JSON,
    ONNX_FILE,
    export_folds,
    fold_members,
    model_files,
    shareable_dataset_json,
    write_package,
)
from fpnunet.paths import preprocessed_dir, raw_dir, results_dir
from fpnunet.pipeline_files import read_chosen
from fpnunet.preprocessed_dataset import PLANS_FILE
from fpnunet.raw_dataset import channel_of, images_dir, labels_dir, read_dataset_json
from fpnunet.results_layout import DATASET_FILE, PRETRAINED_FILE, VALIDATION_DIR, fold_folder_name

FINGERPRINT_FILE = "dataset_fingerprint.json"  # written by fpn_plan_and_preprocess beside plans.json
IMPORT_REPORT = "import_report.csv"  # fpn_import's table (fpnunet/importer/report.py): its 'format' column


@dataclass(frozen=True)
class ExportConfig:
    """The checked flags of ``fpn_export_model``."""

    model_dir: Path | None
    output: Path
    licence: str
    intended_use: str | None = None
    folds: tuple[str, ...] | None = None
    checkpoint: str = "final"
    onnx: bool = False
    overwrite: bool = False
    dataset: str | None = None
    best: bool = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fpn_export_model",
                                description="Package a trained model folder as one .zip for another site: plan, "
                                            "label map, safetensors weights, model card, SHA-256 manifest.")
    p.add_argument("-m", "--model-dir", help="the trained model folder (default: none, then -d DATASET --best)")
    cli_args.add_dataset(p, required=False, help="with --best: the dataset whose chosen pipeline to export "
                                                 "(default: none)")
    p.add_argument("--best", action="store_true", help="export the pipeline fpn_find_best_configuration chose: "
                                                       "every member model and chosen_pipeline.json")
    p.add_argument("-o", "--output", required=True, help="the .zip to write")
    p.add_argument("--licence", "--license", dest="licence", required=True,
                   help="the licence the model is shared under (goes into the model card)")
    p.add_argument("--intended-use", help="the card's intended use (default: research, masks reviewed by a grader)")
    cli_args.add_folds(p, help="folds to export (default: every numbered fold_* of the model folder)")
    p.add_argument("-chk", "--checkpoint", choices=("final", "best"), default="final",
                   help="checkpoint of each fold to export (default final; with --best the choice's)")
    p.add_argument("--onnx", action="store_true", help="also add model.onnx: the fold ensemble, preprocessed volume "
                                                       "-> en-face probabilities (docs/sharing.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def config_from_args(args: argparse.Namespace) -> ExportConfig:
    """Flags checked before anything is read or written."""
    out = Path(args.output)
    if args.best:
        if args.dataset is None or args.model_dir is not None:
            raise FPNError("--best needs -d DATASET and no -m (the choice names the model folders)")
        if args.folds or args.checkpoint != "final":
            raise FPNError("-f/-chk: not with --best (chosen_pipeline.json decides the folds and checkpoint)")
        if read_chosen(results_dir(args.dataset)).get("checkpoint", "final") not in ("final", "best"):
            raise FPNError(f"{results_dir(args.dataset)}: the chosen checkpoint is not final or best; "
                           "only those are exported")
        model_dir = None
    elif args.model_dir is None:
        raise FPNError("name the model: -m MODEL_DIR, or -d DATASET --best for the chosen pipeline")
    else:
        model_dir = Path(args.model_dir)
        if not model_dir.is_dir():
            raise FPNError(f"{model_dir}: model folder not found")
    if out.suffix != ".zip":
        raise FPNError(f"-o {out}: must end in .zip")
    if out.exists() and not args.overwrite:
        raise FPNError(f"{out}: exists; pass --overwrite to replace it")
    if not args.licence.strip():
        raise FPNError("--licence: must not be empty")
    return ExportConfig(model_dir, out, args.licence.strip(), args.intended_use, tuple(args.folds) if args.folds
                        else None, args.checkpoint, args.onnx, args.overwrite, args.dataset, args.best)


@run_cli
def main(argv: list[str] | None = None) -> int:
    return run_command(argv, build_parser, config_from_args, run)


def _read_json(path: Path) -> dict | None:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def identifiers(meta: dict, fingerprint: dict | None, model_dir: Path, raw: Path | None) -> set[str]:
    """Every case name and patient id this site knows for the dataset (none may leave in the zip)."""
    from fpnunet.io import strip_ending  # lazy: start-up time

    ids: set[str] = set((fingerprint or {}).get("cases") or {})
    ids |= set(meta.get("patients") or {}) | {str(v) for v in (meta.get("patients") or {}).values()}
    for case, visit in (meta.get("visits") or {}).items():
        ids.add(case)
        if isinstance(visit, dict) and visit.get("patient"):
            ids.add(str(visit["patient"]))
    folders = [p / VALIDATION_DIR for p in model_dir.glob("fold_*")]
    if raw is not None:
        folders += [f(raw, s) for f in (images_dir, labels_dir) for s in ("Tr", "Ts")]
    for folder in folders:
        if folder.is_dir():
            stems = [strip_ending(p.name) for p in folder.iterdir() if p.is_file()]
            ids |= {(channel_of(s) or (s, 0))[0] for s in stems}
    return {i for i in ids if i and i not in ("summary", "summary_per_case", "overlays")}


def _devices(raw: Path | None) -> list[str]:
    """The device formats of an imported raw dataset (its import report), else none known."""
    if raw is None or not (raw / IMPORT_REPORT).is_file():
        return []
    with open(raw / IMPORT_REPORT, newline="") as f:
        return sorted({row["format"] for row in csv.DictReader(f) if row.get("format")})


def _site(dataset_name: str) -> tuple[dict | None, Path | None]:
    """This site's fingerprint of the dataset and its raw folder, where they exist."""
    try:
        fingerprint = _read_json(preprocessed_dir(dataset_name) / FINGERPRINT_FILE)
    except FPNError:
        fingerprint = None
    try:
        raw: Path | None = raw_dir(dataset_name)
    except FPNError:
        raw = None
    return fingerprint, raw


def export_chosen(config: ExportConfig) -> int:
    """``-d ID --best``: one model package per member of the choice, packed with the choice."""
    from fpnunet.pipeline_files import chosen_text_file  # lazy: start-up time
    from fpnunet.pipeline_package import write_pipeline_package  # lazy: start-up time
    from fpnunet.plans.plan import Plan  # lazy: start-up time

    root = results_dir(str(config.dataset))
    choice = read_chosen(root)
    zips: dict[str, bytes] = {}
    ids: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="fpn_export_pipeline-") as tmp:
        for m in choice["members"]:
            model_dir = root / m["model_folder"]
            if not model_dir.is_dir():
                raise FPNError(f"{model_dir}: a model folder of the chosen pipeline is missing")
            sub = replace(config, model_dir=model_dir, output=Path(tmp) / f"{m['model_folder']}.zip", best=False,
                          folds=tuple(str(f) for f in m["folds"]), checkpoint=choice.get("checkpoint", "final"))
            run(sub)
            zips[m["model_folder"]] = sub.output.read_bytes()
            fingerprint, raw = _site(Plan.load(model_dir / PLANS_FILE).dataset_name)
            ids |= identifiers(read_dataset_json(model_dir), fingerprint, model_dir, raw)
    text = chosen_text_file(root).read_text() if chosen_text_file(root).is_file() else ""
    write_pipeline_package(config.output, root.name, {k: v for k, v in choice.items() if k != "version"}, text, zips,
                           ids)
    print(f"fpn_export_model: wrote {config.output} (the chosen pipeline: "
          f"{' + '.join(m['candidate'] for m in choice['members'])}; install with fpn_install_model, predict with "
          f"fpn_predict -d {root.name} --best)", file=sys.stderr)
    return 0


def run(config: ExportConfig) -> int:
    import torch

    from fpnunet.plans.plan import Plan  # lazy: start-up time
    from fpnunet.training.logger import final_validation  # lazy: start-up time

    if config.best:
        return export_chosen(config)
    model_dir = config.model_dir
    assert model_dir is not None  # config_from_args: -m or --best
    plan = Plan.load(model_dir / PLANS_FILE)
    meta = read_dataset_json(model_dir)
    folds = export_folds(model_dir, list(config.folds) if config.folds else None)
    fingerprint, raw = _site(plan.dataset_name)
    members, epochs = fold_members(model_dir, folds, config.checkpoint)
    configuration = model_dir.name.split("__")[0]
    if configuration not in plan.configurations:
        configuration = plan.default_configuration
    fold_dice = {f: v["dice"] for f in folds if (v := final_validation(model_dir / fold_folder_name(f)))}
    pretrained = _read_json(model_dir / fold_folder_name(folds[0]) / PRETRAINED_FILE) or {}
    facts = CardFacts(
        model=model_dir.name, dataset=plan.dataset_name, configuration=configuration,
        network=plan.configurations[configuration].network.name, labels=dict(plan.labels),
        channel_names={str(k): str(v) for k, v in (meta.get("channel_names") or {}).items()},
        enface_modalities=list(meta.get("enface_modalities") or []), checkpoint=config.checkpoint, folds=folds,
        epochs=epochs, licence=config.licence, intended_use=config.intended_use or DEFAULT_INTENDED_USE,
        fingerprint=fingerprint, fold_dice=fold_dice,
        pretraining=str(pretrained.get("tag") or model_dir.name.split("__")[-1]), devices=_devices(raw),
        versions={"fpnunet": fpnunet.__version__, "torch": torch.__version__.split("+")[0],
                  "python": sys.version.split()[0]})
    card = build_card(facts, datetime.date.today().isoformat())
    members[PLANS_FILE] = (model_dir / PLANS_FILE).read_bytes()
    members[DATASET_FILE] = json.dumps(shareable_dataset_json(meta), indent=2).encode() + b"\n"
    members[CARD_JSON] = json.dumps(card, indent=2).encode() + b"\n"
    members[CARD_FILE] = card_markdown(card).encode()
    ids = identifiers(meta, fingerprint, model_dir, raw)
    for extra in model_files(model_dir):
        data = extra.read_bytes()
        if any(i.encode() in data for i in ids if len(i) >= 3):
            print(f"fpn_export_model: left out {extra.name}: it names cases or patients", file=sys.stderr)
            continue
        members[extra.name] = data
    if config.onnx:
        from fpnunet.inference.onnx_export import export_onnx_bytes  # lazy: start-up time

        members[ONNX_FILE], report = export_onnx_bytes(model_dir, folds, config.checkpoint)
        print(f"fpn_export_model: {ONNX_FILE}: {report}", file=sys.stderr)
    write_package(config.output, members, {"model": model_dir.name, "dataset": plan.dataset_name,
                                           "checkpoint": config.checkpoint, "folds": folds}, ids)
    print(summary_line(card), file=sys.stderr)
    print(f"fpn_export_model: wrote {config.output} ({len(members) + 1} files, {len(folds)} fold(s))", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
