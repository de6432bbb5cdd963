"""The one resolution of a run: :func:`build_run_config` (plan + trainer's overrides + flags).

::

    check_flags(flags)                                  # fpnunet.training.flags, before anything is read
    config = build_run_config(flags, "fpn_train")       # validated, frozen; no folder touched yet
    run(config, argv)                                   # fpnunet.training.run

A flag wins when it ``is not None`` (``--epochs 0`` is an error, not the plan's value); otherwise
the plan's :class:`~fpnunet.plans.plan.TrainingDefaults` (``pretrain_epochs``/``pretrain_lr`` for a
pretraining trainer), the trainer's loss/augmentation names and overrides, the configuration's
batch size and precision. The result is a :class:`~fpnunet.training.run_config.RunConfig`; below
this function nothing asks the plan for a training setting again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fpnunet import distributed as fdist
from fpnunet.errors import FPNError
from fpnunet.networks import network_class
from fpnunet.paths import preprocessed_root, raw_root, resolve_dataset, results_root
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.plans.training_params import override
from fpnunet.precision import resolve_cpu_precision
from fpnunet.preprocessed_dataset import PreprocessedDataset, plans_file
from fpnunet.raw_dataset import has_dataset_json, load_dataset_json
from fpnunet.results_layout import fold_folder_name, model_folder_name, pretraining_checkpoint
from fpnunet.training import enface_inputs
from fpnunet.training.flags import check_flags
from fpnunet.training.loader import default_num_workers
from fpnunet.training.pretrained import resolve_pretrained
from fpnunet.training.run_config import PRECISIONS, RunConfig
from fpnunet.training.splits import Split, apply_label_fraction, fold_cases, load_or_create_splits
from fpnunet.training.trainer import TRAINERS, Trainer

PRETRAIN_PROGRAM = "fpn_pretrain"


def find_preprocessed(dataset: str, config: str | None) -> tuple[str, Path, Plan, str, PreprocessedDataset]:
    """``(dataset name, preprocessed dir, plan, configuration name, its complete data folder)``."""
    name = resolve_dataset(dataset)
    pre_dir = preprocessed_root() / name
    hint = f"run fpn_plan_and_preprocess -d {dataset} first"
    if not plans_file(pre_dir).is_file():
        raise FPNError(f"dataset {name} is not planned and preprocessed ({plans_file(pre_dir)} is missing): {hint}")
    plan = Plan.load(plans_file(pre_dir))
    config_name = config or plan.default_configuration
    data_dir = pre_dir / plan.configuration(config_name).data_identifier
    if not data_dir.is_dir():
        raise FPNError(f"{data_dir}: no preprocessed data for configuration {config_name!r}: {hint}")
    cases = PreprocessedDataset.open(data_dir, f"rerun fpn_plan_and_preprocess -d {dataset}")
    return name, pre_dir, plan, config_name, cases


def resolve_precision(flag: str, configuration: Configuration, device: str) -> str:
    """``auto``: the plan's precision (bf16) on CUDA; on the CPU bf16 only where the CPU has native
    bf16 and a short cached probe finds it faster (:mod:`fpnunet.precision`), else fp32."""
    if flag != "auto":
        return flag
    planned = configuration.precision if configuration.precision in PRECISIONS else "bf16"
    if not device.startswith("cuda"):
        return resolve_cpu_precision(planned)[0]  # the reason is printed nowhere: errors must stay one line
    return planned


def _pick(flag: Any, default: Any) -> Any:
    return default if flag is None else flag


def build_run_config(flags: Any, program: str = "fpn_train") -> RunConfig:
    """The :class:`RunConfig` of ``flags`` (fpn_train's or fpn_pretrain's parsed namespace)."""
    check_flags(flags)
    pretraining = program == PRETRAIN_PROGRAM
    trainer = TRAINERS.get("reconstruction" if pretraining else flags.trainer)
    if trainer.pretraining != pretraining:
        raise FPNError(f"--trainer {trainer.name}: a pretraining trainer; run it with fpn_pretrain"
                       if trainer.pretraining else f"{trainer.name}: not a pretraining trainer")
    dataset, pre_dir, plan, config_name, cases = find_preprocessed(flags.dataset, flags.config)
    trainer.check(plan)
    configuration = plan.configuration(config_name)
    device = fdist.rank_device(flags.device)
    part = (_pretraining(flags, dataset, plan, config_name, configuration, cases) if pretraining
            else _fold(flags, trainer, dataset, pre_dir, plan, config_name, configuration, cases))
    network, kwargs = trainer.network_spec(plan, part.pop("configuration"))
    d = configuration.training
    where = f"trainer {trainer.name}"
    planned = network_class(network).training_augmentation  # e.g. plane2d's 2D augmentation
    part.setdefault("augmentation", planned if planned and trainer.default_augmentation == "default"
                    else trainer.default_augmentation)
    return RunConfig(
        program=program, trainer=trainer.name, dataset=dataset, config=config_name,
        preprocessed_dir=str(pre_dir), data_dir=str(cases.folder), network=network, network_kwargs=kwargs,
        in_channels=plan.num_input_channels, num_outputs=trainer.num_outputs(plan),
        epochs=int(_pick(flags.epochs, d.pretrain_epochs if pretraining else d.epochs)),
        iterations_per_epoch=int(_pick(flags.iterations_per_epoch, d.iterations_per_epoch)),
        batch_size=int(_pick(flags.batch_size, configuration.batch_size)),
        lr=float(_pick(flags.lr, d.pretrain_lr if pretraining else d.lr)),
        weight_decay=float(_pick(flags.weight_decay, d.weight_decay)),
        optimizer=str(d.optimizer), momentum=float(d.momentum), nesterov=bool(d.nesterov),
        lr_schedule=str(d.lr_schedule), val_every=int(_pick(flags.val_every, d.val_every)),
        bn_recalibration=int(_pick(flags.bn_recalibration, d.bn_recalibration)), grad_clip=float(d.grad_clip or 0.0),
        foreground_oversample=float(d.foreground_oversample),
        precision=resolve_precision(flags.precision, configuration, device),
        num_workers=int(_pick(flags.num_workers, default_num_workers())), seed=int(flags.seed),
        loss=trainer.default_loss, loss_params=override(configuration.loss, trainer.loss_overrides, where),
        augment_params=override(configuration.augmentation, trainer.augment_overrides, where),
        device=device, compile=bool(flags.compile), progress=bool(flags.progress), heartbeat=float(flags.heartbeat),
        sync_bn=bool(flags.sync_bn), world_size=fdist.world_size(), resume=bool(flags.resume),
        overwrite=bool(flags.overwrite), **part)


def dataset_splits(dataset: str, pre_dir: Path, cases: PreprocessedDataset) -> list[Split]:
    """The dataset's patient-grouped folds over its labelled cases (made and written on first use)."""
    raw_dir: Path | None = raw_root() / dataset
    raw_dir = raw_dir if raw_dir.is_dir() else None
    patients = load_dataset_json(pre_dir).patients if has_dataset_json(pre_dir) else {}
    return load_or_create_splits(pre_dir, raw_dir, cases.labelled, patients, all_cases=cases.case_names)


def _fold(flags: Any, trainer: type[Trainer], dataset: str, pre_dir: Path, plan: Plan, config_name: str,
          configuration: Configuration, cases: PreprocessedDataset) -> dict[str, Any]:
    """fpn_train's part: en-face inputs, the fold's cases, the initialisation, the folders."""
    net_cls = network_class(configuration.network.name)
    configuration = enface_inputs.resolve(flags.enface_inputs, plan, configuration, trainer.name, net_cls)
    modalities = enface_inputs.modalities_of(configuration)
    labelled = cases.labelled
    if not labelled:
        raise FPNError(f"{cases.folder}: no labelled case (no CASE_seg.npy): add label maps to labelsTr of the raw "
                       f"dataset and re-run fpn_plan_and_preprocess, or use fpn_pretrain, which needs no labels")
    raw_dir: Path | None = raw_root() / dataset
    raw_dir = raw_dir if raw_dir.is_dir() else None
    splits = dataset_splits(dataset, pre_dir, cases)
    full_train, val = fold_cases(splits, flags.fold)
    train = apply_label_fraction(full_train, flags.label_fraction)
    unlabelled = ([c for c in full_train if c not in set(train)]
                  + [c for c in cases.case_names if c not in set(labelled)] if trainer.uses_unlabelled else [])
    results = results_root() / dataset
    tag, path, message = resolve_pretrained(flags.pretrained, results, config_name)
    enc_tag, enc_message = None, ""
    if flags.encoder_weights != "none":
        from fpnunet.networks.encoder_weights import resolve_encoder_weights  # lazy: start-up time (timm, 2D encoders)

        enc_tag, _, enc_message = resolve_encoder_weights(flags.encoder_weights, configuration.network.name,
                                                          net_cls, configuration.network.kwargs, fetch=False)
    if enc_tag is not None:
        if flags.pretrained not in ("auto", "none"):
            raise FPNError(f"--pretrained {flags.pretrained} and --encoder-weights {flags.encoder_weights} both "
                           "initialise the network: give one of them")
        tag, path, message = enc_tag, None, enc_message
    enface_inputs.check_cases(cases.folder, train + val, modalities)
    model_dir = results / (model_folder_name(config_name, flags.label_fraction, tag)
                           + enface_inputs.folder_suffix(modalities) + trainer.folder_suffix())
    return {"configuration": configuration, "fold": str(flags.fold),
            "raw_dir": None if raw_dir is None else str(raw_dir),
            "model_dir": str(model_dir), "fold_dir": str(model_dir / fold_folder_name(flags.fold)),
            "train_cases": tuple(train), "val_cases": tuple(val), "unlabelled_cases": tuple(unlabelled),
            "label_fraction": float(flags.label_fraction), "enface_inputs": tuple(modalities),
            "pretrained": flags.pretrained, "tag": tag, "pretrained_path": None if path is None else str(path),
            "pretrained_message": message, "partial_load": bool(flags.partial_load),
            "encoder_weights": flags.encoder_weights, "val_only": bool(flags.val_only),
            "val_checkpoint": flags.val_checkpoint,
            "save_probabilities": bool(getattr(flags, "save_probabilities", False))}


def _pretraining(flags: Any, dataset: str, plan: Plan, config_name: str, configuration: Configuration,
                 cases: PreprocessedDataset) -> dict[str, Any]:
    """fpn_pretrain's part: the target modality, the held-out split, the folders."""
    from fpnunet.training.reconstruction import inverts, split_holdout  # lazy: start-up time (pretraining)

    if configuration.network.kwargs.get(enface_inputs.KWARG):
        print("fpn_pretrain: the plan's enface_inputs are not network inputs while pretraining "
              "(the pretext reconstructs an en-face image from the volume)")
    known = {m.upper(): m for m in plan.enface_modalities}
    target = known.get(flags.target.upper())
    if target is None:
        raise FPNError(f"--target {flags.target}: dataset {dataset} has no such en-face modality "
                       f"(its en-face images: {plan.enface_modalities or 'none'}; they come from enfaceTr/"
                       f"CASE_<MODALITY> files listed in dataset.json 'enface_modalities')")
    with_target = cases.with_enface(target)
    if not with_target:
        raise FPNError(f"{cases.folder}: no preprocessed case has a {target} image (CASE_{target}.npy): "
                       f"run fpn_plan_and_preprocess -d {flags.dataset} first")
    train, val = split_holdout(with_target, flags.val_fraction, flags.seed)
    fold_dir = pretraining_checkpoint(results_root() / dataset, config_name, target).parent
    return {"configuration": configuration, "model_dir": str(fold_dir.parent), "fold_dir": str(fold_dir),
            "train_cases": tuple(train), "val_cases": tuple(val), "target": target,
            "invert": inverts(target, flags.invert), "val_fraction": float(flags.val_fraction),
            "n_pictures": int(flags.n_pictures), "augmentation": "default" if flags.augment else "none",
            "tag": "", "pretrained": "", "pretrained_message": ""}
