"""The pipeline package: one ``.zip`` that hands the chosen pipeline (``fpn_find_best_configuration``)
to another site. ``fpn_export_model -d ID --best`` writes it, ``fpn_install_model`` installs it.

The one owner of the pipeline package format (docs/sharing.md)::

    manifest.json            {"format": {"name": "fpnunet-pipeline-package", "version": 1}, "dataset",
                             "models": [model folder, ...], "files": {PATH: SHA-256}}
    chosen_pipeline.json     the choice (:mod:`fpnunet.pipeline_files`): members, TTA, post-processing,
    chosen_pipeline.txt      the scores; no case names (checked byte by byte at export)
    models/<model>.zip       one model package (:mod:`fpnunet.model_package`) per member

:func:`install_pipeline` refuses, with one line naming the member, anything but these names, links,
executables, a member whose SHA-256 differs from the manifest or that the manifest does not list, a
choice that does not name exactly the packaged models; each model package then goes through
:func:`fpnunet.model_package.install_package` (all of its checks) into a staging folder beside the
dataset's results folder. Only when every check passed are the model folders moved in and the
choice written (last): nothing is ever half-installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fpnunet.atomic import atomic_path
from fpnunet.errors import FPNError
from fpnunet.model_package import MANIFEST_FILE, MAX_MEMBER_BYTES, install_package, names_found, sha256_bytes
from fpnunet.pipeline_files import CHOSEN_FILE, CHOSEN_TEXT, check_chosen, chosen_file, write_chosen

PIPELINE_PACKAGE_NAME = "fpnunet-pipeline-package"
PIPELINE_PACKAGE_VERSION = 1
MODELS_DIR = "models"
_MODEL_RE = re.compile(r"^models/(?P<model>[A-Za-z0-9][A-Za-z0-9_.+-]*)\.zip$")


def model_member(model: str) -> str:
    """``models/<model>.zip``: a member's model package inside the pipeline package."""
    return f"{MODELS_DIR}/{model}.zip"


def package_format(zip_path: str | os.PathLike) -> str | None:
    """The manifest's format name (``None`` when the zip has no readable manifest)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            fmt = json.loads(zf.read(MANIFEST_FILE)).get("format")
    except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile):
        return None
    return fmt.get("name") if isinstance(fmt, dict) else None


def is_pipeline_package(zip_path: str | os.PathLike) -> bool:
    return package_format(zip_path) == PIPELINE_PACKAGE_NAME


# ----------------------------------------------------------------------------- export
def write_pipeline_package(out_zip: Path, dataset: str, choice: Mapping[str, Any], text: str,
                           model_zips: Mapping[str, bytes], identifiers: Iterable[str] = ()) -> Path:
    """Write the choice, its text and one model package per member (``{model folder: zip bytes}``)
    into ``out_zip`` atomically; a choice naming a case or patient of ``identifiers`` writes nothing."""
    check_chosen(choice, CHOSEN_FILE)
    wanted = sorted(m["model_folder"] for m in choice["members"])
    if sorted(model_zips) != wanted:
        raise FPNError(f"{out_zip}: the model packages {sorted(model_zips)} are not the chosen members {wanted}")
    members = {CHOSEN_FILE: json.dumps(dict(choice), indent=2).encode() + b"\n", CHOSEN_TEXT: text.encode(),
               **{model_member(m): data for m, data in model_zips.items()}}
    ids = [i for i in identifiers if len(i) >= 3]
    for name in (CHOSEN_FILE, CHOSEN_TEXT):  # the model packages checked themselves when they were written
        if names_found(members[name], ids):
            raise FPNError(f"{out_zip}: refusing to export: {name} would carry case or patient names; nothing written")
    manifest = {"format": {"name": PIPELINE_PACKAGE_NAME, "version": PIPELINE_PACKAGE_VERSION}, "dataset": dataset,
                "models": wanted, "files": {n: sha256_bytes(d) for n, d in sorted(members.items())}}
    with atomic_path(out_zip, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for name, data in [(MANIFEST_FILE, json.dumps(manifest, indent=2).encode() + b"\n"), *sorted(members.items())]:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)
    return out_zip


# ----------------------------------------------------------------------------- install
def _refuse(zip_path: Path, name: str, why: str) -> FPNError:
    return FPNError(f"{zip_path}: refused: {name!r} {why}; nothing installed")


def _read_manifest(zip_path: Path, zf: zipfile.ZipFile) -> dict[str, Any]:
    try:
        manifest = json.loads(zf.read(MANIFEST_FILE))
    except (KeyError, ValueError) as exc:
        raise FPNError(f"{zip_path}: no readable {MANIFEST_FILE} ({exc})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if not isinstance(fmt, dict) or fmt.get("name") != PIPELINE_PACKAGE_NAME:
        raise FPNError(f"{zip_path}: not an fpnunet pipeline package ({MANIFEST_FILE} names format {fmt!r})")
    if not isinstance(fmt.get("version"), int) or not 1 <= fmt["version"] <= PIPELINE_PACKAGE_VERSION:
        raise FPNError(f"{zip_path}: pipeline package format version {fmt.get('version')!r} is not one this "
                       f"fpnunet reads (1..{PIPELINE_PACKAGE_VERSION}); update fpnunet on this site")
    dataset, files = manifest.get("dataset"), manifest.get("files")
    if not isinstance(dataset, str) or not dataset or "/" in dataset or "\\" in dataset or dataset.startswith("."):
        raise FPNError(f"{zip_path}: {MANIFEST_FILE}: dataset {dataset!r} is not a folder name")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise FPNError(f"{zip_path}: {MANIFEST_FILE} has no 'files' table of SHA-256 sums")
    return manifest


def _members(zip_path: Path, zf: zipfile.ZipFile, expected: Mapping[str, str]) -> dict[str, bytes]:
    """Every member but the manifest, its name, kind and SHA-256 checked."""
    out: dict[str, bytes] = {}
    for info in zf.infolist():
        name = info.filename
        if name == MANIFEST_FILE:
            continue
        mode = info.external_attr >> 16
        if name not in (CHOSEN_FILE, CHOSEN_TEXT) and not _MODEL_RE.match(name):
            raise _refuse(zip_path, name, "is not a file a pipeline package holds")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG) or mode & 0o111:
            raise _refuse(zip_path, name, "is a link, not a plain file, or marked executable")
        if name in out:
            raise _refuse(zip_path, name, "appears twice")
        if name not in expected:
            raise _refuse(zip_path, name, f"is not listed in {MANIFEST_FILE}")
        if info.file_size > MAX_MEMBER_BYTES:
            raise _refuse(zip_path, name, f"is larger than {MAX_MEMBER_BYTES // 1024**3} GiB")
        data = zf.read(info)
        if hashlib.sha256(data).hexdigest() != expected[name]:
            raise _refuse(zip_path, name, f"does not match its SHA-256 in {MANIFEST_FILE} (changed after export)")
        out[name] = data
    missing = sorted(set(expected) - set(out))
    if missing:
        raise FPNError(f"{zip_path}: refused: {MANIFEST_FILE} lists {missing[0]!r}, which the zip lacks; "
                       "nothing installed")
    return out


def install_pipeline(zip_path: str | os.PathLike, results_root: Path, overwrite: bool = False) -> Path:
    """Install every member model and the choice into ``results_root/<dataset>/``; returns that folder."""
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            manifest = _read_manifest(zip_path, zf)
            members = _members(zip_path, zf, manifest["files"])
    except (zipfile.BadZipFile, OSError) as exc:
        raise FPNError(f"{zip_path}: not a readable zip file ({exc})") from None
    for name in (CHOSEN_FILE, CHOSEN_TEXT):
        if name not in members:
            raise FPNError(f"{zip_path}: refused: the package has no {name}; nothing installed")
    try:
        choice = json.loads(members[CHOSEN_FILE])
    except ValueError as exc:
        raise _refuse(zip_path, CHOSEN_FILE, f"is not valid JSON ({exc})") from None
    check_chosen(choice, f"{zip_path}: {CHOSEN_FILE}")
    models = sorted(m["model_folder"] for m in choice["members"])
    packaged = sorted(_MODEL_RE.match(n).group("model") for n in members if _MODEL_RE.match(n))  # type: ignore[union-attr]
    if models != packaged:
        raise FPNError(f"{zip_path}: refused: {CHOSEN_FILE} names the models {models}, the package holds "
                       f"{packaged}; nothing installed")
    dataset_dir = results_root / manifest["dataset"]
    clashes = [m for m in models if (dataset_dir / m).exists()] + ([CHOSEN_FILE] if chosen_file(dataset_dir).exists()
                                                                   else [])
    if clashes and not overwrite:
        raise FPNError(f"{dataset_dir / clashes[0]}: already installed; pass --overwrite to replace it")
    dataset_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pipeline.installing-", dir=dataset_dir))
    try:
        for model in models:
            inner = staging / f"{model}.zip"
            inner.write_bytes(members[model_member(model)])
            installed = install_package(inner, staging / "root", name=model)
            if installed.parent.name != manifest["dataset"]:
                raise FPNError(f"{zip_path}: refused: {model_member(model)} is a model of {installed.parent.name}, "
                               f"not of {manifest['dataset']}; nothing installed")
        for model in models:  # every check passed: move the models in, the choice last
            target = dataset_dir / model
            if target.exists():
                os.replace(target, staging / f"{model}.replaced")
            os.replace(staging / "root" / manifest["dataset"] / model, target)
        write_chosen(dataset_dir, {k: v for k, v in choice.items() if k != "version"},
                     members[CHOSEN_TEXT].decode("utf-8", errors="replace"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataset_dir
