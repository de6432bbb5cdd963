"""Planner: from the dataset fingerprint to a :class:`~fpnunet.plans.plan.Plan` that fits the GPU.

``plan_dataset(fingerprint, info, ...) -> Plan`` is what ``fpn_plan_and_preprocess`` calls.
The rules (their constants and small functions: :mod:`fpnunet.plans.planning_rules`; docs/planner.md
has the reasoning):

* **depth crop** (raw rows kept around each case's retina band): the fingerprint's p95 band
  height plus :data:`DEPTH_CROP_MARGIN` (15 %), capped at the median depth;
* **depth target** (rows after resampling): the smallest power of two >= half the crop, so the
  crop is shrunk by a factor in (1, 2] and thin layers keep >= half their rows, clamped to
  ``[max(64, network minimum), max(128, network minimum)]``;
* **en-face patch** ``(B, A)``: the whole median en-face plane rounded to the network's
  divisors, shrunk while the memory estimate at batch 2 exceeds the budget, one divisor step
  at a time on the axis spanning the most millimetres (on a tie, the axis with more pixels per
  mm, i.e. the smaller spacing, so the fine A axis of a Spectralis volume is cut first);
* **batch**: as large as fits, at most :data:`MAX_BATCH_SIZE` and at most what covers
  :data:`BATCH_DATASET_FRACTION` of the training en-face area, never below 2;
* **memory**: estimated on the ``meta`` device (:mod:`fpnunet.plans.memory`), so planning
  needs no GPU and takes about a second per network; ``calibrate=True`` adds one real CUDA step.

Usage::

    plan = plan_dataset(fingerprint, info, gpu_memory_gb=11, networks=("fpn", "ipn"))
    print(format_plan_table(plan))
"""
from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fpnunet.errors import FPNError
from fpnunet.networks import build_network, network_class
from fpnunet.plans.memory import calibrate_cuda, estimate_training_memory
from fpnunet.plans.plan import Configuration, MemoryEstimate, NetworkSpec, Plan, TrainingDefaults
from fpnunet.plans.planning_rules import (  # the rules; tests and callers also import them from here
    BATCH_DATASET_FRACTION,
    CUDA_CONTEXT_RESERVE_BYTES,
    DEFAULT_PRECISION,
    MAX_BATCH_SIZE,
    MIN_BATCH_SIZE,
    choose_depth,
    depth_crop_rows,
    detect_gpu_memory_gb,
    floor_to,
    memory_budget_bytes,
    round_to,
    shrunk_patch,
    training_enface_area,
)
from fpnunet.raw_dataset import DatasetInfo


# ----------------------------------------------------------------------------- one network
@dataclass
class _Context:
    """What planning a configuration needs from the dataset."""

    plane: tuple[int, int]
    spacing: tuple[float, float]
    crop: int
    in_channels: int
    num_outputs: int
    train_area: int
    budget: int
    precision: str
    training: TrainingDefaults


class _NetworkPlanner:
    """Plans one network: topology for a patch, memory estimates (cached), the search."""

    def __init__(self, name: str, ctx: _Context):
        self.name = name
        self.cls = network_class(name)
        self.ctx = ctx
        self._cache: dict[tuple, MemoryEstimate] = {}
        self._networks: dict[str, torch.nn.Module] = {}
        (self.step_b, _, self.step_a), self.ref_min_depth = self.cls.input_divisors()
        self.depth = self._depth()

    def _depth(self) -> int:
        depth = choose_depth(self.ctx.crop, self.ref_min_depth)
        patch = (round_to(self.ctx.plane[0], self.step_b), round_to(self.ctx.plane[1], self.step_a))
        (_, div_d, _), min_d = self.cls.input_divisors(**self.cls.plan_kwargs(patch, depth, self.ctx.spacing))
        if depth % div_d or depth < min_d:
            depth = max(min_d, div_d * math.ceil(depth / div_d))
        return depth

    def topology(self, patch: tuple[int, int]) -> tuple[tuple[int, int], dict[str, Any]]:
        """Topology kwargs for ``patch``; the patch is rounded down to their divisors if needed."""
        for _ in range(4):
            kwargs = self.cls.plan_kwargs(patch, self.depth, self.ctx.spacing)
            (div_b, div_d, div_a), min_d = self.cls.input_divisors(**kwargs)
            fitted = (floor_to(patch[0], div_b), floor_to(patch[1], div_a))
            if fitted == patch:
                if self.depth % div_d or self.depth < min_d:
                    raise FPNError(
                        f"network {self.name!r}: planned depth {self.depth} does not fit its topology "
                        f"(divisor {div_d}, minimum {min_d}) for patch {patch}"
                    )
                return patch, kwargs
            patch = fitted
        raise FPNError(f"network {self.name!r}: could not find a topology whose divisors fit patch {patch}")

    def _network(self, kwargs: dict[str, Any]) -> torch.nn.Module:
        """The network for ``kwargs``, built once on the CPU (a few MB of weights; building on
        ``meta`` is slower because its random init runs through Python reference kernels)."""
        key = json.dumps(kwargs, sort_keys=True)
        if key not in self._networks:
            self._networks[key] = build_network(self.name, self.ctx.in_channels, self.ctx.num_outputs, **kwargs)
        return self._networks[key]

    def estimate(self, patch: tuple[int, int], batch: int) -> MemoryEstimate:
        key = (patch, batch)
        if key not in self._cache:
            _, kwargs = self.topology(patch)
            net = self._network(kwargs)
            t = self.ctx.training
            self._cache[key] = estimate_training_memory(
                net,
                (batch, self.ctx.in_channels, patch[0], self.depth, patch[1]),
                precision=self.ctx.precision,
                optimizer=t.optimizer,
                momentum=t.momentum > 0,
            )
        return self._cache[key]

    def _shrunk(self, patch: tuple[int, int]) -> tuple[int, int] | None:
        return shrunk_patch(patch, (self.step_b, self.step_a), self.ctx.spacing)

    def search_patch(self) -> tuple[int, int]:
        """Largest patch (whole median plane down) whose estimate at batch 2 fits the budget.

        The estimate is nearly linear in the patch area, so cuts whose linear prediction is still
        over budget are made without estimating; each prediction that fits is then checked.
        """
        budget = self.ctx.budget
        patch = (round_to(self.ctx.plane[0], self.step_b), round_to(self.ctx.plane[1], self.step_a))
        patch, _ = self.topology(patch)
        while True:
            est = self.estimate(patch, MIN_BATCH_SIZE)
            if est.total_bytes <= budget:
                return patch
            fixed = est.parameter_bytes + est.gradient_bytes + est.optimizer_bytes
            per_px = max(1.0, (est.total_bytes - fixed) / (patch[0] * patch[1]))
            nxt = self._shrunk(patch)
            if nxt is None:
                raise FPNError(
                    f"network {self.name!r} does not fit {budget / 2**30:.2f} GiB even at batch "
                    f"{MIN_BATCH_SIZE} and the smallest patch {patch} (estimate {est.total_gb:.2f} GiB); "
                    "give more memory (--gpu-memory-gb) or choose a smaller network"
                )
            skipped = [patch]
            while fixed + per_px * nxt[0] * nxt[1] > budget:
                cut = self._shrunk(nxt)
                if cut is None:
                    break
                skipped.append(nxt)
                nxt = cut
            patch, _ = self.topology(nxt)
            if self.estimate(patch, MIN_BATCH_SIZE).total_bytes <= budget:
                # the prediction may have cut too far: walk back while the larger patch fits
                for larger in reversed(skipped[1:]):
                    larger, _ = self.topology(larger)
                    if self.estimate(larger, MIN_BATCH_SIZE).total_bytes > budget:
                        break
                    patch = larger
                return patch

    def search_batch(self, patch: tuple[int, int]) -> int:
        """Largest batch in ``[2, cap]`` whose estimate fits (the estimate is linear in the batch)."""
        area = patch[0] * patch[1]
        cap = min(MAX_BATCH_SIZE, max(MIN_BATCH_SIZE, int(BATCH_DATASET_FRACTION * self.ctx.train_area // area)))
        if cap == MIN_BATCH_SIZE:
            return MIN_BATCH_SIZE
        e2 = self.estimate(patch, MIN_BATCH_SIZE)
        e3 = self.estimate(patch, MIN_BATCH_SIZE + 1)
        slope = max(1, e3.total_bytes - e2.total_bytes)
        batch = MIN_BATCH_SIZE + (self.ctx.budget - e2.total_bytes) // slope
        batch = int(min(cap, max(MIN_BATCH_SIZE, batch)))
        while batch > MIN_BATCH_SIZE and self.estimate(patch, batch).total_bytes > self.ctx.budget:
            batch -= 1
        while batch < cap and self.estimate(patch, batch + 1).total_bytes <= self.ctx.budget:
            batch += 1
        return batch

    def plan(self, gpu_memory_gb: float) -> Configuration:
        patch = self.search_patch()
        batch = self.search_batch(patch)
        patch, kwargs = self.topology(patch)
        return Configuration(
            network=NetworkSpec(self.name, kwargs),
            patch_size=patch,
            batch_size=batch,
            depth=self.depth,
            data_identifier=f"depth{self.depth}",
            precision=self.ctx.precision,
            gpu_memory_gb=float(gpu_memory_gb),
            memory=copy.deepcopy(self.estimate(patch, batch)),
            training=copy.deepcopy(self.ctx.training),
        )


# ----------------------------------------------------------------------------- the planner
def plan_dataset(
    fingerprint: dict,
    info: DatasetInfo,
    *,
    gpu_memory_gb: float | None = None,
    networks: Sequence[str] = ("fpn",),
    existing: Plan | None = None,
    verbose: bool = True,
    calibrate: bool = False,
) -> Plan:
    """Plan ``networks`` for a dataset from its fingerprint and ``dataset.json``.

    Args:
        fingerprint: the dict of ``dataset_fingerprint.json`` (``plans/fingerprint.py``).
        info: the parsed ``dataset.json``.
        gpu_memory_gb: GiB of GPU memory to plan for; ``None``: the free memory of the CUDA
            device when there is one, else 8. :data:`CUDA_CONTEXT_RESERVE_BYTES` is kept off.
        networks: registered network names; each becomes the configuration of that name.
        existing: a previous plan; its configurations not in ``networks`` are kept verbatim
            (user edits included) and it is not modified.
        verbose: print the table of the decision.
        calibrate: also run one real training step per configuration on CUDA and record the
            measured peak (``memory.calibrated_peak_bytes``); needs CUDA.

    Returns the plan (dataset-level fields recomputed, one configuration per network planned).
    Raises :class:`FPNError` for an unknown network, a budget too small for any patch, or
    ``calibrate`` without CUDA.
    """
    names = list(dict.fromkeys(networks))
    if not names:
        raise FPNError("no network to plan: give at least one --network")
    for name in names:
        network_class(name)  # unknown names fail before any work
    if calibrate and not torch.cuda.is_available():
        raise FPNError("calibration (--calibrate) needs a CUDA GPU, and CUDA is not available on this machine")
    if gpu_memory_gb is None:
        gpu_memory_gb, source = detect_gpu_memory_gb()
    else:
        gpu_memory_gb, source = float(gpu_memory_gb), "given"
    gpu_memory_gb = math.floor(gpu_memory_gb * 100) / 100  # recorded as is; the budget uses the same figure
    if gpu_memory_gb <= 0:
        raise FPNError(f"GPU memory must be positive, got {gpu_memory_gb} GB")
    budget = memory_budget_bytes(gpu_memory_gb)
    if budget <= 0:
        raise FPNError(
            f"{gpu_memory_gb} GB leaves nothing once {CUDA_CONTEXT_RESERVE_BYTES / 2**30:.1f} GiB is "
            "kept for the CUDA context; give more GPU memory"
        )

    plan = copy.deepcopy(existing) if existing is not None else Plan(dataset_name=str(fingerprint["dataset_name"]))
    median = tuple(int(v) for v in fingerprint["median_shape"])
    spacing = tuple(float(v) for v in fingerprint["median_spacing"])
    plan.dataset_name = str(fingerprint["dataset_name"])
    plan.projection_axis = int(fingerprint["projection_axis"])
    plan.num_input_channels = int(info.num_channels)
    plan.labels = dict(info.labels)
    plan.enface_modalities = list(info.enface_modalities)
    plan.file_ending = info.file_ending
    plan.normalization = "zscore_retina"
    plan.median_shape = median  # type: ignore[assignment]
    plan.enface_spacing = (spacing[0], spacing[2])
    plan.depth_crop = depth_crop_rows(fingerprint)

    ctx = _Context(
        plane=(median[0], median[2]),
        spacing=plan.enface_spacing,
        crop=plan.depth_crop,
        in_channels=plan.num_input_channels,
        num_outputs=plan.num_outputs,
        train_area=training_enface_area(fingerprint),
        budget=budget,
        precision=DEFAULT_PRECISION,
        training=TrainingDefaults(),
    )
    seconds: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        cfg = _NetworkPlanner(name, ctx).plan(gpu_memory_gb)
        seconds[name] = time.perf_counter() - start
        if calibrate:
            _calibrate(cfg, plan)
        plan.configurations[name] = cfg
    if plan.default_configuration not in plan.configurations:
        plan.default_configuration = names[0]
    if verbose:
        print(
            f"planned {plan.dataset_name} for {gpu_memory_gb:.1f} GB GPU memory ({source}; "
            f"{CUDA_CONTEXT_RESERVE_BYTES / 2**30:.1f} GB kept for the CUDA context), precision {ctx.precision}, "
            f"in {sum(seconds.values()):.1f} s"
        )
        print(format_plan_table(plan, names))
    return plan


def _calibrate(cfg: Configuration, plan: Plan) -> None:
    """Record one real CUDA step's peak in ``cfg.memory`` (warns when it exceeds the budget)."""
    net = build_network(cfg.network.name, plan.num_input_channels, plan.num_outputs, **cfg.network.kwargs)
    shape = (cfg.batch_size, plan.num_input_channels, cfg.patch_size[0], cfg.depth, cfg.patch_size[1])
    peak = calibrate_cuda(net, shape, cfg.precision, cfg.training.optimizer)
    assert cfg.memory is not None
    cfg.memory.calibrated_peak_bytes = int(peak)
    cfg.memory.calibrated_device = torch.cuda.get_device_name()
    if peak > memory_budget_bytes(cfg.gpu_memory_gb):
        print(
            f"warning: {cfg.network.name}: the measured peak {peak / 2**30:.2f} GiB exceeds the budget "
            f"{memory_budget_bytes(cfg.gpu_memory_gb) / 2**30:.2f} GiB; lower batch_size in plans.json"
        )


# ----------------------------------------------------------------------------- the table
def _num_params(cfg: Configuration, plan: Plan) -> int | None:
    """Parameter count: from the estimate (one fp32 gradient per parameter), else by building."""
    if cfg.memory is not None and cfg.memory.gradient_bytes:
        return cfg.memory.gradient_bytes // 4
    try:
        net = build_network(cfg.network.name, plan.num_input_channels, plan.num_outputs, **cfg.network.kwargs)
    except (FPNError, TypeError, ValueError, RuntimeError):
        return None
    return sum(p.numel() for p in net.parameters())


def format_plan_table(plan: Plan, names: Sequence[str] | None = None) -> str:
    """A plain-text table of the configurations (``names``, default all)::

        config  network  depth crop->target  patch B x A (mm)      batch  est. GB + margin / budget  params
        fpn     fpn      184 -> 128          48 x 512 (5.8 x 5.8)  2      5.36 + 0.80 / 7.50         4.37 M

    ``est. GB`` is the estimate of the step's peak, ``margin`` the safety margin (workspace,
    fragmentation) kept as a separate term; their sum must fit the budget.
    """
    header = ["config", "network", "depth crop->target", "patch B x A (mm)", "batch", "est. GB + margin / budget",
              "params"]
    calibrated = any(
        c.memory is not None and c.memory.calibrated_peak_bytes is not None for c in plan.configurations.values()
    )
    if calibrated:
        header.append("measured GB")
    rows = [header]
    for key in names if names is not None else list(plan.configurations):
        cfg = plan.configurations[key]
        b, a = cfg.patch_size
        mm = f"{b * plan.enface_spacing[0]:.1f} x {a * plan.enface_spacing[1]:.1f}"
        budget = memory_budget_bytes(cfg.gpu_memory_gb) / 2**30
        est = (f"{cfg.memory.peak_bytes / 2**30:.2f} + {cfg.memory.margin_bytes / 2**30:.2f} / {budget:.2f}"
               if cfg.memory else f"- / {budget:.2f}")
        n = _num_params(cfg, plan)
        row = [
            key,
            cfg.network.name,
            f"{plan.depth_crop or plan.median_shape[1]} -> {cfg.depth}",
            f"{b} x {a} ({mm})",
            str(cfg.batch_size),
            est,
            f"{n / 1e6:.2f} M" if n is not None else "?",
        ]
        if calibrated:
            peak = cfg.memory.calibrated_peak_bytes if cfg.memory else None
            row.append(f"{peak / 2**30:.2f}" if peak is not None else "-")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)
