"""Planner (PLACEHOLDER: fixed patch and batch size; the memory-aware planner replaces it).

``plan_dataset(fingerprint, info, ...) -> Plan`` is the interface the CLI calls.
"""
from __future__ import annotations

from collections.abc import Sequence

from fpnunet.io import DatasetInfo
from fpnunet.plans.plan import Configuration, NetworkSpec, Plan


def plan_dataset(
    fingerprint: dict,
    info: DatasetInfo,
    *,
    gpu_memory_gb: float | None = None,
    networks: Sequence[str] = ("fpn",),
    existing: Plan | None = None,
    verbose: bool = True,
) -> Plan:
    band = int(fingerprint.get("retina_band_height_p95", fingerprint["median_shape"][1]))
    depth = 64
    plan = existing or Plan(dataset_name=fingerprint["dataset_name"])
    plan.projection_axis = int(fingerprint["projection_axis"])
    plan.num_input_channels = info.num_channels
    plan.labels = dict(info.labels)
    plan.enface_modalities = list(info.enface_modalities)
    plan.file_ending = info.file_ending
    plan.depth_crop = min(int(round(band * 1.2)), int(fingerprint["median_shape"][1]))
    plan.enface_spacing = (fingerprint["median_spacing"][0], fingerprint["median_spacing"][2])
    plan.median_shape = tuple(fingerprint["median_shape"])
    for name in networks:
        plan.configurations[name] = Configuration(
            network=NetworkSpec(name, {}), patch_size=(16, 64), batch_size=2, depth=depth,
            data_identifier=f"depth{depth}", gpu_memory_gb=gpu_memory_gb or 8.0,
        )
    plan.default_configuration = networks[0]
    return plan
