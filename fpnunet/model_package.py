"""The model package: one ``.zip`` that hands a trained model folder to another site.

The one owner of the package format (docs/sharing.md)::

    manifest.json                 {"format": {"name": "fpnunet-model-package", "version": 1}, "model",
                                  "dataset", "checkpoint", "folds", "files": {PATH: SHA-256}}
    MODEL_CARD.md  model_card.json   the model card (:mod:`fpnunet.model_card`)
    plans.json  dataset.json      the plan; dataset.json without patients, visits or case names
    <other>.json                  every other JSON file of the model folder (calibration,
                                  post-processing, ...) that names no case or patient
    fold_K/network.json           the checkpoint's network spec (name, kwargs, channels, outputs)
    fold_K/weights.safetensors    the fold's weights (safetensors: data, never a pickle)
    model.onnx                    optional (fpn_export_model --onnx)

:func:`install_package` refuses, with one line naming the member, anything outside the package's
folder (absolute paths, ``..``, links), anything executable or pickled (by name or by its bytes),
a file of a kind the format does not have, a file whose SHA-256 differs from the manifest or that
the manifest does not list, and a format version it cannot read. It extracts into a temporary
folder beside the target, checks, converts each fold's safetensors back into the checkpoint the
predictor reads (:mod:`fpnunet.checkpoint`), then renames: nothing is ever half-installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from fpnunet.atomic import atomic_path, load_json
from fpnunet.errors import FPNError
from fpnunet.preprocessed_dataset import PLANS_FILE
from fpnunet.results_layout import (
    DATASET_FILE,
    checkpoint_name,
    fold_checkpoint,
    fold_folder_name,
    list_folds,
)

PACKAGE_NAME = "fpnunet-model-package"
PACKAGE_VERSION = 1
MANIFEST_FILE = "manifest.json"
CARD_FILE = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
WEIGHTS_FILE = "weights.safetensors"
SPEC_FILE = "network.json"
ONNX_FILE = "model.onnx"
ALLOWED_SUFFIXES = (".json", ".md", ".safetensors", ".onnx")
PICKLE_SUFFIXES = (".pth", ".pt", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
DATASET_KEYS = ("name", "channel_names", "labels", "file_ending", "projection_axis", "enface_modalities", "colors",
                "import")
"""The keys of dataset.json a package carries; ``patients`` and ``visits`` (case names) never travel."""
SKIPPED_JSON = ("splits_final.json",)
"""Case lists: never packaged, whatever they contain."""
MAX_MEMBER_BYTES = 8 * 1024**3
_CHUNK = 1 << 20


# ----------------------------------------------------------------------------- small helpers
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fold_member(fold: str, name: str) -> str:
    """``fold_0/weights.safetensors``: a fold's member name in the package."""
    return f"{fold_folder_name(fold)}/{name}"


def model_files(model_dir: Path) -> list[Path]:
    """The top-level JSON files of a model folder a package carries generically (not the plan, not
    dataset.json, not a case list, not the card or the manifest, which the package writes itself)."""
    own = {PLANS_FILE, DATASET_FILE, MANIFEST_FILE, CARD_JSON, *SKIPPED_JSON}
    return [p for p in sorted(model_dir.glob("*.json")) if p.is_file() and p.name not in own]


def shareable_dataset_json(meta: Mapping[str, Any]) -> dict[str, Any]:
    """dataset.json reduced to :data:`DATASET_KEYS` (no patients, no visits)."""
    return {k: meta[k] for k in DATASET_KEYS if k in meta}


def names_found(data: bytes, identifiers: Iterable[str]) -> list[str]:
    """The ``identifiers`` that occur in ``data`` (case-sensitive bytes search)."""
    return sorted({i for i in identifiers if i and i.encode() in data})


def looks_pickled(data: bytes) -> bool:
    """Whether ``data`` starts like a pickle (protocol 2-5) or a torch checkpoint (a zip holding one)."""
    if len(data) >= 2 and data[0] == 0x80 and 1 <= data[1] <= 5:
        return True
    return data[:4] == b"PK\x03\x04"  # torch.save's zip (data.pkl) or any nested archive


# ----------------------------------------------------------------------------- export
def write_package(out_zip: Path, members: Mapping[str, bytes], meta: Mapping[str, Any],
                  identifiers: Iterable[str] = ()) -> Path:
    """Write ``members`` (package path -> bytes) and their manifest into ``out_zip`` atomically.

    ``meta`` goes into the manifest (model, dataset, checkpoint, folds). Any member whose bytes hold
    one of ``identifiers`` (case names, patient ids) is an :class:`FPNError`: nothing is written.
    """
    ids = [i for i in identifiers if len(i) >= 3]
    for name, data in members.items():
        found = names_found(data, ids) + names_found(name.encode(), ids)
        if found:
            raise FPNError(f"{out_zip}: refusing to export: {name} would carry case or patient names "
                           f"({len(found)} found); nothing written")
    manifest = {"format": {"name": PACKAGE_NAME, "version": PACKAGE_VERSION}, **meta,
                "files": {name: sha256_bytes(data) for name, data in sorted(members.items())}}
    with atomic_path(out_zip, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in [(MANIFEST_FILE, json.dumps(manifest, indent=2).encode() + b"\n"),
                           *sorted(members.items())]:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return out_zip


def weights_bytes(state_dict: Mapping[str, Any]) -> bytes:
    """A state dict as safetensors bytes (each tensor copied contiguous: shared storage is not allowed)."""
    from safetensors.torch import save  # lazy: start-up time

    return save({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()})


def fold_members(model_dir: Path, folds: list[str], checkpoint: str) -> tuple[dict[str, bytes], dict[str, int]]:
    """``fold_K/network.json`` and ``fold_K/weights.safetensors`` per fold, and each fold's epoch."""
    from fpnunet.checkpoint import load_checkpoint  # lazy: start-up time

    out: dict[str, bytes] = {}
    epochs: dict[str, int] = {}
    for fold in folds:
        ckpt = load_checkpoint(fold_checkpoint(model_dir, fold, checkpoint))
        state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
        spec = {"network": ckpt["network"], "in_channels": int(ckpt["in_channels"]),
                "num_outputs": int(ckpt["num_outputs"]), "configuration": ckpt.get("configuration"),
                "epoch": int(ckpt.get("epoch", 0) or 0)}
        out[fold_member(fold, SPEC_FILE)] = json.dumps(spec, indent=2).encode() + b"\n"
        out[fold_member(fold, WEIGHTS_FILE)] = weights_bytes(state)
        epochs[fold] = spec["epoch"]
    return out, epochs


def export_folds(model_dir: Path, folds: list[str] | None) -> list[str]:
    """The folds to export: ``folds`` or every numbered fold (``all`` when it is the only one)."""
    present = list_folds(model_dir)
    if folds:
        missing = [f for f in folds if f not in present]
        if missing:
            raise FPNError(f"{model_dir}: fold(s) {', '.join(missing)} not found; present: {present or 'none'}")
        return list(folds)
    numbered = [f for f in present if f.isdigit()]
    if not (numbered or present):
        raise FPNError(f"{model_dir}: no fold_* folders: not a trained model folder")
    return numbered or present


# ----------------------------------------------------------------------------- install: checks
def _refuse(zip_path: Path, name: str, why: str) -> FPNError:
    return FPNError(f"{zip_path}: refused: {name!r} {why}; nothing installed")


def check_member(zip_path: Path, info: zipfile.ZipInfo) -> str | None:
    """The member's safe relative path, ``None`` for a directory entry; :class:`FPNError` otherwise."""
    name = info.filename
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise _refuse(zip_path, name, "is an absolute path or uses backslashes (outside the package's folder)")
    parts = PurePosixPath(name).parts
    if any(p in ("..", ".", "") for p in name.rstrip("/").split("/")):
        raise _refuse(zip_path, name, "escapes the package's folder ('..' in its path)")
    if kind == stat.S_IFLNK:
        raise _refuse(zip_path, name, "is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise _refuse(zip_path, name, "is not a plain file")
    if info.is_dir():
        return None
    if mode & 0o111:
        raise _refuse(zip_path, name, "is marked executable")
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise _refuse(zip_path, name, f"is a pickle-based file ({suffix}): packages carry weights as safetensors only")
    if suffix not in ALLOWED_SUFFIXES:
        raise _refuse(zip_path, name, f"is not a kind of file a model package holds ({', '.join(ALLOWED_SUFFIXES)})")
    if len(parts) > 2 or (len(parts) == 2 and not parts[0].startswith("fold_")):
        raise _refuse(zip_path, name, "is not where a model package keeps its files")
    if info.file_size > MAX_MEMBER_BYTES:
        raise _refuse(zip_path, name, f"is larger than {MAX_MEMBER_BYTES // 1024**3} GiB")
    return name


def check_content(zip_path: Path, name: str, head: bytes) -> None:
    """Refuse pickles and programs by their first bytes, whatever the member's name."""
    if looks_pickled(head):
        raise _refuse(zip_path, name, "holds a pickle or an archive (its bytes), which can run code")
    if head[:2] == b"#!" or head[:4] == b"\x7fELF" or head[:2] == b"MZ":
        raise _refuse(zip_path, name, "holds a program (its bytes)")


def read_manifest(zip_path: Path, zf: zipfile.ZipFile) -> dict[str, Any]:
    """The manifest, checked for a format this fpnunet reads."""
    try:
        manifest = json.loads(zf.read(MANIFEST_FILE))
    except KeyError:
        raise FPNError(f"{zip_path}: not an fpnunet model package (no {MANIFEST_FILE})") from None
    except ValueError as exc:
        raise FPNError(f"{zip_path}: {MANIFEST_FILE} is not valid JSON ({exc})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if not isinstance(fmt, dict) or fmt.get("name") != PACKAGE_NAME:
        raise FPNError(f"{zip_path}: not an fpnunet model package ({MANIFEST_FILE} names format {fmt!r})")
    version = fmt.get("version")
    if not isinstance(version, int) or not 1 <= version <= PACKAGE_VERSION:
        raise FPNError(f"{zip_path}: package format version {version!r} is not one this fpnunet reads "
                       f"(1..{PACKAGE_VERSION}); update fpnunet on this site")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise FPNError(f"{zip_path}: {MANIFEST_FILE} has no 'files' table of SHA-256 sums")
    for key in ("model", "dataset"):
        value = manifest.get(key)
        if not isinstance(value, str) or not value or "/" in value or "\\" in value or value.startswith("."):
            raise FPNError(f"{zip_path}: {MANIFEST_FILE}: {key} {value!r} is not a folder name")
    return manifest


# ----------------------------------------------------------------------------- install
def _extract(zip_path: Path, zf: zipfile.ZipFile, manifest: dict[str, Any], dest: Path) -> list[str]:
    """Copy every member into ``dest`` checking names, kinds, bytes and SHA-256; the member names."""
    expected: dict[str, str] = manifest["files"]
    seen: list[str] = []
    for info in zf.infolist():
        name = check_member(zip_path, info)
        if name is None or name == MANIFEST_FILE:
            continue
        if name in seen:
            raise _refuse(zip_path, name, "appears twice")
        if name not in expected:
            raise _refuse(zip_path, name, f"is not listed in {MANIFEST_FILE}")
        seen.append(name)
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with zf.open(info) as src, open(target, "wb") as out:
            head = src.read(_CHUNK)
            check_content(zip_path, name, head)
            chunk = head
            while chunk:
                digest.update(chunk)
                out.write(chunk)
                chunk = src.read(_CHUNK)
        if digest.hexdigest() != expected[name]:
            raise _refuse(zip_path, name, f"does not match its SHA-256 in {MANIFEST_FILE} (changed after export)")
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise FPNError(f"{zip_path}: refused: {MANIFEST_FILE} lists {missing[0]!r}, which the zip lacks; "
                       "nothing installed")
    return seen


def _to_checkpoints(zip_path: Path, dest: Path, folds: Iterable[str]) -> None:
    """Each fold's network.json + weights.safetensors -> the checkpoint the predictor reads."""
    from safetensors import SafetensorError  # lazy: start-up time
    from safetensors.torch import load_file

    from fpnunet.checkpoint import model_spec, save_checkpoint  # lazy: start-up time

    for fold in folds:
        spec_path, weights_path = dest / fold_member(fold, SPEC_FILE), dest / fold_member(fold, WEIGHTS_FILE)
        try:
            spec = load_json(spec_path)
            state = load_file(weights_path)
            net = spec["network"]
            head = model_spec(str(net["name"]), dict(net.get("kwargs") or {}), int(spec["in_channels"]),
                              int(spec["num_outputs"]), str(spec.get("configuration") or net["name"]))
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            raise FPNError(f"{zip_path}: refused: fold {fold}: unreadable network spec or weights ({exc}); "
                           "nothing installed") from None
        save_checkpoint({**head, "state_dict": state, "epoch": int(spec.get("epoch", 0))},
                        dest / fold_folder_name(fold) / checkpoint_name("final"))
        spec_path.unlink()
        weights_path.unlink()


def install_package(zip_path: str | os.PathLike, results_root: Path, overwrite: bool = False,
                    name: str | None = None) -> Path:
    """Install ``zip_path`` as ``results_root/<dataset>/<model>`` (``name`` renames the model folder)."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise FPNError(f"{zip_path}: model package not found")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FPNError(f"{zip_path}: not a zip file ({exc})") from None
    with zf:
        manifest = read_manifest(zip_path, zf)
        model = name or manifest["model"]
        if "/" in model or model.startswith(".") or not model:
            raise FPNError(f"--name {model!r}: must be a plain folder name")
        target = results_root / manifest["dataset"] / model
        if target.exists() and not overwrite:
            raise FPNError(f"{target}: already installed; pass --overwrite to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{model}.installing-", dir=target.parent))
        try:
            names = _extract(zip_path, zf, manifest, staging)
            for member in names:
                if member.endswith(".json"):
                    try:
                        load_json(staging / member)
                    except ValueError as exc:
                        raise _refuse(zip_path, member, f"is not valid JSON ({exc})") from None
            for required in (PLANS_FILE, DATASET_FILE, CARD_JSON):
                if required not in names:
                    raise FPNError(f"{zip_path}: refused: the package has no {required}; nothing installed")
            folds = [f for f in manifest.get("folds", []) if isinstance(f, str)]
            if not folds or any(fold_member(f, WEIGHTS_FILE) not in names for f in folds):
                raise FPNError(f"{zip_path}: refused: the manifest's folds {folds} do not all have weights; "
                               "nothing installed")
            _to_checkpoints(zip_path, staging, folds)
            (staging / MANIFEST_FILE).write_bytes(zf.read(MANIFEST_FILE))
            if target.exists():
                aside = Path(tempfile.mkdtemp(prefix=f".{model}.replaced-", dir=target.parent))
                os.replace(target, aside / model)
                os.replace(staging, target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- the installed card
def read_card(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The model folder's ``model_card.json``, or ``None`` (a folder trained here has none)."""
    path = Path(model_dir) / CARD_JSON
    if not path.is_file():
        return None
    try:
        card = load_json(path)
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None
