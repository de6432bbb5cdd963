"""The predictor: a model folder's networks (one per fold) kept in memory, applied to volumes.

Usage::

    predictor = Predictor.from_model_folder("fpn_data/results/Dataset900_SynthGA/fpn__lf1__scratch")
    probs, props = predictor.predict_raw([oct_bda])          # raw channels (B, D, A) -> (K, B, A)
    probs = predictor.predict_preprocessed(np.load("CASE.npy"))  # (C, B, depth, A) -> (K, B, A)

A model folder (``docs/layout.md``) holds ``plans.json``, ``dataset.json`` and
``fold_k/checkpoint_{final,best,latest}.pth``; nothing else is needed. On CUDA the networks run
under bf16 autocast (unless the configuration's precision is ``fp32``), on the CPU in bf16 only
where it is supported and measured faster (:mod:`fpnunet.precision`); on every device in
``channels_last_3d`` with BatchNorm folded into the convolutions (:mod:`.fast`), and over the
whole en-face plane in one window when it fits the memory at hand (:mod:`.windows`).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fpnunet.checkpoint import finite_weights, load_checkpoint
from fpnunet.cli_utils import resolve_device
from fpnunet.errors import FPNError, ShapeError
from fpnunet.networks.registry import build_model, enface_inputs
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.precision import cpu_bf16_decision
from fpnunet.preprocessed_dataset import plans_file
from fpnunet.raw_dataset import DatasetInfo, has_dataset_json, load_dataset_json
from fpnunet.results_layout import CHECKPOINTS, fold_checkpoint, list_folds

from .fast import example_input, prepare_for_inference
from .sliding_window import network_divisors, predict_sliding_window
from .windows import MEMORY_SHARE, WINDOW_MODES, WindowPlan, available_memory, inference_bytes_per_pixel, plan_windows

__all__ = ["Predictor"]

class Predictor:
    """Networks of one configuration (usually the folds of one model folder) and their plan.

    Args:
        networks: networks mapping ``(N, C, pB, depth, pA)`` to logits ``(N, K, pB, pA)``; their
            probabilities are averaged (fold ensemble). They are moved to ``device`` and put in
            eval mode once, and stay in memory across cases.
        plan: the plan they were trained with.
        config_name: the plan configuration (patch size, depth) they belong to.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        tta: average over the four en-face flips (batched in one forward per window).
        num_outputs: K (default: the plan's ``num_outputs``).
        step_fraction: sliding-window step as a fraction of the patch.
        batch_windows: windows per forward (default 1 on the CPU, 2 on CUDA).
        whole_plane: same as ``window="whole"``.
        use_gaussian: Gaussian weighting of the windows of the training patch grid.
        precision: ``bf16`` (autocast), ``fp32`` or ``auto``: on CUDA the configuration's precision;
            on the CPU bf16 only where :func:`fpnunet.precision.cpu_bf16_decision` finds it native and
            faster (``FPN_CPU_BF16`` forces it). :attr:`precision` holds the one taken.
        dataset_info: the model folder's ``dataset.json`` (file ending, labels), if known.
        window: ``auto`` (the whole plane, or the fewest larger windows, that fit the memory at
            hand: :mod:`.windows`), ``whole`` (one window, whatever the memory) or ``patch`` (the
            training patch grid with Gaussian blending).
        fold_batchnorm: fold eval BatchNorm into the convolutions (:mod:`.fast`).
        channels_last: run in ``channels_last_3d`` (default: on every device).
        memory_share: share of the available memory a forward may use (default 0.5 on the CPU,
            0.8 on CUDA); the rest is the safety margin.
        copy_networks: prepare copies of ``networks`` (default), leaving the caller's modules as
            they were (a training loop validating with its model); ``False`` prepares them in place.
    """

    def __init__(
        self,
        networks: list[nn.Module],
        plan: Plan,
        config_name: str,
        device: str = "cpu",
        tta: bool = True,
        *,
        num_outputs: int | None = None,
        step_fraction: float = 0.5,
        batch_windows: int | None = None,
        whole_plane: bool = False,
        use_gaussian: bool = True,
        precision: str = "auto",
        dataset_info: DatasetInfo | None = None,
        window: str = "auto",
        fold_batchnorm: bool = True,
        channels_last: bool = True,
        memory_share: float | None = None,
        copy_networks: bool = True,
    ) -> None:
        if not networks:
            raise FPNError("a Predictor needs at least one network")
        self.plan = plan
        self.config_name = config_name
        self.config: Configuration = plan.configuration(config_name)
        self.device = torch.device(resolve_device(device))
        self.tta = tta
        self.num_outputs = int(num_outputs if num_outputs is not None else plan.num_outputs)
        self.step_fraction = step_fraction
        self.batch_windows = batch_windows or (2 if self.device.type == "cuda" else 1)
        self.whole_plane = whole_plane
        if window not in WINDOW_MODES:
            raise FPNError(f"window {window!r}: expected one of {', '.join(WINDOW_MODES)}")
        self.window = "whole" if whole_plane else window
        self.use_gaussian = use_gaussian
        cuda = self.device.type == "cuda"
        if precision not in ("auto", "bf16", "fp32"):
            raise FPNError(f"precision {precision!r}: expected auto, bf16 or fp32")
        if precision == "auto":
            bf16 = self.config.precision != "fp32" and (cuda or cpu_bf16_decision().use_bf16)
            precision = "bf16" if bf16 else "fp32"
        self.precision = precision
        self.channels_last = channels_last
        self.memory_share = MEMORY_SHARE.get(self.device.type, 0.5) if memory_share is None else memory_share
        self.dataset_info = dataset_info
        self.model_dir: Path | None = None
        self.folds: list[str] = []
        if cuda:
            torch.backends.cudnn.benchmark = True
        self.divisors = network_divisors(networks[0])
        self.enface_inputs = enface_inputs(networks[0])
        """En-face modalities the networks take as input channels (packed after the volume's)."""
        self.input_channels = plan.num_input_channels + len(self.enface_inputs)
        example = example_input(self.input_channels, self.config.depth, self.divisors) if fold_batchnorm else None
        self.networks = [prepare_for_inference(copy.deepcopy(net) if copy_networks else net, example,
                                               device=self.device, channels_last=channels_last, fold=fold_batchnorm)
                         for net in networks]
        self._bytes_per_pixel: float | None = None
        self.window_plans: dict[tuple[int, int], WindowPlan] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model_folder(
        cls,
        model_dir: str | os.PathLike,
        folds: list[int | str] | None = None,
        checkpoint: str = "final",
        device: str = "auto",
        tta: bool = True,
        **kwargs: Any,
    ) -> Predictor:
        """Load ``model_dir/plans.json`` and the ``checkpoint`` of each fold.

        ``folds``: fold numbers (or ``"all"``); ``None`` takes every ``fold_*`` present.
        ``checkpoint``: ``final``, ``best`` or ``latest``. Extra ``kwargs`` go to :class:`Predictor`.
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FPNError(f"{model_dir}: model folder not found")
        if checkpoint not in CHECKPOINTS:
            raise FPNError(f"unknown checkpoint {checkpoint!r}: expected one of {', '.join(CHECKPOINTS)}")
        plan = Plan.load(plans_file(model_dir))
        info = load_dataset_json(model_dir) if has_dataset_json(model_dir) else None
        if folds is None:
            fold_names = list_folds(model_dir)
            if not fold_names:
                raise FPNError(f"{model_dir}: no fold_* folders in this model folder (train a fold first)")
        else:
            fold_names = [str(f) for f in folds]
        device = resolve_device(device)

        networks: list[nn.Module] = []
        config_names: set[str] = set()
        outputs: set[int] = set()
        for fold in fold_names:
            path = fold_checkpoint(model_dir, fold, checkpoint)
            ckpt = load_checkpoint(path)
            spec = ckpt["network"]
            net = build_model(ckpt)
            # weights saved from a torch.compile'd model carry an "_orig_mod." prefix
            state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["state_dict"].items()}
            if not finite_weights(state):
                raise FPNError(f"{path}: the weights are not finite (NaN/Inf: the training diverged); "
                               f"this checkpoint cannot predict anything")
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                raise FPNError(f"{path}: weights do not fit network {spec['name']!r} ({exc})") from None
            networks.append(net.eval())
            config_names.add(str(ckpt.get("configuration") or spec["name"]))
            outputs.add(int(ckpt["num_outputs"]))
        inputs = {tuple(enface_inputs(net)) for net in networks}
        if len(inputs) > 1:
            raise FPNError(f"{model_dir}: folds {fold_names} take different en-face input channels {sorted(inputs)}")
        if len(config_names) > 1 or len(outputs) > 1:
            raise FPNError(f"{model_dir}: folds {fold_names} disagree on configuration {sorted(config_names)} "
                           f"or number of outputs {sorted(outputs)}")
        config_name = config_names.pop()
        if config_name not in plan.configurations:
            config_name = plan.default_configuration
        kwargs.setdefault("copy_networks", False)
        predictor = cls(networks, plan, config_name, device=device, tta=tta, num_outputs=outputs.pop(),
                        dataset_info=info, **kwargs)
        predictor.model_dir = model_dir
        predictor.folds = fold_names
        return predictor

    # ------------------------------------------------------------------ prediction
    def window_plan(self, plane: tuple[int, int]) -> WindowPlan:
        """The :class:`WindowPlan` for an en-face plane ``(B, A)`` (cached per plane size)."""
        plane = (int(plane[0]), int(plane[1]))
        if plane not in self.window_plans:
            if self._bytes_per_pixel is None:
                dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
                self._bytes_per_pixel = inference_bytes_per_pixel(
                    self.networks[0], self.input_channels, self.config.depth, self.config.patch_size, dtype)
            weights = sum(p.numel() * p.element_size() for net in self.networks for p in net.parameters())
            self.window_plans[plane] = plan_windows(
                plane, tuple(self.config.patch_size), self.divisors, bytes_per_pixel=self._bytes_per_pixel,
                flips=4 if self.tta else 1, available_bytes=available_memory(self.device), share=self.memory_share,
                weights_bytes=weights, mode=self.window, step_fraction=self.step_fraction)
        return self.window_plans[plane]

    def predict_tensor(self, volume: torch.Tensor, members: bool = False) -> torch.Tensor:
        """Probabilities ``(K, B, A)`` float32 (on the device) of a preprocessed ``(C, B, depth, A)`` tensor;
        ``members``: the ensemble's members apart, ``(folds, flips, K, B, A)`` (their mean is the former)."""
        plan = self.window_plan((volume.shape[1], volume.shape[3])) if volume.ndim == 4 else None
        return predict_sliding_window(
            self.networks, volume.to(self.device, torch.float32), self.config.patch_size,
            num_outputs=self.num_outputs, tta=self.tta, step_fraction=self.step_fraction,
            batch_windows=self.batch_windows, use_gaussian=self.use_gaussian, precision=self.precision,
            channels_last=self.channels_last, window_plan=plan, members=members,
        )

    def predict_preprocessed(self, volume: np.ndarray, members: bool = False) -> np.ndarray:
        """Probabilities ``(K, B, A)`` float32 of a preprocessed volume ``(C, B, depth, A)``
        (as written by preprocessing: normalised, depth-reduced); ``members``: ``(folds, flips, K, B, A)``."""
        volume = np.asarray(volume)
        if self.enface_inputs:
            raise FPNError(f"this model also takes the en-face images {', '.join(self.enface_inputs)} as input "
                           "channels: predict with fpnunet.inference.fused.predict_fused (fpn_predict reads them)")
        c = self.plan.num_input_channels
        if volume.ndim != 4 or volume.shape[0] != c or volume.shape[2] != self.config.depth:
            raise ShapeError(
                f"expected a preprocessed volume (C, B, depth, A) with C={c} and depth={self.config.depth}, "
                f"got shape {volume.shape}"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
        return self.predict_tensor(tensor, members).cpu().numpy()

    def predict_raw(
        self, channels: list[np.ndarray], retina_band: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Preprocess raw channels (each ``(B, D, A)``) with the plan, then predict.

        Returns the probabilities ``(K, B, A)`` on the volume's en-face grid and the
        preprocessing properties (``retina_band``, ``crop``).
        """
        if len(channels) != self.plan.num_input_channels:
            raise ShapeError(f"the model takes {self.plan.num_input_channels} channel(s), got {len(channels)}")
        shapes = {tuple(np.shape(ch)) for ch in channels}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ShapeError(f"expected channels of one shape (B, D, A), got shapes {sorted(shapes)}")
        b, _, a = next(iter(shapes))
        from fpnunet.preprocessing.preprocess import preprocess_volume  # lazy: start-up time (training: preprocessed)

        volume, props = preprocess_volume(list(channels), self.plan, self.config, retina_band=retina_band)
        probs = self.predict_preprocessed(volume)
        if probs.shape[1:] != (b, a):
            raise ShapeError(f"preprocessing changed the en-face plane from {(b, a)} to {probs.shape[1:]}")
        return probs, props

    def __repr__(self) -> str:
        return (f"Predictor({len(self.networks)} network(s), config={self.config_name!r}, device={self.device}, "
                f"tta={self.tta}, precision={self.precision})")
