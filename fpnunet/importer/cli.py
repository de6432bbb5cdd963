"""The ``fpn_import`` command: device exports -> a raw fpnunet dataset (see docs/import.md)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from fpnunet import cli_args
from fpnunet.cli_utils import run_cli
from fpnunet.errors import FPNError
from fpnunet.importer.privacy import check_key_location, default_key_path
from fpnunet.paths import raw_dir
from fpnunet.raw_dataset import dataset_file, read_dataset_json


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fpn_import",
        description="Import device exports (Heidelberg HEYEX .vol / XML / .e2e, Topcon .fda / .fds, DICOM OPT with its "
                    "OP localizer) into the raw dataset layout; the SLO localizer is resampled onto every "
                    "volume's en-face grid and written as the SLO en-face image. Patients are pseudonymised.",
    )
    p.add_argument("-i", "--input", help="export file or folder (searched recursively; may mix formats; "
                                         "required unless --mirror-back; default: none)")
    p.add_argument("-o", "--output", required=True, help="dataset folder to write, e.g. $FPN_RAW/Dataset901_Clinic "
                                                         "(with --mirror-back: the folder for the flipped predictions)")
    p.add_argument("--labels", default=None, help="folder of en-face masks (PNG/TIFF/NIfTI) named CASE or like the "
                                                  "export file, on the en-face or the localizer grid "
                                                  "(default: none, unlabelled)")
    p.add_argument("--enface", action="append", default=[], metavar="MOD=DIR",
                   help="other en-face images (e.g. FAF=faf_dir/) registered onto the SLO; repeatable (default: none)")
    p.add_argument("--classes", nargs="+", default=["GA"], help="label class names, values 1.. (default GA)")
    p.add_argument("--split-test", type=float, default=0.0, metavar="FRACTION",
                   help="share of patients put into imagesTs/labelsTs, in [0, 1) (default 0)")
    p.add_argument("--append", action="store_true", help="add to a dataset fpn_import wrote before")
    p.add_argument("--mirror-os", action="store_true",
                   help="mirror left-eye (OS) scans to look like OD along the A-scan axis (recorded per case)")
    p.add_argument("--keep-ids", action="store_true",
                   help="keep the original patient ids instead of pseudonyms (names and birth dates are never kept)")
    p.add_argument("--key", default=None,
                   help="pseudonymisation key file, outside the dataset (default $FPN_IMPORT_KEY or "
                        "~/.fpnunet/import.key; created when missing)")
    p.add_argument("--skip-bad", action="store_true",
                   help="import the readable scans and list the others in the report (default: stop, write nothing)")
    p.add_argument("--mm-per-degree", type=float, default=0.288,
                   help="retinal mm per degree where a device gives positions in degrees (E2E; default 0.288)")
    p.add_argument("--mirror-back", metavar="PREDICTIONS", default=None,
                   help="instead of importing: flip the predictions of cases imported with --mirror-os back to the "
                        "device's orientation (needs -d and -o; default: import)")
    cli_args.add_dataset(p, required=False,
                         help="with --mirror-back: the imported dataset, id or folder name (default: none)")
    cli_args.add_progress(p, help="no progress bar")
    return p


def options_from_args(args: argparse.Namespace):
    """Validate every flag (before any folder is touched) into :class:`ImportOptions`."""
    from fpnunet.importer.dataset import ImportOptions  # lazy: start-up time

    inp, out = Path(args.input).expanduser(), Path(args.output).expanduser()
    if not inp.exists():
        raise FPNError(f"-i {inp}: no such file or folder")
    if not re.fullmatch(r"Dataset\d{3,}_[A-Za-z0-9-]+", out.name):
        raise FPNError(f"-o {out}: the dataset folder must be named DatasetNNN_Name (e.g. Dataset901_Clinic)")
    if out.exists() and not out.is_dir():
        raise FPNError(f"-o {out}: exists and is not a folder")
    number = int(out.name[len("Dataset"):].split("_", 1)[0])
    if out.parent.is_dir():
        taken = sorted(p.name for p in out.parent.glob("Dataset*_*") if p.is_dir() and p.name != out.name
                       and re.fullmatch(r"Dataset\d{3,}_.+", p.name) and int(p.name[7:].split("_", 1)[0]) == number)
        if taken:
            raise FPNError(f"-o {out}: dataset id {number:03d} is already taken by {out.parent / taken[0]} "
                           "(-d would be ambiguous); choose another number")
    if args.append:
        ds = dataset_file(out)
        if not ds.is_file():
            raise FPNError(f"--append: {ds} does not exist; import without --append first")
        meta = read_dataset_json(out)
        if not isinstance(meta, dict) or "import" not in meta:
            raise FPNError(f"--append: {out} was not written by fpn_import")
        if bool(meta["import"].get("mirror_os")) != args.mirror_os:
            raise FPNError(f"--append: {out} was imported {'with' if meta['import'].get('mirror_os') else 'without'}"
                           " --mirror-os; give the same choice again")
        if bool(meta["import"].get("keep_ids")) != args.keep_ids:
            raise FPNError(f"--append: {out} was imported {'with' if meta['import'].get('keep_ids') else 'without'}"
                           " --keep-ids; give the same choice again")
    elif out.is_dir() and any(out.iterdir()):
        raise FPNError(f"-o {out}: folder is not empty; choose a new folder or add --append")
    if inp.resolve() == out.resolve() or out.resolve() in inp.resolve().parents:
        raise FPNError(f"-i {inp}: the input must not be inside the output folder {out}")
    if not 0.0 <= args.split_test < 1.0:
        raise FPNError(f"--split-test must be in [0, 1); got {args.split_test}")
    if not 0.1 <= args.mm_per_degree <= 1.0:
        raise FPNError(f"--mm-per-degree must be between 0.1 and 1.0; got {args.mm_per_degree}")
    for c in args.classes:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", c) or c == "background":
            raise FPNError(f"--classes {c!r}: use letters, digits, '_' and '-' (background is implied as 0)")
    if len(set(args.classes)) != len(args.classes):
        twice = sorted({c for c in args.classes if args.classes.count(c) > 1})
        raise FPNError(f"--classes: {', '.join(twice)} given more than once; each class gets its own value")
    labels = None
    if args.labels:
        labels = Path(args.labels).expanduser()
        if not labels.is_dir():
            raise FPNError(f"--labels {labels}: not a folder")
    enface: dict[str, Path] = {}
    for spec in args.enface:
        mod, sep, folder = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", mod) or not folder:
            raise FPNError(f"--enface {spec!r}: expected MOD=DIR, e.g. FAF=/data/faf (MOD letters and digits)")
        if mod == "SLO" or mod in enface:
            raise FPNError(f"--enface {spec!r}: modality {mod} is "
                           f"{'the localizer itself' if mod == 'SLO' else 'given twice'}")
        if not Path(folder).expanduser().is_dir():
            raise FPNError(f"--enface {spec!r}: {folder} is not a folder")
        enface[mod] = Path(folder).expanduser()
    key = Path(args.key).expanduser() if args.key else default_key_path()
    check_key_location(key, out)
    return ImportOptions(input=inp, output=out, key_path=key, labels=labels, enface=enface, classes=list(args.classes),
                         split_test=args.split_test, append=args.append, mirror_os=args.mirror_os,
                         keep_ids=args.keep_ids, skip_bad=args.skip_bad, mm_per_degree=args.mm_per_degree,
                         show_progress=args.progress)


def import_exports(argv: list[str] | None = None) -> int:
    """``fpn_import -i EXPORTS -o $FPN_RAW/DatasetNNN_Name [--labels DIR] [--enface MOD=DIR ...] ...``;
    raises :class:`FPNError` (``main`` prints it as one ``error:`` line, exit status 1)."""
    args = _parser().parse_args(argv)
    cli_args.print_data_roots()
    if args.mirror_back:
        from fpnunet.importer.mirror_back import mirror_back  # lazy: start-up time

        if not args.dataset:
            raise FPNError("--mirror-back needs -d DATASET (the dataset fpn_import wrote)")
        flipped, copied = mirror_back(Path(args.mirror_back), raw_dir(args.dataset), Path(args.output))
        print(f"wrote {flipped + copied} prediction(s) to {args.output}: {flipped} flipped back (imported "
              f"mirrored), {copied} copied")
        return 0
    if not args.input:
        raise FPNError("-i/--input is required (the export file or folder)")
    opts = options_from_args(args)
    from fpnunet.importer.dataset import Importer  # lazy: start-up time

    imp = Importer(opts)
    if imp.key_created:
        print(f"created a new pseudonymisation key {opts.key_path}: keep it (outside the dataset) to get the same "
              "pseudonyms on later imports")
    print(imp.run())
    return 0


main = run_cli(import_exports)
