"""Data roots: the nearest fpn_data folder, the roots line every command prints, fpn_paths."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fpnunet import paths
from fpnunet.commands.paths import main as paths_main

VARIABLES = ("FPN_RAW", "FPN_PREPROCESSED", "FPN_RESULTS")


@pytest.fixture
def no_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in VARIABLES:
        monkeypatch.delenv(var, raising=False)


def test_default_roots_are_the_nearest_fpn_data_upwards(tmp_path, monkeypatch, no_variables):
    project = tmp_path / "project"
    deep = project / "analysis" / "week1"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    # none yet: ./fpn_data of the current folder, said so
    assert paths.raw_root() == deep / "fpn_data" / "raw"
    assert "not created yet" in paths.roots_line()
    (project / "fpn_data").mkdir()
    assert paths.raw_root() == project / "fpn_data" / "raw"
    assert paths.results_root() == project / "fpn_data" / "results"
    line = paths.roots_line()
    assert line.startswith("data roots: FPN_RAW=") and "\n" not in line
    assert f"nearest fpn_data folder above the current one, {project / 'fpn_data'}" in line
    monkeypatch.chdir(project)
    assert paths.preprocessed_root() == project / "fpn_data" / "preprocessed"
    assert "./fpn_data of the current folder" in paths.roots_line()
    # a variable wins, and the line says which root comes from where
    monkeypatch.setenv("FPN_RESULTS", str(tmp_path / "elsewhere"))
    assert paths.results_root() == tmp_path / "elsewhere"
    assert f"FPN_RESULTS={tmp_path / 'elsewhere'}  " in paths.roots_line() + "  "
    assert f"FPN_RAW={project / 'fpn_data' / 'raw'}*" in paths.roots_line()


def test_every_command_prints_the_roots_first(data_roots, capsys):
    from fpnunet.commands.evaluate import main as evaluate_main

    raw, pre = data_roots
    with pytest.raises(SystemExit):
        evaluate_main(["-r", str(raw), "-p", str(raw / "nope")])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"data roots: FPN_RAW={raw}  FPN_PREPROCESSED={pre}  " \
                                  f"FPN_RESULTS={pre.parent / 'results'}"


def test_fpn_paths_lists_roots_and_datasets(data_roots, tiny_raw_dataset, capsys):
    import shutil

    raw, pre = data_roots
    shutil.copytree(tiny_raw_dataset, raw / "Dataset900_SynthGA")
    plan = {"configurations": {"fpn": {"data_identifier": "depth64"}}, "default_configuration": "fpn"}
    (pre / "Dataset900_SynthGA" / "depth64").mkdir(parents=True)
    (pre / "Dataset900_SynthGA" / "plans.json").write_text(json.dumps(plan))
    for case in ("a", "b"):
        (pre / "Dataset900_SynthGA" / "depth64" / f"{case}_seg.npy").write_bytes(b"")
    fold = pre.parent / "results" / "Dataset900_SynthGA" / "fpn__lf1__scratch" / "fold_2"
    fold.mkdir(parents=True)
    (raw / "Dataset901_Other").mkdir()
    assert paths_main([]) == 0
    out = capsys.readouterr().out
    assert f"FPN_RAW          {raw}\n" in out and "from FPN_RAW" in out
    assert "(does not exist yet)" not in out
    block = out.split("Dataset900_SynthGA\n")[1]
    assert "raw:          8 training cases (6 labelled), 2 test" in block
    assert "preprocessed: plans.json: fpn (depth64/: 2 labelled cases)" in block
    assert "results:      fpn__lf1__scratch (fold_2)" in block
    assert "Dataset901_Other" in out
    assert paths_main(["-d", "901"]) == 0
    one = capsys.readouterr().out
    assert "Dataset901_Other" in one and "Dataset900_SynthGA" not in one
    assert "raw:          0 training cases (0 labelled)" in one and "preprocessed: -" in one


def test_fpn_paths_without_datasets_says_how_to_make_one(data_roots, capsys):
    assert paths_main([]) == 0
    out = capsys.readouterr().out
    assert "datasets: none found (write one with fpn_make_synthetic" in out
    assert f"FPN_PREPROCESSED {data_roots[1]}  (does not exist yet)" in out


def test_plan_says_what_this_machine_trains_with(monkeypatch):
    """The note states the precision training will really pick on this CPU (FPN_CPU_BF16 forces it
    here, so the outcome does not depend on the CPU running the test)."""
    from fpnunet.commands.plan_and_preprocess import runtime_note
    from fpnunet.plans.plan import Configuration, Plan

    plan = Plan(dataset_name="Dataset900_X", configurations={"fpn": Configuration(precision="bf16")})
    monkeypatch.setenv("FPN_CPU_BF16", "0")
    note = runtime_note(plan, device="cpu")
    assert note.startswith("training on this machine: device cpu, precision fp32 (no CUDA here: the plan's bf16")
    assert note.endswith("--precision auto on this CPU: fp32: forced by FPN_CPU_BF16=0)")
    monkeypatch.setenv("FPN_CPU_BF16", "1")
    assert runtime_note(plan, device="cpu").startswith("training on this machine: device cpu, precision bf16 (")
    fp32_plan = Plan(dataset_name="Dataset900_X", configurations={"fpn": Configuration(precision="fp32")})
    assert "precision fp32 (" in runtime_note(fp32_plan, device="cpu")  # an fp32 plan stays fp32
    assert runtime_note(plan, device="cuda") == "training on this machine: device cuda, precision bf16 (the plan's)"


def test_paths_module_needs_no_cwd_data(tmp_path, monkeypatch, no_variables):
    monkeypatch.chdir(tmp_path)
    folder, found = paths.default_data_folder()
    assert (folder, found) == (Path(tmp_path) / "fpn_data", False)
