"""One owner per on-disk format: no module outside the owner spells the owned file names.

The owners (docs/layout.md, "Who owns which format"):

* ``fpnunet/raw_dataset.py``: ``dataset.json`` and the raw layout (``imagesTr`` ... ``CASE_0000``);
* ``fpnunet/preprocessed_dataset.py``: ``CASE.npy``, ``CASE_seg.npy``, ``CASE_<MOD>.npy``,
  ``CASE.json`` and the completion record;
* ``fpnunet/prediction_folder.py``: masks ``CASE<ending>``, ``CASE.npz``, ``lesion_areas.csv``,
  ``failed_cases.csv``.

The check reads every source module (``ast``), skips docstrings and any string with whitespace in
it (messages and help texts may name the files), and looks at the rest, f-strings reduced to a
template with ``{}`` for each formatted value: a template that matches an owned name is a module
building that name by hand, allowed only in its owner (plus the short :data:`ALLOWED` list).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("fpnunet", "plans", "preprocessing", "inference")

RAW = "fpnunet/raw_dataset.py"
PRE = "fpnunet/preprocessed_dataset.py"
PRED = "fpnunet/prediction_folder.py"

OWNED: dict[str, tuple[str, str]] = {
    # pattern on the template -> (owner, what)
    r"dataset\.json": (RAW, "dataset.json"),
    r"^(images|labels|enface)(Tr|Ts|\{\})$": (RAW, "a raw layout folder"),
    r"_0000": (RAW, "a volume's channel suffix"),
    r"^\{\}_\{\}\{E\}$": (RAW, "an en-face image CASE_<MOD><ending>"),
    r"_seg\.npy": (PRE, "a preprocessed label map"),
    r"^\{\}(_\{\})?\.npy$": (PRE, "a preprocessed volume or en-face image"),
    r"^\{\}\.json$": (PRE, "a preprocessed case's properties CASE.json"),
    r"preprocessing_complete": (PRE, "the completion record"),
    r"plans\.json": (PRE, "the plan"),
    r"lesion_areas\.": (PRED, "the lesion-area table"),
    r"failed_cases\.": (PRED, "the failed-case table"),
    r"^\{\}\.npz$": (PRED, "a probabilities file"),
    r"^\{\}\{E\}$": (PRED, "a mask CASE<ending>"),
}

ALLOWED: dict[tuple[str, str], str] = {
    # (module, pattern) -> why
    ("fpnunet/raw_dataset.py", r"^\{\}\{E\}$"):
        "label_name: a raw label map is CASE<ending> too",
    ("fpnunet/results_layout.py", r"^\{\}\.json$"):
        "the model folder's own json files (results_layout owns the model folder)",
}


def _name(expr: ast.AST) -> str:
    if isinstance(expr, ast.Call):
        expr = expr.func
    return expr.id if isinstance(expr, ast.Name) else expr.attr if isinstance(expr, ast.Attribute) else ""


def template(node: ast.AST) -> str | None:
    """The text of a string constant, or an f-string with ``{E}`` for a formatted value named like a
    file ending (``ending``, ``file_ending(p)``, ``info.file_ending``, ``end``) and ``{}`` for any
    other; ``None`` for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant)
                       else "{E}" if "end" in _name(v.value).lower() else "{}"  # type: ignore[attr-defined]
                       for v in node.values)
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # attribute docstrings
            ids.add(id(node.value))
    return ids


def violations(source: str, module: str) -> list[str]:
    """``"module:line: what (owner)"`` for every owned name ``source`` builds outside its owner."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip or id(node) in inner:
            continue
        text = template(node)
        if text is None or not text or re.search(r"\s", text):
            continue
        for pattern, (owner, what) in OWNED.items():
            if re.search(pattern, text) and module != owner and (module, pattern) not in ALLOWED:
                found.append(f"{module}:{node.lineno}: {text!r} builds {what} (owner: {owner})")
    return found


def source_modules() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py"))


def test_no_module_outside_an_owner_spells_an_owned_file_name():
    found = [v for p in source_modules()
             for v in violations(p.read_text(), p.relative_to(ROOT).as_posix())]
    assert not found, "file names built outside their owner:\n" + "\n".join(found)


def test_the_owners_exist_and_the_allowed_list_is_used():
    modules = {p.relative_to(ROOT).as_posix() for p in source_modules()}
    assert {RAW, PRE, PRED} <= modules
    for module, pattern in ALLOWED:
        assert module in modules and pattern in OWNED


# ----------------------------------------------------------------------------- the checker itself
@pytest.mark.parametrize("line, what", [
    ('p = folder / "dataset.json"', "dataset.json"),
    ('p = raw / "imagesTr"', "a raw layout folder"),
    ('p = raw / f"labels{split}"', "a raw layout folder"),
    ('p = d / f"{case}_0000{ending}"', "channel suffix"),
    ('n = sum(1 for _ in d.glob("*_0000.*"))', "channel suffix"),
    ('p = d / f"{case}_seg.npy"', "preprocessed label map"),
    ('p = d / f"{case}.npy"', "preprocessed volume"),
    ('p = d / f"{case}_{mod}.npy"', "preprocessed volume or en-face"),
    ('props = load_json(d / f"{case}.json")', "CASE.json"),
    ('RECORD = "preprocessing_complete.json"', "completion record"),
    ('t = out / "lesion_areas.csv"', "lesion-area table"),
    ('f = "failed_cases.csv"', "failed-case table"),
    ('p = out / f"{case}.npz"', "probabilities"),
    ('p = out / f"{case}{ending}"', "a mask"),
    ('p = enf / f"{case}_{mod}{end}"', "en-face image"),
    ('p = d / f"{case}_{mod}{file_ending(p)}"', "en-face image"),
])
def test_the_checker_catches_a_module_building_an_owned_name(line, what):
    found = violations(f"def f(folder, raw, d, out, enf, case, mod, split, ending, end):\n    {line}\n",
                       "fpnunet/somewhere.py")
    assert len(found) == 1 and what in found[0] and found[0].startswith("fpnunet/somewhere.py:2:")


def test_the_checker_allows_messages_docstrings_and_owners():
    source = '''"""Reads dataset.json and CASE_seg.npy (a docstring may name them)."""
def f(path, case):
    """imagesTr/CASE_0000.nii.gz"""
    raise ValueError(f"{path}: dataset.json is missing ({case}_seg.npy too)")
'''
    assert violations(source, "fpnunet/somewhere.py") == []
    assert violations('NAME = "dataset.json"\n', RAW) == []
    assert violations('NAME = "dataset.json"\n', PRE) != []  # only its own owner
    assert violations('def f(case, ending):\n    return f"{case}{ending}"\n', RAW) == []  # the allowed list
    assert violations('def f(a, b):\n    return f"{a}{b}" + f"{a}_{b}{a}"\n', "fpnunet/x.py") == []  # no ending
