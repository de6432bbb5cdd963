"""Writing the raw dataset: every export read, checked, pseudonymised and staged, then moved in at once.

Files are first written into a staging folder beside the output (``.NAME.importing-PID``); only
when every file was read (or ``--skip-bad`` was given) are they moved into place, so a failed
import leaves no half-written dataset.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fpnunet.errors import DatasetError, FPNError
from fpnunet.importer import heyex, privacy
from fpnunet.importer.detect import find_exports
from fpnunet.importer.dicom import read_opt, sort_dicom
from fpnunet.importer.enface import stage_enface
from fpnunet.importer.geometry import mirror_a, raster_geometry
from fpnunet.importer.labels import index_folder, load_label, match
from fpnunet.importer.localizer import SLO_FROM_HEADER, register_localizer
from fpnunet.importer.report import read_report, report_file, write_report
from fpnunet.importer.scan import Scan
from fpnunet.importer.topcon import read_topcon
from fpnunet.io import write_image
from fpnunet.raw_dataset import (
    enface_dir,
    enface_name,
    images_dir,
    label_name,
    labels_dir,
    read_dataset_json,
    volume_name,
    write_dataset_json,
)

ENDING = ".nii.gz"


@dataclass
class ImportOptions:
    """Everything ``fpn_import`` was asked (validated by the CLI before any folder is touched)."""

    input: Path
    output: Path
    key_path: Path
    labels: Path | None = None
    enface: dict[str, Path] = field(default_factory=dict)
    classes: list[str] = field(default_factory=lambda: ["GA"])
    split_test: float = 0.0
    append: bool = False
    mirror_os: bool = False
    keep_ids: bool = False
    skip_bad: bool = False
    mm_per_degree: float = 0.288
    show_progress: bool = True


@dataclass
class _Staged:
    case: str
    patient: str
    files: list[tuple[str, Path, str]]  # (kind: volume|enface|label|check, staged path, final name)
    row: dict[str, str]
    visit: dict


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_all(path: Path, fmt: str, localizers: dict[str, Path], opts: ImportOptions) -> list[Scan]:
    """The scans of one export file (a one-line :class:`FPNError` when it cannot be imported)."""
    if fmt == "dicom":
        return read_opt(path, localizers)
    if fmt == "heyex-vol":
        return heyex.read_vol(path)
    if fmt == "heyex-xml":
        return heyex.read_xml(path)
    if fmt == "heyex-e2e":
        return heyex.read_e2e(path, opts.mm_per_degree)
    if fmt in ("topcon-fda", "topcon-fds"):
        return read_topcon(path)
    raise FPNError(f"{path}: unknown export format {fmt!r}")


class Importer:
    """One ``fpn_import`` run: call :meth:`run`."""

    def __init__(self, opts: ImportOptions):
        self.opts = opts
        self.key, self.key_created = privacy.load_or_create_key(opts.key_path)
        self.labels = index_folder(opts.labels) if opts.labels else {}
        self.enface_index = {m: index_folder(d) for m, d in opts.enface.items()}
        self.enface_dicom: dict[str, list] = {}
        self.existing: dict = read_dataset_json(opts.output) if opts.append else {}
        self.known_cases = set(self.existing.get("visits", {}))
        self.label_values = list(range(len(opts.classes) + 1))
        self.sources: list[tuple[str, str, str]] = []
        self.labels_used: set[Path] = set()
        self._others = [p for d in ([opts.labels] if opts.labels else []) + list(opts.enface.values())
                        for p in sorted(d.iterdir()) if p.is_file()]
        self.staging = opts.output.parent / f".{opts.output.name}.importing-{os.getpid()}"

    # ------------------------------------------------------------------ one scan
    def _names(self, scan: Scan, digest: str) -> tuple[str, str]:
        if self.opts.keep_ids and scan.patient_key:
            patient = privacy.safe_id(scan.patient_id or scan.patient_key)
        elif scan.patient_key:
            patient = privacy.patient_pseudonym(self.key, scan.patient_key)
        else:
            patient = f"Punknown-{privacy.keyed_hash(self.key, 'file', digest, 6)}"
        eye = scan.laterality or "XX"
        case = f"{patient}_{eye}_{privacy.scan_hash(self.key, digest, scan.series)}"
        return patient, case

    def stage_scan(self, scan: Scan, digest: str, rel_source: str) -> _Staged:
        opts = self.opts
        raster = raster_geometry(scan)
        patient, case = self._names(scan, digest)
        n_b, _, n_a = scan.volume.shape
        shape_ba = (n_b, n_a)
        slo, slo_why = register_localizer(scan, raster.affine, shape_ba)
        mirrored = opts.mirror_os and scan.laterality == "OS"
        vol = scan.volume if scan.volume.dtype in (np.uint8, np.uint16) else scan.volume.astype(np.float32)
        files: list[tuple[str, Path, str]] = []
        folder = self.staging / "cases" / case
        sp = raster.spacing
        sp2 = (sp[0], sp[2])

        def put(kind: str, name: str, arr: np.ndarray, spacing: tuple[float, ...]) -> None:
            path = folder / name
            write_image(path, mirror_a(arr) if mirrored else arr, spacing)
            files.append((kind, path, name))

        put("volume", volume_name(case, ENDING), vol, sp)
        if slo is not None:
            put("enface", enface_name(case, "SLO", ENDING), slo.astype(np.float32), sp2)
        names = [case, f"{scan.source.stem}_{scan.series}" if scan.series else scan.source.stem]
        if scan.format == "heyex-xml":  # an XML export is a folder: its name names the scan
            names.append(scan.source.parent.name)
        label_state = "none"
        lab_path = match(self.labels, names) if self.labels else None
        if lab_path is not None:
            self.labels_used.add(lab_path)
            lab = load_label(lab_path, scan, raster.affine, shape_ba, self.label_values)
            put("label", label_name(case, ENDING), lab, sp2)
            label_state = "written"
        row = {"case": case, "source": privacy.source_token(self.key, rel_source), "format": scan.format,
               "reader": scan.reader, "shape_bda": "x".join(map(str, scan.volume.shape)),
               "spacing_bda_mm": " ".join(f"{s:.6g}" for s in sp), "bscan_distance_from": raster.bscan_from,
               "laterality": scan.laterality or "unknown",
               "mirrored": str(mirrored).lower(), "visit_date": scan.visit_date,
               "slo": "written" if slo is not None else f"not written: {slo_why}", "label": label_state,
               "slo_from": (scan.localizer_from or SLO_FROM_HEADER) if slo is not None else "",
               "notes": "; ".join(scan.notes + raster.notes)}
        if opts.enface:
            for mod, (arr, check, cols) in stage_enface(self, scan, raster, slo, names, shape_ba, case).items():
                row.update(cols)
                if arr is not None:
                    put("enface", enface_name(case, mod, ENDING), arr, sp2)
                if check is not None:
                    files.append(("check", check, check.name))
        visit = {"patient": patient, "eye": scan.laterality or "unknown", "date": scan.visit_date,
                 "mirrored": mirrored}
        return _Staged(case, patient, files, row, visit)

    # ------------------------------------------------------------------ the run
    def _private(self, text: str, path: Path, token: str) -> str:
        """``text`` with the export's path (and any label/en-face file it names) replaced by source
        tokens, which go into the private sources map: export file names often hold the patient's name."""
        subs = {str(path): token, path.name: token, str(path.parent): f"the folder of {token}",
                str(self.opts.input): "the -i folder"}
        for other in self._others:
            if str(other) in text:
                tok = privacy.source_token(self.key, str(other))
                self.sources.append((tok, "", str(other)))
                kind = "label" if self.opts.labels and other.parent == self.opts.labels else "en-face"
                subs[str(other)] = f"{kind} file {tok}"
        for old in sorted(subs, key=len, reverse=True):
            text = text.replace(old, subs[old])
        return text

    def run(self) -> str:
        opts = self.opts
        from tqdm import tqdm

        exports, ignored = find_exports(opts.input)
        if not exports:
            raise FPNError(f"-i {opts.input}: no device export found (HEYEX .vol/.xml/.e2e, Topcon .fda/.fds, "
                           f"DICOM OPT); {ignored} other file(s) ignored")
        exports, localizers, unreadable, other_dicom = sort_dicom(exports)
        staged: list[_Staged] = []
        rows_skipped: list[dict[str, str]] = []
        seen: set[str] = set()
        all_ids: set[str] = set()
        failed: list[tuple[str, str]] = []  # (source token, reason)

        def rel_of(p: Path) -> str:
            return str(p.relative_to(opts.input)) if p != opts.input else p.name

        def refuse(p: Path, message: str) -> None:
            token = privacy.source_token(self.key, rel_of(p))
            self.sources.append((token, "", rel_of(p)))
            failed.append((token, self._private(message, p, token).removeprefix(f"{token}: ")))

        for p, m in unreadable:
            refuse(p, m)
        if self.staging.exists():
            shutil.rmtree(self.staging)
        try:
            for path, fmt in tqdm(exports, desc="import", unit="file", disable=not opts.show_progress,
                                  file=sys.stderr):
                rel = rel_of(path)
                try:
                    scans = read_all(path, fmt, localizers, opts)
                    digest = file_digest(path)
                    for scan in scans:
                        all_ids.update(privacy.identifier_variants(scan.identifiers))
                        st = self.stage_scan(scan, digest, rel)
                        if st.case in seen or st.case in self.known_cases:
                            rows_skipped.append({**st.row, "notes": "already imported: skipped"})
                            continue
                        seen.add(st.case)
                        staged.append(st)
                        self.sources.append((st.row["source"], st.case, rel))
                except FPNError as exc:
                    refuse(path, str(exc))
            failed = [(t, privacy.redact(m, sorted(all_ids), self.key)) for t, m in failed]
            problems = [f"{t}: {m}" for t, m in failed]
            if problems and not opts.skip_bad:
                self._write_sources_map()
                where = privacy.sources_map_path(opts.key_path, opts.output)
                raise DatasetError(problems, header=f"{len(problems)} export file(s) cannot be imported; nothing "
                                                    f"was written (--skip-bad imports the others; the files behind "
                                                    f"the src- tokens are listed in {where})")
            if not staged:
                self._write_sources_map()
                raise FPNError(f"-i {opts.input}: nothing to import ({len(rows_skipped)} scan(s) already in "
                               f"{opts.output}, {len(problems)} unreadable, {other_dicom} DICOM file(s) of "
                               "other SOP classes)")
            skipped = [{"source": t, "notes": f"skipped: {m}"} for t, m in failed]
            return self._finish(staged, rows_skipped, skipped, len(problems)) + self._unmatched_labels()
        finally:
            if self.staging.exists():
                shutil.rmtree(self.staging, ignore_errors=True)

    def _unmatched_labels(self) -> str:
        """A warning line for label files that matched no scan (listed in the private sources map)."""
        unused = [p for p in self.labels.values() if p not in self.labels_used]
        if not unused:
            return ""
        self.sources = [(privacy.source_token(self.key, str(p)), "", str(p)) for p in unused]
        self._write_sources_map()
        where = privacy.sources_map_path(self.opts.key_path, self.opts.output)
        return (f"\nwarning: {len(unused)} label file(s) in --labels matched no imported scan (named neither like a "
                f"case nor like an export file); they are listed in {where}")

    def _test_patients(self, staged: list[_Staged]) -> set[str]:
        old_visits = self.existing.get("visits", {})
        old_split = {v["patient"]: v.get("split", "Tr") for v in old_visits.values()}
        new = sorted({s.patient for s in staged} - set(old_split),
                     key=lambda p: privacy.keyed_hash(self.key, "split", p))
        n_test = int(round(self.opts.split_test * len(new)))
        if self.opts.split_test > 0 and n_test == 0 and len(new) >= 2:
            n_test = 1
        n_test = min(n_test, max(len(new) - 1, 0)) if not old_split else n_test
        return set(new[:n_test]) | {p for p, s in old_split.items() if s == "Ts"}

    def _write_sources_map(self) -> None:
        """Append ``source token, case, path`` to the private map beside the key (outside the dataset)."""
        import csv

        path = privacy.sources_map_path(self.opts.key_path, self.opts.output)
        new = not path.exists()
        try:
            with open(path, "a", newline="") as f:
                w = csv.writer(f, lineterminator="\n")
                if new:
                    w.writerow(["source", "case", "path"])
                w.writerows(self.sources)
        except OSError as exc:
            print(f"warning: {path}: cannot write the private source list ({exc.strerror})", file=sys.stderr)

    def _finish(self, staged: list[_Staged], rows_skipped: list[dict[str, str]], skipped: list[dict[str, str]],
                n_problems: int) -> str:
        opts = self.opts
        out = opts.output
        test = self._test_patients(staged)
        mods = ["SLO", *sorted(opts.enface)]
        old = self.existing
        ds = {
            "name": old.get("name") or out.name.split("_", 1)[-1],
            "channel_names": {"0": "OCT"},
            "enface_modalities": list(old.get("enface_modalities", []))
            + [m for m in mods if m not in old.get("enface_modalities", [])],
            "labels": old.get("labels") or {"background": 0, **{c: i + 1 for i, c in enumerate(opts.classes)}},
            "file_ending": ENDING,
            "projection_axis": 1,
            "patients": dict(old.get("patients", {})),
            "visits": dict(old.get("visits", {})),
            "import": {"tool": "fpn_import", "mirror_os": opts.mirror_os, "keep_ids": opts.keep_ids,
                       "pseudonyms": "none (original ids kept)" if opts.keep_ids
                       else "HMAC-SHA256, key outside the dataset"},
        }
        moves: list[tuple[Path, Path]] = []
        rows = read_report(report_file(out)) if opts.append else []
        for st in staged:
            split = "Ts" if st.patient in test else "Tr"
            st.row["split"] = split
            if split == "Ts" and st.row["slo"] == "written":
                st.row["slo"] = "not written: test case (the raw layout has no en-face folder for test cases)"
                st.row["slo_from"] = ""
            ds["patients"][st.case] = st.patient
            ds["visits"][st.case] = {**st.visit, "split": split}
            for kind, path, name in st.files:
                if kind == "check":
                    moves.append((path, out / "import_checks" / name))
                    continue
                if split == "Ts" and kind == "enface":
                    continue  # the raw layout has no en-face folder for test cases
                folder = {"volume": images_dir, "enface": enface_dir, "label": labels_dir}[kind](out, split)
                moves.append((path, folder / name))
            rows.append(st.row)
        rows.extend(rows_skipped)
        rows.extend(skipped)
        ds["numTraining"] = sum(1 for v in ds["visits"].values() if v.get("split") == "Tr")
        for _, dst in moves:
            if dst.exists():
                raise FPNError(f"{dst}: already exists; nothing was moved (remove it or import into a new folder)")
        out.mkdir(parents=True, exist_ok=True)
        for src, dst in moves:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        write_report(report_file(out), rows)
        self._write_sources_map()
        write_dataset_json(out, ds)
        n_slo = sum(1 for s in staged if s.row["slo"] == "written")
        n_lab = sum(1 for s in staged if s.row["label"] == "written")
        n_ts = sum(1 for s in staged if s.patient in test)
        return (f"imported {len(staged)} scan(s) of {len({s.patient for s in staged})} patient(s) into {out}: "
                f"{n_slo} with SLO, {n_lab} labelled, {n_ts} test; {len(rows_skipped)} already there, "
                f"{n_problems} file(s) skipped; report {report_file(out)}")
