"""One flag vocabulary across every console script of setup.py, light parsers, defaults in --help.

The walker reads the console scripts from setup.py (so commands added later are checked too),
captures each command's parser in a subprocess by calling its ``main`` with a patched
``ArgumentParser.parse_known_args`` (every parse path goes through it), and checks:

* a flag of :data:`fpnunet.cli_args.VOCABULARY` has the same dest, type, nargs and default (unless
  the vocabulary leaves the default to the command) in every command, with all its aliases;
* every option that takes a value says its default in its help;
* building the parser and formatting the help imported no heavy module (torch, numpy, ...).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fpnunet import cli_args

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "SimpleITK", "pandas", "matplotlib", "scipy", "batchgenerators")


def console_scripts() -> dict[str, str]:
    """``{command: "module:function"}`` from setup.py's entry points."""
    text = (ROOT / "setup.py").read_text()
    found = dict(re.findall(r"[\"'](fpn_\w+)\s*=\s*([\w.]+:\w+)[\"']", text))
    assert len(found) >= 7, found
    return found


WALKER = r"""
import argparse, importlib, json, sys

HEAVY = %(heavy)r
SCRIPTS = %(scripts)r


class Captured(BaseException):
    pass


captured = []


def capture(self, args=None, namespace=None):
    captured.append(self)
    raise Captured


argparse.ArgumentParser.parse_known_args = capture
out = {}
for name, target in SCRIPTS.items():
    module, func = target.split(":")
    captured.clear()
    try:
        getattr(importlib.import_module(module), func)([])
    except Captured:
        pass
    except SystemExit as exc:
        out[name] = {"error": f"exited {exc.code} before parsing"}
        continue
    if not captured:
        out[name] = {"error": "main() returned without parsing arguments"}
        continue
    parser = captured[0]
    parser.format_help()
    actions = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        actions.append({"options": list(a.option_strings), "dest": a.dest,
                        "type": getattr(a.type, "__name__", None) if a.type is not None else None,
                        "nargs": a.nargs, "default": repr(a.default), "required": a.required,
                        "help": a.help or "", "takes_value": a.nargs != 0})
    out[name] = {"actions": actions, "heavy": [m for m in HEAVY if m in sys.modules]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def walked() -> dict:
    code = WALKER % {"heavy": HEAVY, "scripts": console_scripts()}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = {k: v["error"] for k, v in out.items() if "error" in v}
    assert not errors, errors
    return out


def _vocabulary_by_option() -> dict[str, tuple[str, cli_args.Flag]]:
    return {o: (key, flag) for key, flag in cli_args.VOCABULARY.items() for o in flag.options}


def test_every_console_script_is_walked(walked):
    assert set(walked) == set(console_scripts())
    assert {"fpn_train", "fpn_predict", "fpn_paths"} <= set(walked)


def test_shared_flags_mean_the_same_in_every_command(walked):
    by_option = _vocabulary_by_option()
    problems = []
    uses: dict[str, set[str]] = {}
    for command, info in walked.items():
        for a in info["actions"]:
            keys = {by_option[o][0] for o in a["options"] if o in by_option}
            for key in keys:
                flag = cli_args.VOCABULARY[key]
                uses.setdefault(key, set()).add(command)
                where = f"{command} {'/'.join(a['options'])}"
                missing = [o for o in flag.options if o not in a["options"]]
                if missing:
                    problems.append(f"{where}: lacks the alias(es) {missing} of {'/'.join(flag.options)}")
                if a["dest"] != flag.dest:
                    problems.append(f"{where}: dest {a['dest']!r}, the vocabulary says {flag.dest!r}")
                want_type = getattr(flag.type, "__name__", None) if flag.type is not None else None
                if flag.nargs != 0 and a["type"] not in (want_type, None if want_type == "str" else want_type):
                    problems.append(f"{where}: type {a['type']}, the vocabulary says {want_type}")
                if (flag.nargs == 0) != (a["nargs"] == 0):
                    problems.append(f"{where}: switch/value mismatch with the vocabulary")
                elif flag.nargs not in (0, cli_args.ANY) and a["nargs"] != flag.nargs and key != "config":
                    problems.append(f"{where}: nargs {a['nargs']!r}, the vocabulary says {flag.nargs!r}")
                if flag.default is not cli_args.ANY and a["default"] != repr(flag.default) and not a["required"]:
                    problems.append(f"{where}: default {a['default']}, the vocabulary says {flag.default!r}")
    assert not problems, "\n".join(problems)
    # the vocabulary is really shared: the dataset everywhere it is needed, devices and folds alike
    assert {"fpn_plan_and_preprocess", "fpn_pretrain", "fpn_train", "fpn_predict", "fpn_evaluate",
            "fpn_paths"} <= uses["dataset"]
    assert {"fpn_predict", "fpn_evaluate"} <= uses["folds"]
    assert {"fpn_plan_and_preprocess", "fpn_pretrain", "fpn_train", "fpn_predict"} <= uses["config"]
    assert {"fpn_pretrain", "fpn_train", "fpn_predict"} <= uses["device"]
    assert {"fpn_make_synthetic", "fpn_plan_and_preprocess", "fpn_pretrain", "fpn_train"} <= uses["progress"]


def test_every_option_with_a_value_shows_its_default(walked):
    missing = [f"{command} {'/'.join(a['options'])}: {a['help']!r}"
               for command, info in walked.items() for a in info["actions"]
               if a["options"] and a["takes_value"] and not a["required"] and "default" not in a["help"].lower()]
    assert not missing, "\n".join(missing)


def test_parsers_and_help_import_nothing_heavy(walked):
    heavy = {command: info["heavy"] for command, info in walked.items() if info["heavy"]}
    assert not heavy, f"building the parser / formatting --help imported {heavy}"


# ----------------------------------------------------------------------------- --help in a fresh process
def _help(module: str, argv: list[str], env: dict | None = None) -> tuple[str, list[str]]:
    code = (f"import sys\nfrom {module} import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    text, _, heavy = proc.stdout.rpartition("HEAVY ")
    return text, eval(heavy)  # noqa: S307 - our own repr of a list of str


def test_help_with_a_dataset_shows_the_plans_values_without_torch(data_roots, tmp_path):
    import os

    from fpnunet.plans.plan import Configuration, Plan, TrainingDefaults

    _, pre = data_roots
    plan = Plan(dataset_name="Dataset907_Help", configurations={"fpn": Configuration(
        batch_size=5, training=TrainingDefaults(epochs=123, iterations_per_epoch=77, lr=0.03, pretrain_epochs=9))})
    plan.save(pre / "Dataset907_Help" / "plans.json")
    env = dict(os.environ)
    text, heavy = _help("fpnunet.commands.train", ["907", "0", "--help"], env)
    assert heavy == []
    flat = " ".join(text.split())
    assert "default 123 epochs, from" in flat and "plans.json [fpn]" in flat
    assert "default 77 iterations" in flat and "default 0.03," in flat and "default 5," in flat
    text, heavy = _help("fpnunet.commands.pretrain", ["-d", "907", "--help"], env)
    assert heavy == [] and "default 9 epochs" in " ".join(text.split())
    # without a dataset: where the value comes from and an example
    text, heavy = _help("fpnunet.commands.train", ["--help"], env)
    assert heavy == []
    flat = " ".join(text.split())
    assert "default: from plans.json, e.g. 40 epochs" in flat and "e.g. fpn_train 900 0 --help" in flat


# ----------------------------------------------------------------------------- old and new spellings
def test_train_and_pretrain_take_the_dataset_both_ways():
    from fpnunet.commands.pretrain import parse_args as pretrain_args
    from fpnunet.commands.train import parse_args as train_args

    for argv in (["900", "1"], ["-d", "900", "1"], ["1", "-d", "900"], ["900", "--epochs", "3", "1"],
                 ["--dataset", "900", "1"]):
        a = train_args(argv)
        assert (a.dataset, a.fold) == ("900", "1"), argv
    a = train_args(["900", "all", "--network", "ipn", "--device", "cpu"])
    assert (a.fold, a.config, a.device) == ("all", "ipn", "cpu")
    a = train_args(["900", "0", "-c", "ipn", "-device", "cpu", "--no-progress", "--heartbeat", "5"])
    assert (a.config, a.device, a.progress, a.heartbeat) == ("ipn", "cpu", False, 5.0)
    assert pretrain_args(["900"]).dataset == pretrain_args(["-d", "900"]).dataset == "900"
    assert pretrain_args(["900", "--config", "ipn"]).config == pretrain_args(["-d", "900", "-c", "ipn"]).config


@pytest.mark.parametrize("argv, message", [
    (["-d", "900"], "the fold is required"),
    ([], "the dataset is required"),
    (["900", "0", "-d", "901"], "two datasets given"),
    (["900", "x"], "invalid fold 'x'"),
    (["-d", "900", "x"], "invalid fold 'x'"),
])
def test_train_dataset_errors(argv, message, capsys):
    from fpnunet.commands.train import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_predict_and_evaluate_spellings():
    from fpnunet.commands.evaluate import build_parser as evaluate_parser
    from fpnunet.commands.predict import build_parser as predict_parser

    base = ["-i", "in", "-o", "out", "-d", "900"]
    old = predict_parser().parse_args([*base, "--network", "ipn", "--checkpoint", "best", "--save-probabilities",
                                       "--device", "cpu", "--folds", "0", "all"])
    new = predict_parser().parse_args([*base, "-c", "ipn", "-chk", "best", "--npz", "-device", "cpu", "-f", "0",
                                       "all"])
    assert vars(old) == vars(new)
    assert (new.config, new.checkpoint, new.save_probabilities, new.device, new.folds) == \
        ("ipn", "best", True, "cpu", ["0", "all"])
    assert evaluate_parser().parse_args(["--crossval", "-d", "9", "--folds", "0", "2"]).folds == \
        evaluate_parser().parse_args(["--crossval", "-d", "9", "-f", "0", "2"]).folds == ["0", "2"]


def test_plan_and_preprocess_spellings():
    from fpnunet.commands.plan_and_preprocess import build_parser

    p = build_parser()
    assert p.parse_args(["-d", "9", "--network", "fpn", "ipn"]).config == ["fpn", "ipn"]
    assert p.parse_args(["-d", "9", "-c", "ipn"]).config == ["ipn"]
    assert p.parse_args(["-d", "9", "--no-progress"]).progress is False
