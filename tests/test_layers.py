"""The layer contract (pyproject.toml, checked by import-linter), lazy imports named as such, and
every command's shape and data-roots line (docs/design.md, "Layers")."""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import lint_imports  # noqa: E402

CODE_FOLDERS = [REPO / "fpnunet", REPO / "plans", REPO / "preprocessing", REPO / "inference"]
LAZY = "# lazy: start-up time"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lint_imports.stage_installed_layout(tmp_path_factory.mktemp("stage"))


def test_the_staged_package_has_the_installed_layout(staged):
    # setup.py's package_dir maps plans/, preprocessing/, inference/ into fpnunet: the linter must see them
    for name in ("plans/planner.py", "preprocessing/storage.py", "inference/predictor.py", "commands/predict.py"):
        assert (staged / "fpnunet" / name).is_file(), name


def test_the_import_contracts_are_kept(staged):
    done = lint_imports.lint_imports(staged)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout
    # 139+ files: the three stages beside fpnunet/ were analysed, not only fpnunet/ itself
    assert int(re.search(r"Analyzed (\d+) files", done.stdout).group(1)) > 130


@pytest.mark.parametrize("module, line, broken", [
    # core importing the report: a lower layer importing a higher one
    ("fpnunet/io.py", "import fpnunet.report.overlay", "fpnunet.io is not allowed to import fpnunet.report"),
    # inference importing training
    ("fpnunet/inference/export.py", "import fpnunet.training.losses",
     "fpnunet.inference is not allowed to import fpnunet.training"),
    # a pipeline stage importing a command
    ("fpnunet/evaluation/metrics.py", "import fpnunet.commands.paths",
     "fpnunet.evaluation is not allowed to import fpnunet.commands"),
    # a cycle inside a package, hidden in a function
    ("fpnunet/preprocessing/depth.py", "def _f():\n    import fpnunet.preprocessing.storage",
     "No cycles are allowed in fpnunet.preprocessing"),
])
def test_a_violation_breaks_the_contract(tmp_path, module, line, broken):
    stage = lint_imports.stage_installed_layout(tmp_path)
    with open(stage / module, "a") as f:
        f.write(f"\n{line}\n")
    done = lint_imports.lint_imports(stage)
    assert done.returncode == 1
    assert broken in done.stdout, done.stdout


def test_a_new_top_level_module_must_be_placed_in_a_layer(tmp_path):
    stage = lint_imports.stage_installed_layout(tmp_path)
    (stage / "fpnunet" / "unplaced.py").write_text('"""Not in any layer."""\n')
    done = lint_imports.lint_imports(stage)
    assert done.returncode == 1 and "fpnunet.unplaced" in done.stdout


def _function_level_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every import of an fpnunet module inside a function of ``path``."""
    source = path.read_text()
    lines = source.splitlines()
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in child.names] if isinstance(child, ast.Import) else [child.module or ""]
                if isinstance(child, ast.ImportFrom) and child.level or any(n.startswith("fpnunet") for n in names):
                    found.append((child.lineno, lines[child.lineno - 1]))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(source), False)
    return found


def test_function_level_imports_are_named_lazy_for_start_up_time():
    """No import inside a function to dodge a cycle: each one keeps torch & co. out of ``--help``
    and says so."""
    unnamed = []
    for folder in CODE_FOLDERS:
        for path in sorted(folder.rglob("*.py")):
            unnamed += [f"{path.relative_to(REPO)}:{n}: {text.strip()}"
                        for n, text in _function_level_imports(path) if LAZY not in text]
    assert not unnamed, "import at the top, or mark a start-up import " + LAZY + ":\n" + "\n".join(unnamed)


def test_the_scan_finds_an_unnamed_function_level_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text(f"def f():\n    from fpnunet.io import read_image\n\n\ndef g():\n    import fpnunet.paths  {LAZY}\n")
    assert [n for n, text in _function_level_imports(bad) if LAZY not in text] == [2]


def test_package_inits_hold_no_re_export_tables():
    for folder in CODE_FOLDERS:
        for init in folder.rglob("__init__.py"):
            tree = ast.parse(init.read_text())
            names = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                     if isinstance(t, ast.Name)}
            functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
            assert not {"_LAZY", "__getattr__", "__dir__"} & (names | functions), init
    assert not (REPO / "fpnunet" / "lazy.py").exists()


def test_the_packages_import_nothing_heavy():
    code = ("import sys, fpnunet.inference, fpnunet.evaluation, fpnunet.synthetic, fpnunet.preprocessing, "
            "fpnunet.report, fpnunet.commands\n"
            "heavy = [m for m in ('torch', 'numpy', 'scipy') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------- the commands
COMMANDS = ["predict", "evaluate", "report", "plan_and_preprocess", "make_synthetic", "paths", "convert_checkpoint",
            "train", "pretrain", "train_folds", "export_model", "install_model", "suggest_labels",
            "find_best_configuration", "export_dicom"]


def test_every_console_script_but_import_is_a_command_module():
    text = (REPO / "setup.py").read_text()
    targets = re.findall(r'"(fpn_\w+)=([\w.]+):main"', text)
    assert len(targets) == len(COMMANDS) + 1  # every command, and fpn_import
    for script, module in targets:
        if script == "fpn_import":  # the importer's own package, on top beside the commands
            continue
        assert module.startswith("fpnunet.commands."), (script, module)
    assert sorted(m.split(".")[-1] for _, m in targets if m.startswith("fpnunet.commands.")) == sorted(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_one_shape(name):
    module = importlib.import_module(f"fpnunet.commands.{name}")
    for part in ("build_parser", "config_from_args", "run", "main"):
        assert callable(getattr(module, part, None)), f"fpnunet.commands.{name}.{part}"
    source = Path(module.__file__).read_text()
    bodies = {n.name: ast.get_source_segment(source, n) for n in ast.parse(source).body
              if isinstance(n, ast.FunctionDef)}
    main = bodies["main"]
    if name in ("train", "pretrain"):  # torchrun relaunches main; the config is built inside the job
        main = bodies[name]
    assert ("config_from_args(" in main and "run(" in main
            or "run_command(argv, build_parser, config_from_args, run)" in main), main
    assert any(s in bodies["main"] for s in ("parse_args(", "parse_known_args(", "run_command(argv, build_parser"))
    # fpn_paths' whole output is the roots (with where each comes from); every other prints the line
    assert name == "paths" or any(s in bodies["main"] for s in ("print_data_roots()", "run_command(", "run_or_launch("))


def _first_line_and_error(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    captured = capsys.readouterr()
    return captured.out.splitlines()[0], captured.err


def test_fpn_report_prints_the_data_roots_line(data_roots, tmp_path, capsys):
    from fpnunet.commands.report import main as report_main
    from fpnunet.paths import roots_line

    pred = tmp_path / "pred"
    pred.mkdir()
    assert report_main(["-p", str(pred)]) == 0  # an empty prediction folder: an empty report
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == roots_line() and lines[0].startswith("data roots: FPN_RAW=")
    assert lines[1] == f"report: {pred / 'report.html'}" and (pred / "report.html").is_file()


def test_fpn_convert_checkpoint_prints_the_data_roots_line(data_roots, tmp_path, capsys):
    from fpnunet.commands.convert_checkpoint import main as convert_main
    from fpnunet.paths import roots_line

    with pytest.raises(SystemExit):
        convert_main([str(tmp_path / "missing.pth")])
    first, err = _first_line_and_error(capsys)
    assert first == roots_line()
    assert "missing.pth: checkpoint not found" in err
