"""``fpn_predict``: segment every volume of a folder with a trained model folder.

::

    fpn_predict -i IN_DIR -o OUT_DIR -d 900 [-f 0 1 2 3 4] [-c fpn] [--model NAME] [-m MODEL_DIR]
                [-chk final|best|latest] [--disable-tta] [--npz] [-device auto|cpu|cuda] [--file-ending .nii.gz]
    fpn_predict -i IN_DIR -o OUT_DIR -d 900 --best   # the pipeline fpn_find_best_configuration chose

Inputs are ``IN_DIR/CASE_0000<ending>`` (+ ``_0001`` ... for more channels) in any format
SimpleITK reads. Outputs, per case: ``OUT_DIR/CASE<ending>`` (the label map on the volume's
en-face grid with its spacing and origin; ending of the dataset by default), optionally
``OUT_DIR/CASE.npz`` (probabilities ``(K, B, A)``), and for all cases ``OUT_DIR/lesion_areas.csv``
(``case, patient, eye, visit, class, area_mm2, sqrt_area_mm, lesions, focality``; patient, eye and visit date when the
dataset.json ``visits``/``patients`` know the case; then the QC flag, area interval and uncertainty scores of
:mod:`fpnunet.inference.qc`, unless ``--no-uncertainty``). ``--overlays`` adds ``OUT_DIR/overlays/CASE.png``
(outline on the SLO or a projection of the volume, area, scale bar), ``--report`` one
self-contained ``OUT_DIR/report.html`` (``fpn_report``).

At scale (docs/distributed.md): ``--num-parts K --part-id I`` predicts a deterministic 1/K share of
the cases (Slurm arrays, several nodes) and writes ``lesion_areas.part-I-of-K.csv``;
``fpn_predict -o OUT_DIR --merge-parts`` joins those into ``lesion_areas.csv``; ``--devices cuda:0
cuda:1 ...`` runs one part per device and merges (:mod:`.parts`).

Reading (and preprocessing) the next case, predicting and writing overlap: a reader thread
prefetches, a writer pool writes. A bad case (unreadable or not 3D, depth too small, a missing
channel, a file name without the ``_0000`` channel suffix) is reported on stderr naming the file;
the other cases are still predicted and the exit status is 1, with the number of failures; the
failed cases and their errors go into ``OUT_DIR/failed_cases.csv`` (``case,error``; removed when
none failed), which ``fpn_report`` shows. The folder's names: :mod:`fpnunet.prediction_folder`.

Depth rule: a volume whose depth within the plan's depth crop, ``min(D, depth_crop)``, is below a quarter
of the configuration's depth is rejected (stretched > 4x: a 2D image or a wrongly oriented volume).
"""
from __future__ import annotations

import argparse
import queue
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpnunet import cli_args, results_layout
from fpnunet.cli_utils import resolve_device, run_cli
from fpnunet.errors import FPNError
from fpnunet.inference.inputs import Loaded, collect_inputs, model_dataset_json
from fpnunet.inference.inputs import case_of_message as _case_of_message
from fpnunet.inference.inputs import reader as read_ahead
from fpnunet.inference.parts import check_part, merge_parts, run_on_devices, select_part
from fpnunet.paths import preprocessed_root, raw_dir, resolve_dataset, results_dir, results_root
from fpnunet.prediction_folder import PredictionFolder, PredictionLock
from fpnunet.preprocessed_dataset import plans_file
from fpnunet.raw_dataset import DATASET_FILE, enface_dir
from fpnunet.report.visits import visits_from_dataset

if TYPE_CHECKING:  # torch, numpy and SimpleITK are imported after parsing (fast --help)

    pass

__all__ = ["main", "build_parser", "find_model_folder"]

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpn_predict",
        description="Predict en-face segmentations for every OCT volume (CASE_0000<ending>) in a folder.",
    )
    p.add_argument("-i", "--input", help="folder with CASE_0000<ending> volumes (+ _0001 ...); required unless "
                                         "--merge-parts (default: none)")
    p.add_argument("-o", "--output", required=True, help="output folder (created)")
    cli_args.add_dataset(p, required=False,
                         help="dataset id or folder name (model under $FPN_RESULTS/DatasetXXX; default: none, "
                              "then -m MODEL_DIR is needed)")
    cli_args.add_folds(p, help="folds to ensemble, numbers or 'all' (default: every fold_* of the model folder)")
    cli_args.add_config(p, help="plan configuration (= network name); picks the model folder CONFIG__* "
                                "(default: the dataset plan's default_configuration, else fpn)")
    p.add_argument("--model", help="model folder name under $FPN_RESULTS/DatasetXXX, e.g. fpn__lf1__scratch "
                                   "(default: the only CONFIG__* folder)")
    p.add_argument("-m", "--model-dir", help="path of a trained model folder (wins over -d/--model; default none)")
    cli_args.add_checkpoint(p)
    p.add_argument("--disable-tta", action="store_true", help="no flip test-time augmentation (4x faster)")
    cli_args.add_save_probabilities(p, help="also write OUT/CASE.npz probabilities (--npz: nnU-Net's spelling)")
    cli_args.add_device(p)
    p.add_argument("--file-ending", help="output file ending (default: the dataset's, e.g. .nii.gz)")
    p.add_argument("--window", choices=("auto", "whole", "patch"), default="auto",
                   help="auto: the whole en-face plane in one forward (or the fewest larger windows) when the "
                        "memory estimate fits; whole: one window regardless; patch: the training patch grid "
                        "(default auto)")
    p.add_argument("--whole-plane", action="store_true", help="same as --window whole")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 on CUDA (unless the plan says fp32); on the CPU bf16 only where native and "
                        "measured faster by a short cached probe (default auto)")
    p.add_argument("--step", type=float, default=0.5,
                   help="sliding-window step as a fraction of the patch, in (0, 1] (default 0.5)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="probability threshold for one-class (sigmoid) models (default 0.5)")
    p.add_argument("--fused", action="store_true",
                   help="also use the en-face images (models of --trainer cmc): ENFACE_DIR/CASE_MOD<ending>; "
                        "a model trained with --enface-inputs always reads them")
    p.add_argument("--enface-dir", help="folder of the en-face images for --fused or a model trained with "
                                        "--enface-inputs (default: enfaceTs beside -i)")
    p.add_argument("--overlays", action="store_true", help="also write OUT/overlays/CASE.png: the outline on the "
                   "SLO (enface folder beside the input) or a projection of the volume, with area and scale bar")
    p.add_argument("--report", action="store_true", help="also write OUT/report.html: every case's overlay, areas, "
                   "failed cases and growth per eye when visits are known (see fpn_report)")
    p.add_argument("--no-uncertainty", action="store_true", help="no QC flag, scores, area interval, calibration")
    p.add_argument("--num-parts", type=int, default=1, metavar="K",
                   help="split the cases into K parts (sorted by name, every K-th) and predict one (default 1)")
    p.add_argument("--part-id", type=int, default=0, metavar="I", help="the part to predict, 0..K-1 (default 0)")
    p.add_argument("--devices", nargs="+", metavar="DEV",
                   help="predict one part per device in parallel (cuda:0 cuda:1 ..., or cpu cpu), then merge "
                        "(default: none, one process)")
    p.add_argument("--best", action="store_true", help="predict with the pipeline fpn_find_best_configuration chose")
    p.add_argument("--merge-parts", action="store_true",
                   help="only join OUT_DIR's lesion_areas.part-I-of-K.csv tables into lesion_areas.csv")
    return p


def default_config(dataset: str | None) -> str:
    """The configuration ``-c`` defaults to: the dataset plan's ``default_configuration``, else ``fpn``."""
    import json

    if dataset is not None:
        try:
            with open(plans_file(preprocessed_root() / resolve_dataset(dataset))) as f:
                return str(json.load(f).get("default_configuration") or "fpn")
        except (FPNError, OSError, ValueError, AttributeError):
            pass
    return "fpn"


def find_model_folder(dataset: str | None, model: str | None, network: str | None = None) -> Path:
    """``$FPN_RESULTS/<dataset>/<model>``, or the unique ``<network>__*`` model folder there
    (``network`` ``None``: :func:`default_config`)."""
    network = network or default_config(dataset)
    if dataset is None:
        raise FPNError("name the model: -m MODEL_DIR, or -d DATASET (with --model NAME when several exist)")
    root = results_dir(dataset)
    if not root.is_dir():
        raise FPNError(f"{root}: no trained models for dataset {dataset} (FPN_RESULTS={results_root()})")
    return results_layout.find_model_folder(root, model, network)


@dataclass(frozen=True)
class PredictConfig:
    """The checked flags of ``fpn_predict`` (field names are the flags'); ``argv`` is kept for
    ``--devices``, which starts one ``fpn_predict`` per device with the same flags."""

    output: Path
    argv: tuple[str, ...] = ()
    merge_parts: bool = False
    input: Path | None = None
    model_dir: Path | None = None
    dataset: str | None = None
    folds: list[str] | None = None
    checkpoint: str = "final"
    device: str = "auto"
    disable_tta: bool = False
    whole_plane: bool = False
    step: float = 0.5
    window: str = "auto"
    precision: str = "auto"
    file_ending: str | None = None
    save_probabilities: bool = False
    threshold: float = 0.5
    fused: bool = False
    enface_dir: str | None = None
    overlays: bool = False
    report: bool = False
    num_parts: int = 1
    part_id: int = 0
    devices: tuple[str, ...] = ()
    uncertainty: bool = True
    best: bool = False
    keep_members: bool = False  # --best's member runs: members/ (fpnunet.member_arrays) for the scores


def config_from_args(args: argparse.Namespace, argv: list[str]) -> PredictConfig:
    """Every flag checked, and the model folder found, before any folder is written."""
    if not 0 < args.threshold < 1:  # also false for nan
        raise FPNError(f"--threshold {args.threshold}: must be a probability strictly between 0 and 1")
    if not 0 < args.step <= 1:
        raise FPNError(f"--step {args.step}: must be in (0, 1]")
    out_dir = Path(args.output)
    if args.merge_parts:
        return PredictConfig(out_dir, tuple(argv), merge_parts=True)
    if args.input is None:
        raise FPNError("-i/--input is required (the folder with CASE_0000<ending> volumes)")
    check_part(args.num_parts, args.part_id)
    in_dir = Path(args.input)
    if not in_dir.is_dir():
        raise FPNError(f"{in_dir}: input folder not found")
    if out_dir.exists() and not out_dir.is_dir():
        raise FPNError(f"{out_dir}: -o must name a folder, but this is a file")
    from fpnunet.inference.chosen import check_best_flags  # lazy: start-up time
    from fpnunet.io import check_output_ending  # lazy: start-up time
    check_output_ending(args.file_ending)
    model_dir = (check_best_flags(args.dataset, argv) if args.best else Path(args.model_dir) if args.model_dir
                 else find_model_folder(args.dataset, args.model, args.config))
    if args.devices:
        if args.num_parts != 1 or "--device" in argv:
            raise FPNError("--devices makes one part per device: leave out --num-parts/--part-id and --device")
        for device in args.devices:
            resolve_device(device)
    return PredictConfig(
        out_dir, tuple(argv), False, in_dir, model_dir, args.dataset,
        list(args.folds) if args.folds else None,  # checked by the -f type (cli_args.fold_name)
        args.checkpoint, args.device, args.disable_tta, args.whole_plane, args.step, args.window, args.precision,
        args.file_ending, args.save_probabilities, args.threshold, args.fused, args.enface_dir, args.overlays,
        args.report, args.num_parts, args.part_id, tuple(args.devices or ()), uncertainty=not args.no_uncertainty,
        best=args.best)


@run_cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = config_from_args(build_parser().parse_args(argv), argv)
    cli_args.print_data_roots()
    return run(config)


def run(config: PredictConfig) -> int:
    out_dir = config.output
    if config.merge_parts:
        print(f"fpn_predict: merged into {merge_parts(out_dir)}", file=sys.stderr)
        return 0
    if config.devices:
        return run_on_devices(list(config.argv), list(config.devices), out_dir)
    lock = PredictionFolder(out_dir).writer_lock(config.part_id, config.num_parts)  # one writer per folder
    try:
        if config.best:  # the chosen pipeline: each member through run() into OUT/.members/, then combined
            from fpnunet.inference.chosen import predict_chosen  # lazy: start-up time
            from fpnunet.report.html import PredictionPictures  # lazy: start-up time

            return predict_chosen(config, run, PredictionPictures(config.overlays, config.report))
        return _predict(config, lock)
    finally:
        lock.release()


def _predict(config: PredictConfig, lock: PredictionLock) -> int:
    out_dir, in_dir, model_dir, folds = config.output, config.input, config.model_dir, config.folds
    from tqdm import tqdm

    from fpnunet.inference.export import write_case  # lazy: start-up time
    from fpnunet.inference.predictor import Predictor  # lazy: start-up time
    from fpnunet.io import check_output_ending  # lazy: start-up time

    predictor = Predictor.from_model_folder(model_dir, folds=folds, checkpoint=config.checkpoint, device=config.device,
                                            tta=not config.disable_tta, whole_plane=config.whole_plane,
                                            step_fraction=config.step, window=config.window,
                                            precision=config.precision)
    from fpnunet.model_card import CardCheck  # lazy: start-up time

    card = CardCheck.announce(model_dir)  # a model installed from a package: its card's line, per case warnings
    plan = predictor.plan
    ending = config.file_ending or (predictor.dataset_info.file_ending if predictor.dataset_info else plan.file_ending)
    check_output_ending(ending)  # the dataset's ending too, before any case runs
    labels = predictor.dataset_info.labels if predictor.dataset_info else plan.labels
    raw = None if config.dataset is None else raw_dir(config.dataset)
    dataset_json = model_dataset_json(predictor.dataset_info, raw)  # + the raw dataset's visits of new cases
    visits = _visit_columns(dataset_json)
    if config.overlays or config.report:  # a bad colour in dataset.json stops here, before any output
        from fpnunet.report.overlay import class_colours  # lazy: start-up time

        class_colours(labels, dataset_json)
    from fpnunet.inference.qc import PredictionQC  # lazy: start-up time
    qc = PredictionQC.for_model(model_dir, labels, out_dir, config.threshold) if config.uncertainty else None
    keep = config.keep_members
    from fpnunet.inference.ensemble_scores import members_mean  # lazy: start-up time
    from fpnunet.member_arrays import MemberArrays  # lazy: start-up time
    items, errors, warnings = collect_inputs(in_dir)
    if not items and not errors:
        raise FPNError(f"{in_dir}: no input volumes (expected CASE_0000{ending} files)")
    inputs = [item.case for item in items] + [_case_of_message(e) for e in errors]
    if config.num_parts > 1:  # this part's cases, and its share of the misnamed files' errors
        items = select_part(items, config.num_parts, config.part_id)
        errors = select_part(errors, config.num_parts, config.part_id)
    enface_files: dict[str, dict[str, Path]] = {}
    fused = config.fused or bool(predictor.enface_inputs)  # a network with en-face input channels always reads them
    if fused:  # every case's en-face images are checked before anything is written
        from fpnunet.inference.fused import find_enface_files, model_modalities  # lazy: start-up time

        modalities = model_modalities(predictor)
        enface_folder = Path(config.enface_dir) if config.enface_dir else enface_dir(in_dir.parent, "Ts")
        need = "which the model needs as an input channel" if predictor.enface_inputs else "which --fused needs"
        enface_files = {item.case: find_enface_files(enface_folder, item.case, modalities, need) for item in items}
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    lock.acquire(inputs, [i.case for i in items] + [_case_of_message(e) for e in errors])  # creates out_dir
    print(f"fpn_predict: {len(items)} case(s), {len(predictor.networks)} fold(s) {predictor.folds} "
          f"({config.checkpoint}) of {model_dir}, tta={predictor.tta}, device={predictor.device}, "
          f"{predictor.precision}, channels-last, "
          f"{sum(len(n.fold_report.folded) for n in predictor.networks)} BatchNorm(s) folded"
          f"{', fused with ' + ' + '.join(modalities) if fused else ''}"
          + (f", part {config.part_id} of {config.num_parts}" if config.num_parts > 1 else "")
          + (f"; {qc.describe()}" if qc else ""), file=sys.stderr)
    if config.precision == "auto" and predictor.device.type == "cpu" and predictor.config.precision != "fp32":
        from fpnunet.precision import cpu_bf16_decision  # lazy: start-up time

        print(f"fpn_predict: --precision auto on the CPU: {cpu_bf16_decision().reason}", file=sys.stderr)

    failures = len(errors)
    failed = {_case_of_message(e): e for e in errors}  # case -> error, for the report
    rows: list[dict[str, Any]] = []
    loaded_q: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    reader = threading.Thread(target=read_ahead, args=(items, predictor, in_dir, loaded_q, stop), daemon=True,
                              name="fpn_predict-reader")
    reader.start()
    pending: list[tuple[str, Future]] = []
    try:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="fpn_predict-writer") as writer:
            for _ in tqdm(range(len(items)), desc="predict", unit="case", file=sys.stderr,
                          disable=len(items) < 2):
                loaded: Loaded = loaded_q.get()
                if loaded.error is not None:
                    tqdm.write(f"error: {loaded.error}", file=sys.stderr)
                    failed[loaded.case] = loaded.error
                    failures += 1
                    continue
                for note in card.check(loaded.case, loaded.geometry.spacing) if card is not None else ():
                    tqdm.write(f"warning: {note}", file=sys.stderr)
                try:
                    known = len(predictor.window_plans)
                    if fused:
                        from fpnunet.inference.fused import predict_fused, read_enface  # lazy: start-up time

                        grid = (loaded.volume.shape[1], loaded.volume.shape[3])
                        probs = predict_fused(predictor, loaded.volume,
                                              read_enface(enface_files[loaded.case], modalities, grid),
                                              qc is not None or keep)
                    else:
                        probs = predictor.predict_preprocessed(loaded.volume, members=qc is not None or keep)
                    if keep:  # a --best member run: the members for the ensemble's scores, the mean written
                        MemberArrays(out_dir).write(loaded.case, probs)
                        probs = qc.reduce(loaded.case, probs, loaded.geometry.spacing) if qc else members_mean(probs)
                    elif qc:
                        probs = qc.reduce(loaded.case, probs, loaded.geometry.spacing)  # members -> calibrated mean
                    if len(predictor.window_plans) > known:  # a new plane size: say how it was cut
                        plane = (loaded.volume.shape[1], loaded.volume.shape[3])
                        tqdm.write(f"{plane[0]} x {plane[1]} {predictor.window_plan(plane).describe()}",
                                   file=sys.stderr)
                except FPNError as exc:
                    tqdm.write(f"error: {in_dir / loaded.case}_0000: {exc}", file=sys.stderr)
                    failed[loaded.case] = str(exc)
                    failures += 1
                    continue
                pending.append((loaded.case, writer.submit(
                    write_case, loaded.case, probs, loaded.geometry, out_dir, ending, config.save_probabilities,
                    labels, config.threshold, visits.get(loaded.case))))
            for case, fut in pending:
                try:
                    rows.extend(fut.result())
                except (FPNError, OSError, RuntimeError) as exc:
                    print(f"error: {out_dir / case}{ending}: writing failed ({exc})", file=sys.stderr)
                    failed[case] = f"writing failed ({exc})"
                    failures += 1
    finally:
        stop.set()
        reader.join(timeout=5)

    from fpnunet.inference.export import LESION_COLUMNS  # lazy: start-up time
    folder = PredictionFolder(out_dir)
    if rows or config.num_parts > 1:  # a failed prediction writes no (header-only) table; a part always does
        table = qc.table(rows, LESION_COLUMNS) if qc else (rows, LESION_COLUMNS)  # (--merge-parts needs it)
        folder.write_areas(*table, config.part_id, config.num_parts)
    folder.write_failed(failed, config.part_id, config.num_parts)
    if config.overlays or config.report:
        from fpnunet.report.html import pictures_after_prediction  # lazy: start-up time

        pictures_after_prediction(out_dir, {c: folder.mask_file(c, ending) for c, _ in pending if c not in failed},
                                  labels, dataset_json, in_dir, failed, config.overlays, config.report,
                                  plan.projection_axis)
    total = len(items) + len(errors)
    done = total - failures
    print(f"fpn_predict: wrote {done} of {total} case(s) to {out_dir}", file=sys.stderr)
    if failures:
        print(f"error: {failures} of {total} input(s) failed (see messages above)", file=sys.stderr)
        return 1
    return 0


def _visit_columns(dataset_json: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """``{case: {"patient", "eye", "visit"}}`` from dataset.json (pseudonymised fields only)."""
    return {c: {"patient": v.patient, "eye": v.eye, "visit": v.date.isoformat() if v.date else None}
            for c, v in visits_from_dataset(dataset_json, DATASET_FILE).items()}


if __name__ == "__main__":  # pragma: no cover
    main()
