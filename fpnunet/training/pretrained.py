"""Starting a training run from pretrained weights (``fpn_train --pretrained auto|none|PATH``).

* :func:`load_pretrained` copies every tensor of a checkpoint whose name and shape match the
  model's (the head too when its shape matches: a one-channel reconstruction head fits a
  one-foreground-class segmentation head), reports what it loaded, skipped and missed, and
  returns the :class:`LoadReport`.
* :func:`resolve_pretrained` turns the ``--pretrained`` choice into a folder tag and a path:
  ``none`` -> ``scratch``; ``PATH`` -> ``pretrained-<stem>-<hash>`` (one model folder per
  checkpoint); ``auto`` -> the dataset's pretraining run
  ``$FPN_RESULTS/DatasetXXX/pretrain__{config}__{FAF|SLO}/fold_all/checkpoint_final.pth`` (FAF
  first, then SLO) -> ``ssl-FAF`` / ``ssl-SLO``, or ``scratch`` when there is none.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpnunet.checkpoint import load_file, load_state_dict_file
from fpnunet.errors import FPNError
from fpnunet.results_layout import (  # noqa: F401
    PRETRAIN_TARGETS,
    SCRATCH_TAG,
    pretrained_tag,
    pretraining_checkpoint,
    ssl_tag,
)


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did. ``total`` counts the model's state-dict tensors."""

    path: str
    total: int
    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, list[int], list[int]]] = field(default_factory=list)
    """``(name, model shape, checkpoint shape)``."""
    missing: list[str] = field(default_factory=list)
    """In the model, not in the checkpoint (kept at their initial values)."""
    unexpected: list[str] = field(default_factory=list)
    """In the checkpoint, not in the model (ignored)."""

    @property
    def num_loaded(self) -> int:
        return len(self.loaded)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"num_loaded": self.num_loaded}

    def describe(self, limit: int = 20) -> str:
        lines = [f"pretrained weights {self.path}: loaded {self.num_loaded} of {self.total} tensors"]
        for title, items in (
            ("shape mismatch (kept initial values)", [f"{n}: model {m} vs checkpoint {c}"
                                                      for n, m, c in self.shape_mismatch]),
            ("missing from the checkpoint (kept initial values)", self.missing),
            ("in the checkpoint only (ignored)", self.unexpected),
        ):
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines += [f"    {item}" for item in items[:limit]]
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")
        return "\n".join(lines)


MIN_SHARE = 0.5
"""Below this share of the model's tensors loaded, a checkpoint is of another network: refused
unless a partial load is asked for (``--partial-load``)."""


def load_pretrained(model: nn.Module, path: str | Path, verbose: bool = True, network: str | None = None,
                    partial: bool = False) -> LoadReport:
    """Load the tensors of checkpoint ``path`` whose name and shape match ``model``'s.

    ``path`` is an fpnunet checkpoint or a plain state dict, loaded weights only
    (:func:`fpnunet.checkpoint.load_state_dict_file`). ``network``: the model's network name; an
    fpnunet checkpoint of another network, or one that fills fewer than half of the model's
    tensors, is refused unless ``partial``. Prints the report (unless ``verbose`` is false) and
    returns it. Not a single matching tensor is always an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FPNError(f"--pretrained {path}: file not found")
    source = load_state_dict_file(path)
    widen = getattr(model, "expand_pretrained", None)  # omnia with en-face channels: zero weights for them
    if callable(widen):
        source = widen(source)
    own = model.state_dict()
    report = LoadReport(path=str(path), total=len(own))
    matched: dict[str, torch.Tensor] = {}
    for name, tensor in own.items():
        if name not in source:
            report.missing.append(name)
        elif tuple(source[name].shape) != tuple(tensor.shape):
            report.shape_mismatch.append((name, list(tensor.shape), list(source[name].shape)))
        else:
            matched[name] = source[name]
            report.loaded.append(name)
    report.unexpected = [n for n in source if n not in own]
    if not matched:
        raise FPNError(f"--pretrained {path}: no tensor matches the model by name and shape "
                       f"({len(source)} in the file, {len(own)} in the model): is it a checkpoint of this network?")
    other = _network_of(path)
    if not partial and network is not None and other is not None and other != network:
        raise FPNError(f"--pretrained {path}: a checkpoint of network {other!r}, this run trains {network!r} "
                       f"(only {report.num_loaded} of {report.total} tensors would load); pass --partial-load to "
                       f"load the matching tensors anyway")
    if not partial and report.num_loaded < MIN_SHARE * report.total:
        raise FPNError(f"--pretrained {path}: only {report.num_loaded} of {report.total} tensors of the model match "
                       f"it by name and shape: is it a checkpoint of this network? Pass --partial-load to load "
                       f"them anyway")
    with torch.no_grad():
        for name, tensor in matched.items():
            own[name].copy_(tensor.to(own[name].dtype))
    if verbose:
        print(report.describe())
    return report


def _network_of(path: Path) -> str | None:
    """The network name an fpnunet checkpoint records (None for a plain state dict)."""
    try:
        obj = load_file(path)
    except FPNError:
        return None
    net = obj.get("network") if isinstance(obj, dict) else None
    return str(net.get("name")) if isinstance(net, dict) and net.get("name") else None


def resolve_pretrained(choice: str, results_dataset_dir: str | Path, config: str) -> tuple[str, Path | None, str]:
    """``(tag, checkpoint path or None, message)`` for ``--pretrained`` ``auto``, ``none`` or a PATH."""
    if choice == "none":
        return SCRATCH_TAG, None, "training from scratch (--pretrained none)"
    if choice == "auto":
        for target in PRETRAIN_TARGETS:
            path = pretraining_checkpoint(results_dataset_dir, config, target)
            if path.is_file():
                return ssl_tag(target), path, f"fine-tuning from the {target} pretraining run {path}"
        tried = ", ".join(str(pretraining_checkpoint(results_dataset_dir, config, t)) for t in PRETRAIN_TARGETS)
        return SCRATCH_TAG, None, f"training from scratch: no pretraining run found (looked for {tried})"
    path = Path(choice).expanduser()
    if not path.is_file():
        raise FPNError(f"--pretrained {choice}: no such file (expected auto, none or a checkpoint path)")
    path = path.absolute()
    # a checkpoint of a pretraining run (pretrain__CONFIG__TARGET/fold_all/...) keeps its ssl tag so
    # FAF- and SLO-initialised runs of a sweep get different model folders
    run = path.parent.parent.name if path.parent.name.startswith("fold_") else path.parent.name
    for target in PRETRAIN_TARGETS:
        if run.startswith("pretrain__") and run.endswith(f"__{target}"):
            return ssl_tag(target), path, f"fine-tuning from the {target} pretraining run {path}"
    return pretrained_tag(path), path, f"fine-tuning from {path}"
