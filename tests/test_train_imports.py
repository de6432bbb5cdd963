"""What a tiny supervised ``fpn_train`` imports, so that the start-up cost does not creep back
(docs/design.md, "Measured"): one training step of test_training.py's dataset in a fresh process
(:func:`run_modules` of benchmarks/import_count.py, the script that measures the figure)."""
from __future__ import annotations

from benchmark_modules import load_benchmark
from test_training import dataset  # noqa: F401  (a fixture)

NOT_IN_A_SUPERVISED_RUN = (
    "fpnunet.training.cmc",            # the other trainers and the pretraining loss
    "fpnunet.training.reconstruction",
    "fpnunet.training.ssim",
    "fpnunet.inference.onnx_export",   # export paths and the Python API
    "fpnunet.inference.api",
    "fpnunet.inference.fused",         # only models with en-face inputs
    "fpnunet.preprocessing",           # training reads preprocessed volumes
    "fpnunet.networks.omnia",          # network families other than the plan's
    "fpnunet.networks.ipn",
    "fpnunet.networks.encoder_weights",
    "fpnunet.plans.planner",
    "fpnunet.plans.fingerprint",
)
OVERLAY_MODULES = {"fpnunet.report", "fpnunet.report.cases", "fpnunet.report.overlay"}
"""The report's modules the final validation's ``validation/overlays/`` needs; the HTML report, growth
rates, visits and uncertainty pages stay out."""
MAX_MODULES = 60
"""benchmarks/import_count.py's figure for this tree (docs/design.md); lower it when a change lowers it."""


def test_a_supervised_run_imports_its_own_trainer_and_nothing_of_the_others(dataset):  # noqa: F811
    mods = load_benchmark("import_count").run_modules("901")
    assert {"fpnunet.training.supervised", "fpnunet.networks.fpn", "fpnunet.report.cases"} <= set(mods)
    assert [m for m in mods if m.startswith(NOT_IN_A_SUPERVISED_RUN)] == []
    assert sorted(m for m in mods if m.startswith("fpnunet.report")) == sorted(OVERLAY_MODULES)
    assert len(mods) <= MAX_MODULES, f"{len(mods)} fpnunet modules:\n" + "\n".join(mods)
