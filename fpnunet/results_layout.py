"""The results layout: model folders, fold folders, checkpoint names, the fold lock, temp files.

The one owner of ``$FPN_RESULTS/DatasetXXX/`` (docs/layout.md)::

    {config}__lf{fraction:g}__{tag}/      a model folder (tag: scratch, ssl-FAF, ssl-SLO,
                                          pretrained-<stem>-<hash>)
      plans.json  dataset.json            everything prediction needs (data, never code)
      fold_{k}/  checkpoint_{latest,best,final}.pth  training_log.csv  progress.png  command.txt
                 pretrained_from.json  validation/  .fpn_lock (while a run holds the fold)
    pretrain__{config}__{target}/fold_all/   a pretraining run

Training, pretraining, prediction and cross-validation all find folders through this module.
:class:`FoldLock` gives one run a fold folder for its lifetime: a second run on the same fold is
refused naming the first one's PID; the lock of a process that died (``kill -9``) is taken over.
:func:`clean_temp_files` removes what killed runs left behind (``.checkpoint_latest.pth.XXXX.pth``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from fpnunet.errors import FPNError
from fpnunet.preprocessed_dataset import PLANS_FILE
from fpnunet.raw_dataset import DATASET_FILE as RAW_DATASET_FILE

LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_best.pth"
FINAL = "checkpoint_final.pth"
CHECKPOINTS = ("final", "best", "latest")
DATASET_FILE = RAW_DATASET_FILE  # the copy of the raw dataset.json (fpnunet.raw_dataset owns the name)
MODEL_FILES = (PLANS_FILE, DATASET_FILE)
COMMAND_FILE = "command.txt"
PRETRAINED_FILE = "pretrained_from.json"
VALIDATION_DIR = "validation"
LOCK_FILE = ".fpn_lock"
ASIDE_DIR = ".fpn_overwritten"
"""Where ``--overwrite`` moves the earlier run until the new one has saved its first checkpoint."""
PRETRAIN_TARGETS = ("FAF", "SLO")
_FOLD_RE = re.compile(r"^fold_(\d+|all)$")


# ----------------------------------------------------------------------------- names
def checkpoint_name(kind: str) -> str:
    """``final`` -> ``checkpoint_final.pth`` (``final``, ``best`` or ``latest``)."""
    if kind not in CHECKPOINTS:
        raise FPNError(f"unknown checkpoint {kind!r}: expected one of {', '.join(CHECKPOINTS)}")
    return f"checkpoint_{kind}.pth"


def model_folder_name(config: str, label_fraction: float, tag: str) -> str:
    """``fpn__lf0.05__ssl-FAF`` (``{config}__lf{fraction:g}__{tag}``)."""
    return f"{config}__lf{label_fraction:g}__{tag}"


SCRATCH_TAG = "scratch"
DEFAULT_TRAINER = "supervised"


def ssl_tag(target: str) -> str:
    """``ssl-FAF``: the tag of a run fine-tuned from the dataset's ``target`` pretraining run."""
    return f"ssl-{target}"


def enface_suffix(modalities: list[str] | tuple[str, ...]) -> str:
    """``__enf-SLO-FAF`` for a network with en-face input channels, else ``""``."""
    return f"__enf-{'-'.join(modalities)}" if modalities else ""


def trainer_suffix(trainer: str) -> str:
    """``__cmc``: added to the model folder of any trainer but the default (``supervised``)."""
    return "" if trainer == DEFAULT_TRAINER else f"__{trainer}"


def full_model_folder_name(config: str, label_fraction: float, tag: str, enface: list[str] | tuple[str, ...] = (),
                           trainer: str = DEFAULT_TRAINER) -> str:
    """A run's model folder: ``fpn__lf1__scratch``, ``omnia__lf1__scratch__enf-SLO-FAF``, ``fpn__lf1__ssl-FAF__cmc``."""
    return model_folder_name(config, label_fraction, tag) + enface_suffix(enface) + trainer_suffix(trainer)


def fold_folder_name(fold: int | str) -> str:
    return f"fold_{fold}"


def pretraining_run_name(config: str, target: str) -> str:
    return f"pretrain__{config}__{target}"


def pretraining_checkpoint(results_dataset_dir: str | Path, config: str, target: str) -> Path:
    """Where the dataset's pretraining run for ``target`` keeps its final checkpoint."""
    return Path(results_dataset_dir) / pretraining_run_name(config, target) / "fold_all" / FINAL


def pretrained_tag(path: str | Path) -> str:
    """The tag of a run fine-tuned from checkpoint ``path``: ``pretrained-<stem>-<8 hex of its
    absolute path>``, so runs from different checkpoints get different model folders."""
    path = Path(path).absolute()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name.removesuffix(".pth"))[:40] or "checkpoint"
    return f"pretrained-{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


# ----------------------------------------------------------------------------- look-ups
def list_folds(model_dir: str | os.PathLike) -> list[str]:
    """Names of the fold folders in a model folder (``["0", "1", ..., "all"]``), numeric first."""
    model_dir = Path(model_dir)
    found = [m.group(1) for p in model_dir.iterdir() if p.is_dir() and (m := _FOLD_RE.match(p.name))]
    return sorted(found, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def model_folders(results_dataset_dir: str | os.PathLike, numeric_folds: bool = True) -> list[Path]:
    """Model folders of a results dataset folder: sub-folders holding at least one ``fold_<k>``
    (``numeric_folds=False``: ``fold_all`` counts too)."""
    root = Path(results_dataset_dir)
    if not root.is_dir():
        return []
    ok = (lambda f: f.isdigit()) if numeric_folds else (lambda f: True)  # noqa: E731
    return [p for p in sorted(root.iterdir()) if p.is_dir() and any(ok(f) for f in list_folds(p))]


def find_model_folder(results_dataset_dir: str | os.PathLike, model: str | None = None,
                      network: str | None = None) -> Path:
    """The model folder ``model``; else the only ``<network>__*`` one (``network`` given), else the
    only model folder with ``fold_<k>`` sub-folders. :class:`FPNError` listing what is there otherwise."""
    root = Path(results_dataset_dir)
    if not root.is_dir():
        raise FPNError(f"{root}: no trained models for this dataset")
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    if model is not None:
        folder = root / model
        if not folder.is_dir():
            raise FPNError(f"{folder}: model folder not found; present: {present or 'none'}")
        return folder
    if network is not None:
        hits = [root / n for n in present if n.startswith(f"{network}__")]
        if not hits:
            raise FPNError(f"{root}: no model folder for network {network!r} (expected {network}__*); "
                           f"present: {present or 'none'}")
        if len(hits) > 1:
            raise FPNError(f"{root}: several model folders for network {network!r}: {[p.name for p in hits]}; "
                           "choose one with --model NAME or -m MODEL_DIR")
        return hits[0]
    found = model_folders(root)
    if not found:
        raise FPNError(f"{root}: no model folder with fold_<k> sub-folders found (train a fold first)")
    if len(found) > 1:
        raise FPNError(f"{root}: several model folders, name one with --model: {', '.join(p.name for p in found)}")
    return found[0]


def fold_checkpoint(model_dir: str | Path, fold: str | int, kind: str = "final") -> Path:
    """``model_dir/fold_<fold>/checkpoint_<kind>.pth``; :class:`FPNError` naming what is missing."""
    fold_dir = Path(model_dir) / fold_folder_name(fold)
    if not fold_dir.is_dir():
        raise FPNError(f"{fold_dir}: fold {fold} was asked for but this folder does not exist")
    path = fold_dir / checkpoint_name(kind)
    if not path.is_file():
        present = sorted(p.name for p in fold_dir.glob("checkpoint_*.pth"))
        raise FPNError(f"{path}: checkpoint not found (present: {present or 'none'})")
    return path


def run_state(fold_dir: Path) -> str:
    """``"empty"``, ``"unfinished"`` (a latest checkpoint only) or ``"finished"`` (a final one)."""
    if (fold_dir / FINAL).is_file():
        return "finished"
    if (fold_dir / LATEST).is_file():
        return "unfinished"
    return "empty"


# ----------------------------------------------------------------------------- temp files
def clean_temp_files(fold_dir: Path, subdirs: tuple[str, ...] = (VALIDATION_DIR, "reconstructions")) -> list[Path]:
    """Delete the temporary files atomic writes of killed runs left (``.NAME.XXXX.ext``) in
    ``fold_dir`` and its ``subdirs``; never the lock. Call only while holding the fold's lock."""
    removed: list[Path] = []
    for folder in (fold_dir, *(fold_dir / s for s in subdirs)):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and not p.name.startswith(LOCK_FILE) and p.is_file() and p.name.count(".") >= 3:
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# ----------------------------------------------------------------------------- the fold lock
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class FoldLock:
    """An ``O_EXCL`` lock file ``fold_dir/.fpn_lock`` holding the owner's PID, host and command.

    ``acquire`` refuses (``FPNError`` naming the PID) while the owner is alive, and takes over the
    lock of a dead process on this host (a run killed with ``kill -9``). ``release`` deletes it;
    use it as a context manager.
    """

    def __init__(self, fold_dir: str | Path, program: str = "", name: str = LOCK_FILE) -> None:
        self.fold_dir = Path(fold_dir)
        self.path = self.fold_dir / name
        self.program = program
        self.held = False

    def live_owner(self) -> dict | None:
        """The record of the process holding this lock, when it is alive (and not this one)."""
        owner = self._read()
        if not owner:
            return None
        pid = int(owner.get("pid", 0) or 0)
        same_host = owner.get("host", socket.gethostname()) == socket.gethostname()
        if same_host and (pid == os.getpid() or not _pid_alive(pid)):
            return None
        return owner

    def _record(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join([self.program or Path(sys.argv[0]).name, *sys.argv[1:]])}

    def _read(self) -> dict | None:
        try:
            obj = json.loads(self.path.read_text())
            return obj if isinstance(obj, dict) else {}
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}

    def acquire(self) -> FoldLock:
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                fd = -1
            if fd < 0:
                owner = self._read()
                if owner is None:
                    continue  # released meanwhile
                pid = int(owner.get("pid", 0) or 0)
                same_host = owner.get("host", socket.gethostname()) == socket.gethostname()
                if pid == os.getpid() and same_host:
                    self.held = True
                    return self
                if not owner:  # being written right now, or garbage: give the writer a moment
                    time.sleep(0.2)
                    if self._read() == {}:
                        self._take_over(owner)
                    continue
                if not same_host or _pid_alive(pid):
                    where = "" if same_host else f" on host {owner.get('host')}"
                    raise FPNError(f"{self.fold_dir} is in use by another run (PID {pid}{where}, started "
                                   f"{owner.get('started', '?')}: {owner.get('command', '?')}); wait for it to "
                                   f"finish or stop it. If that process no longer exists, delete {self.path}")
                print(f"taking over the lock of {self.fold_dir} from PID {pid}, which is no longer running")
                self._take_over(owner)
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(self._record(), f)
            except OSError as exc:  # a full disk: no empty lock left behind, and the message names it
                self.path.unlink(missing_ok=True)
                raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from None
            self.held = True
            return self
        raise FPNError(f"{self.path}: could not take the lock of {self.fold_dir} (another run keeps taking it)")

    def _take_over(self, seen: dict) -> None:
        """Remove a stale lock, unless another run replaced it since we read it."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            now = json.loads(aside.read_text()) if aside.stat().st_size else {}
        except (ValueError, OSError):
            now = {}
        if now != seen and not self.path.exists():
            os.rename(aside, self.path)  # a live run's fresh lock: put it back
            return
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            owner = self._read()
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FoldLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
