"""En-face modalities as network input channels: ``fpn_train --enface-inputs MOD [MOD ...]``.

A network that takes the plan's en-face modalities (SLO, FAF, ...) as extra input channels
(``omnia``: its ``enface_inputs`` kwarg, a plan value in ``plans.json``, ``[]`` by default) gets
them here, once, from the plan or the command line:

* no flag: the configuration's ``enface_inputs`` (plans.json);
* ``--enface-inputs SLO FAF``: these modalities, in this channel order (each one of the dataset's
  ``enface_modalities``); ``all``: every modality of the dataset; ``none``: the volume alone.

The resolved list becomes the network kwarg ``enface_inputs`` (so the checkpoint's network spec,
and with it the model folder, records what prediction must read) and the model folder name gets
``__enf-SLO-FAF`` (one folder per choice). Every training and validation case must have its
preprocessed ``CASE_<MOD>.npy``: a missing one is a one-line error naming the case, before any
folder is touched. Nothing here imports torch.
"""
from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path

from fpnunet.errors import FPNError
from fpnunet.plans.plan import Configuration, NetworkSpec, Plan
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.results_layout import enface_suffix

KWARG = "enface_inputs"
"""The network kwarg (and plans.json key) holding the modalities."""
FLAG = "--enface-inputs"


def check_flag(values: list[str] | None) -> None:
    """Reject a malformed ``--enface-inputs`` before anything is read."""
    if values is None:
        return
    lowered = [v.lower() for v in values]
    if ("none" in lowered or "all" in lowered) and len(values) > 1:
        raise FPNError(f"{FLAG} {' '.join(values)}: 'none' and 'all' stand alone (or name the modalities, "
                       "e.g. SLO FAF)")
    if len(set(values)) != len(values):
        raise FPNError(f"{FLAG} {' '.join(values)}: a modality is named twice")


def takes_enface_inputs(network_cls: type) -> bool:
    """Whether the registered network class has the ``enface_inputs`` kwarg."""
    return KWARG in inspect.signature(network_cls.__init__).parameters


def resolve(values: list[str] | None, plan: Plan, config: Configuration, trainer: str, network_cls: type
            ) -> Configuration:
    """The configuration with its network's ``enface_inputs`` resolved (see the module docstring)."""
    check_flag(values)
    kwargs = dict(config.network.kwargs)
    if values is None:
        planned = kwargs.get(KWARG) or []
        mods, where = list(planned), f"plans.json {config.network.name} kwargs {KWARG}"
    elif values[0].lower() == "none":
        mods, where = [], FLAG
    elif values[0].lower() == "all":
        mods, where = list(plan.enface_modalities), f"{FLAG} all"
        if not mods:
            raise FPNError(f"{FLAG} all: dataset {plan.dataset_name} has no en-face modalities (dataset.json "
                           "'enface_modalities' and enfaceTr/CASE_MOD files)")
    else:
        mods, where = list(values), FLAG
    if mods:
        if not takes_enface_inputs(network_cls):
            raise FPNError(f"{where} {' '.join(mods)}: network {config.network.name!r} takes the OCT volume only; "
                           "en-face input channels are for omnia (-c omnia)")
        if trainer != "supervised":
            raise FPNError(f"{where} {' '.join(mods)}: not with --trainer {trainer} (it has its own en-face branch)")
        unknown = [m for m in mods if m not in plan.enface_modalities]
        if unknown:
            raise FPNError(f"{where}: {', '.join(unknown)} is not an en-face modality of dataset {plan.dataset_name} "
                           f"(it has {', '.join(plan.enface_modalities) or 'none'}: dataset.json 'enface_modalities')")
    if takes_enface_inputs(network_cls):
        kwargs[KWARG] = mods
    return replace(config, network=NetworkSpec(config.network.name, kwargs))


def modalities_of(config: Configuration) -> list[str]:
    """The en-face input modalities of a resolved configuration."""
    return list(config.network.kwargs.get(KWARG) or [])


def folder_suffix(modalities: list[str]) -> str:
    """``__enf-SLO-FAF`` for a network with en-face input channels, else ``""``."""
    return enface_suffix(modalities)


def check_cases(data_dir: Path, cases: list[str], modalities: list[str]) -> None:
    """Every case has its preprocessed ``CASE_<MOD>.npy``; else a one-line error naming the case."""
    for case in cases:
        for mod in modalities:
            path = PreprocessedDataset(data_dir).enface_file(case, mod)
            if not path.is_file():
                raise FPNError(missing_message(path, case, mod, modalities))


def missing_message(path: Path, case: str, mod: str, modalities: list[str]) -> str:
    return (f"{path}: case {case!r} has no preprocessed {mod} image, which the network takes as an input channel "
            f"({KWARG} {', '.join(modalities)}); add enfaceTr/{case}_{mod} to the raw dataset and re-run "
            "fpn_plan_and_preprocess, or train without it (--enface-inputs none)")
