"""The planner on fake fingerprints: plans fit their budget, use more memory when there is more,
respect the network's divisors, round-trip through plans.json and keep other configurations'
user edits on replanning. Memory is estimated on the meta device, so no test allocates much."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from fpnunet.errors import FPNError
from fpnunet.networks import build_network, network_class
from fpnunet.plans.memory import estimate_training_memory
from fpnunet.plans.plan import Plan
from fpnunet.plans.planner import format_plan_table, plan_dataset
from fpnunet.plans.planning_rules import (
    BATCH_DATASET_FRACTION,
    choose_depth,
    depth_crop_rows,
    memory_budget_bytes,
    training_enface_area,
)
from fpnunet.raw_dataset import DatasetInfo

torch.set_num_threads(1)

SPACING = (0.12, 0.0039, 0.0113)  # Spectralis-like (B, D, A) in mm
SYNTH_SPACING = (0.1875, 0.011875, 0.046875)  # fpn_make_synthetic's default: 6 x 1.9 x 6 mm
BUDGETS_GB = (4, 8, 11, 24, 80)


def fake_fingerprint(
    name: str, n: int, shape: tuple[int, int, int], band: int, spacing: tuple[float, ...] = SPACING
) -> dict:
    """A fingerprint dict as ``plans/fingerprint.py`` writes it, every case alike and labelled."""
    labelled = n
    cases = {
        f"case_{i:03d}": {
            "shape": list(shape), "spacing": list(spacing), "retina_band": [20, 20 + band],
            "labelled": i < labelled, "enface": ["FAF"], "label_classes": [0, 1],
            "foreground_fraction": 0.1, "intensity": {"mean": 0.0, "std": 1.0},
        }
        for i in range(n)
    }
    return {
        "dataset_name": name, "projection_axis": 1, "num_channels": 1, "labels": {"background": 0, "GA": 1},
        "enface_modalities": ["FAF"], "file_ending": ".nii.gz", "num_cases": n, "num_labelled": labelled,
        "num_unlabelled": n - labelled, "num_test": 0, "cases": cases, "median_shape": list(shape),
        "median_spacing": list(spacing), "retina_band_height_p95": band, "retina_band_height_max": band + 10,
        "intensity": {"mean": 0.0, "std": 1.0}, "foreground_fraction_mean": 0.1,
    }


INFO = DatasetInfo("SynthGA", {"0": "OCT"}, {"background": 0, "GA": 1}, ".nii.gz", ["FAF", "SLO"])
SYNTH = fake_fingerprint("Dataset900_SynthGA", 60, (32, 160, 128), band=90, spacing=SYNTH_SPACING)
SPECTRALIS = fake_fingerprint("Dataset901_Spectralis", 200, (49, 496, 512), band=170)


@pytest.fixture(scope="module")
def spectralis_plans() -> dict[float, Plan]:
    return {gb: plan_dataset(SPECTRALIS, INFO, gpu_memory_gb=gb, verbose=False) for gb in BUDGETS_GB}


@pytest.fixture(scope="module")
def synth_plans() -> dict[float, Plan]:
    return {gb: plan_dataset(SYNTH, INFO, gpu_memory_gb=gb, verbose=False) for gb in (4, 24)}


def _check_configuration(plan: Plan, gb: float) -> None:
    cfg = plan.configuration("fpn")
    assert cfg.memory is not None
    assert cfg.memory.total_bytes <= memory_budget_bytes(gb), (gb, cfg.patch_size, cfg.batch_size)
    assert cfg.gpu_memory_gb == gb
    assert cfg.batch_size >= 2
    (div_b, div_d, div_a), min_depth = network_class("fpn").input_divisors(**cfg.network.kwargs)
    b, a = cfg.patch_size
    assert b % div_b == 0 and a % div_a == 0
    assert cfg.depth % div_d == 0 and cfg.depth >= min_depth
    assert cfg.data_identifier == f"depth{cfg.depth}"
    assert cfg.precision == "bf16"


@pytest.mark.parametrize("gb", BUDGETS_GB)
def test_every_spectralis_plan_fits(spectralis_plans, gb):
    _check_configuration(spectralis_plans[gb], gb)


@pytest.mark.parametrize("gb", (4, 24))
def test_every_synthetic_plan_fits(synth_plans, gb):
    _check_configuration(synth_plans[gb], gb)


def test_more_memory_gives_larger_patch_or_batch(spectralis_plans):
    small, large = spectralis_plans[8].configuration(), spectralis_plans[24].configuration()
    assert large.patch_size[0] * large.patch_size[1] >= small.patch_size[0] * small.patch_size[1]
    assert large.batch_size >= small.batch_size
    assert (large.patch_size, large.batch_size) != (small.patch_size, small.batch_size)
    # more memory is used, never less
    sizes = [spectralis_plans[gb].configuration().patch_size for gb in BUDGETS_GB]
    voxels = [s[0] * s[1] * spectralis_plans[gb].configuration().batch_size for s, gb in zip(sizes, BUDGETS_GB)]
    assert voxels == sorted(voxels)


def test_patch_starts_from_the_whole_plane_and_shrinks_to_a_square_field(spectralis_plans):
    whole = spectralis_plans[24].configuration()
    assert whole.patch_size == (48, 512)  # 49 B-scans rounded to the divisor 4
    tight = spectralis_plans[4].configuration()
    b, a = tight.patch_size
    assert b < 48 and a < 512
    # the cut follows the millimetres: both sides within one B step (0.48 mm) of each other
    assert abs(b * SPACING[0] - a * SPACING[2]) <= 4 * SPACING[0]
    assert tight.batch_size == 2
    # maximal: a patch one divisor step larger on one of the axes does not fit at batch 2
    cls = network_class("fpn")
    spacing = (SPACING[0], SPACING[2])
    totals = []
    for larger in ((b + 4, a), (b, a + 16)):
        net = build_network("fpn", 1, 1, **cls.plan_kwargs(larger, tight.depth, spacing))
        shape = (2, 1, larger[0], tight.depth, larger[1])
        totals.append(estimate_training_memory(net, shape, precision="bf16").total_bytes)
    assert max(totals) > memory_budget_bytes(4)


def test_batch_capped_by_dataset_share(synth_plans, spectralis_plans):
    cfg = synth_plans[24].configuration()
    assert cfg.patch_size == (32, 128)
    area = cfg.patch_size[0] * cfg.patch_size[1]
    assert cfg.batch_size == max(2, int(BATCH_DATASET_FRACTION * training_enface_area(SYNTH) // area)) == 3
    big = spectralis_plans[80].configuration()
    assert big.batch_size * 48 * 512 <= BATCH_DATASET_FRACTION * training_enface_area(SPECTRALIS)
    assert big.batch_size <= 16


def test_dataset_level_fields(spectralis_plans):
    plan = spectralis_plans[8]
    assert plan.dataset_name == "Dataset901_Spectralis"
    assert plan.projection_axis == 1 and plan.num_input_channels == 1
    assert plan.labels == {"background": 0, "GA": 1}
    assert plan.enface_modalities == ["FAF", "SLO"]
    assert plan.normalization == "zscore_retina"
    assert plan.median_shape == (49, 496, 512)
    assert plan.enface_spacing == (SPACING[0], SPACING[2])
    assert plan.depth_crop == math.ceil(170 * 1.15)
    assert plan.configuration().depth == 128
    assert plan.default_configuration == "fpn"


def test_depth_rules():
    assert choose_depth(196) == 128  # 98 -> 128
    assert choose_depth(104) == 64  # 52 -> 64
    assert choose_depth(600) == 128  # capped
    assert choose_depth(20) == 64  # floor
    assert choose_depth(104, min_depth=128) == 128  # a network that needs 128
    fp = dict(SYNTH, retina_band_height_p95=150)
    assert depth_crop_rows(fp) == 160  # capped at the median depth
    assert depth_crop_rows(SYNTH) == math.ceil(90 * 1.15)


def test_plans_json_round_trip(spectralis_plans, tmp_path):
    plan = spectralis_plans[11]
    path = tmp_path / "plans.json"
    plan.save(path)
    loaded = Plan.load(path)
    assert loaded.to_dict() == plan.to_dict()
    assert loaded.configuration().memory == plan.configuration().memory
    assert loaded.configuration().patch_size == plan.configuration().patch_size


def test_replanning_keeps_other_configurations(synth_plans):
    first = copy.deepcopy(synth_plans[4])
    first.configurations["fpn"].batch_size = 7
    first.configurations["fpn"].training.epochs = 3
    first.configurations["fpn"].network.kwargs["features"] = [8, 16, 32, 64, 128]
    edited = copy.deepcopy(first.configurations["fpn"])
    replanned = plan_dataset(SYNTH, INFO, gpu_memory_gb=8, networks=("ipn",), existing=first, verbose=False)
    assert set(replanned.configurations) == {"fpn", "ipn"}
    assert replanned.configurations["fpn"] == edited
    assert replanned.default_configuration == "fpn"
    assert "ipn" not in first.configurations  # the existing plan is not modified
    assert replanned.configurations["ipn"].memory.total_bytes <= memory_budget_bytes(8)


def test_table_and_verbose_output(capsys):
    plan = plan_dataset(SYNTH, INFO, gpu_memory_gb=11, verbose=True)
    out = capsys.readouterr().out
    table = format_plan_table(plan)
    assert table in out
    assert "fpn" in table and "32 x 128" in table and "104 -> 64" in table and "/ 10.50" in table
    assert "4.37 M" in table


def test_errors():
    with pytest.raises(FPNError, match="unknown network"):
        plan_dataset(SYNTH, INFO, gpu_memory_gb=8, networks=("nope",), verbose=False)
    with pytest.raises(FPNError, match="does not fit"):
        plan_dataset(SPECTRALIS, INFO, gpu_memory_gb=0.6, verbose=False)
    if not torch.cuda.is_available():
        with pytest.raises(FPNError, match="CUDA"):
            plan_dataset(SYNTH, INFO, gpu_memory_gb=8, calibrate=True, verbose=False)
