"""``fpn_export_dicom``: predictions of DICOM-imported cases as DICOM Segmentations on the device's localizer.

::

    fpn_export_dicom -p PREDICTIONS -d DATASET -i EXPORTS -o OUT [--key KEY] [--cases CASE ...] [--overwrite]

For every prediction ``CASE<ending>`` (or the ``--cases`` given) of a case ``fpn_import`` read from
DICOM OPT + OP: the export file is found through the private sources map beside ``--key`` (the
key the dataset was imported with), re-read under ``-i`` (the folder given to ``fpn_import -i``),
and the mask written as ``OUT/CASE_seg.dcm`` (DICOM Segmentation on the OP localizer, referencing
it, with the source's patient/study modules: only there) and ``OUT/CASE_overlay.png``
(:mod:`fpnunet.importer.dicom_out`). Every case is checked and converted before the first file is
written: a case not from DICOM, a missing or changed export file or a wrong key is refused with
one line and nothing is written.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from fpnunet import cli_args
from fpnunet.cli_utils import run_cli, run_command
from fpnunet.errors import FPNError
from fpnunet.paths import raw_dir
from fpnunet.raw_dataset import dataset_file, read_dataset_json


@dataclass(frozen=True)
class ExportDicomConfig:
    """The checked flags of ``fpn_export_dicom``."""

    predictions: Path
    dataset: Path
    exports: Path
    output: Path
    key: Path
    cases: tuple[str, ...] = ()
    overwrite: bool = False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpn_export_dicom",
        description="Write the predictions of cases fpn_import read from DICOM OPT + OP as DICOM Segmentations on "
                    "the OP localizer (highdicom) and as PNG overlays on it.")
    p.add_argument("-p", "--predictions", required=True, help="prediction folder (fpn_predict -o)")
    cli_args.add_dataset(p, help="the dataset fpn_import wrote: id (901) or folder name (Dataset901_Clinic)")
    p.add_argument("-i", "--input", required=True, help="the export folder that was given to fpn_import -i")
    p.add_argument("-o", "--output", required=True, help="folder for CASE_seg.dcm and CASE_overlay.png")
    p.add_argument("--key", default=None, help="the pseudonymisation key the dataset was imported with (default "
                                               "$FPN_IMPORT_KEY or ~/.fpnunet/import.key); never created here")
    p.add_argument("--cases", nargs="+", default=None, metavar="CASE",
                   help="only these cases (default: every prediction in -p)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs of these cases in -o")
    return p


def config_from_args(args: argparse.Namespace) -> ExportDicomConfig:
    """Flags checked before anything is read or written."""
    from fpnunet.importer.privacy import default_key_path  # lazy: start-up time

    pred = Path(args.predictions).expanduser()
    if not pred.is_dir():
        raise FPNError(f"-p {pred}: not a folder")
    dataset = raw_dir(args.dataset)
    if not dataset_file(dataset).is_file():
        raise FPNError(f"-d {args.dataset}: {dataset_file(dataset)} not found")
    exports = Path(args.input).expanduser()
    if not exports.is_dir():
        raise FPNError(f"-i {exports}: not a folder (give the folder that was imported with fpn_import -i)")
    out = Path(args.output).expanduser()
    if out.exists() and not out.is_dir():
        raise FPNError(f"-o {out}: exists and is not a folder")
    for other, flag in ((pred, "-p"), (dataset, "-d"), (exports, "-i")):
        if out.resolve() == other.resolve():
            raise FPNError(f"-o {out}: must differ from the {flag} folder")
    key = Path(args.key).expanduser() if args.key else default_key_path()
    if not key.is_file():
        raise FPNError(f"--key {key}: no such key file (the key the dataset was imported with)")
    return ExportDicomConfig(pred, dataset, exports, out, key, tuple(args.cases or ()), args.overwrite)


@run_cli
def main(argv: list[str] | None = None) -> int:
    return run_command(argv, build_parser, config_from_args, run)


def run(config: ExportDicomConfig) -> int:
    from fpnunet.atomic import atomic_path  # lazy: start-up time
    from fpnunet.importer.dicom_out import (  # lazy: start-up time (SimpleITK)
        SourceIndex,
        mask_on_localizer,
        overlay_file,
        overlay_png,
        seg_file,
    )
    from fpnunet.importer.dicom_seg import segmentation  # lazy: start-up time (highdicom)
    from fpnunet.prediction_folder import PredictionFolder, read_label_map  # lazy: start-up time

    meta = read_dataset_json(config.dataset)
    labels = {str(k): int(v) for k, v in meta.get("labels", {}).items()}
    if "import" not in meta:
        raise FPNError(f"{dataset_file(config.dataset)}: not written by fpn_import: no DICOM source to write onto")
    masks = PredictionFolder(config.predictions).masks()
    cases = list(config.cases) or sorted(masks)
    if not cases:
        raise FPNError(f"-p {config.predictions}: no predictions in this folder")
    missing = [c for c in cases if c not in masks]
    if missing:
        raise FPNError(f"--cases {missing[0]}: no prediction of it in -p {config.predictions}")
    if not config.overwrite:
        there = [p for c in cases for p in (seg_file(config.output, c), overlay_file(config.output, c)) if p.exists()]
        if there:
            raise FPNError(f"{there[0]}: already exists (add --overwrite); nothing was written")
    index = SourceIndex(config.dataset, config.exports, config.key, meta.get("visits", {}))
    done = []
    for case in cases:  # every case checked and converted before the first file is written
        src = index.source(case)
        mask, _ = read_label_map(masks[case], labels)
        on_loc = mask_on_localizer(mask, src)
        done.append((case, segmentation(src.op, on_loc, labels, case), overlay_png(src.scan.localizer, on_loc,
                                                                                 labels)))
    from PIL import Image  # lazy: start-up time

    config.output.mkdir(parents=True, exist_ok=True)
    for case, seg, rgb in done:
        with atomic_path(seg_file(config.output, case), suffix=".dcm") as tmp:
            seg.save_as(tmp)
        with atomic_path(overlay_file(config.output, case), suffix=".png") as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
    print(f"fpn_export_dicom: wrote {len(done)} DICOM Segmentation(s) and overlay(s) on the OP localizer to "
          f"{config.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    main()
