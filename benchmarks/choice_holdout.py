"""The configuration choice against held-out test cases (docs/results.md, "Choosing the method").

For a finished ``fpn_find_best_configuration`` run (FPN_RAW/FPN_PREPROCESSED/FPN_RESULTS set to
its roots) and a raw dataset folder with ``imagesTs``/``enfaceTs``/``labelsTs`` (e.g. the same
``fpn_make_synthetic`` arguments with ``--num-test 80``)::

    OMP_NUM_THREADS=1 FPN_RAW=... FPN_PREPROCESSED=... FPN_RESULTS=... \\
      python benchmarks/choice_holdout.py -d 970 --test /tmp/raw80/Dataset970_Clear5 \\
        --work /tmp/s4-26/w970 --csv docs/choosing/holdout.csv [--check-best 8]
    python benchmarks/choice_holdout.py --report-only docs/choosing/holdout.csv

1. every candidate of the plan is predicted once on the test images (``fpn_predict --model``, its
   folds, flip TTA, probabilities saved; skipped when already there);
2. every pipeline the choice scored (candidates and ensembles, read from ``chosen_pipeline.json``
   through ``fpnunet/pipeline_files.py``) is made from those probabilities by ``fpn_predict
   --best``'s own averaging and post-processing (``fpnunet.inference.chosen.combine``; threshold
   0.5, and the chosen pipeline also with its chosen post-processing); ``--check-best N`` runs the
   real ``fpn_predict --best`` on the first N test cases and checks its masks are identical;
3. each case's test Dice (mean over the foreground classes) goes to the CSV (one row per dataset,
   pipeline and case; the dataset's earlier rows are replaced). The report (also ``--report-only``)
   prints per dataset the CV and test Dice of every pipeline, the chosen pipeline, the best
   candidate in hindsight, today's default (FPN + FAF SSL), the goal check on the first 8 and on
   all test cases, how well the CV ranks the pipelines (Spearman over the pipelines, CV Dice against
   test Dice on all cases), and the rules of ``choice_rules.py`` against today's.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from choice_rules import RULES, Pipeline, best_single, compare, verdict  # noqa: E402

from fpnunet.atomic import atomic_path  # noqa: E402
from fpnunet.cli_utils import run_cli  # noqa: E402
from fpnunet.errors import FPNError  # noqa: E402

DEFAULT = "fpn-ssl-FAF"
"""Today's default: fpn_train + --pretrained auto = FPN fine-tuned from the FAF pretraining."""
POSTPROCESSED = " [chosen post-processing]"
FIELDS = ["dataset", "pipeline", "members", "cv_dice", "cv_spread", "cv_folds", "chosen", "case", "test_dice"]
FIRST = 8


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _slug(name: str) -> str:
    return name.replace(" + ", "+").replace(" ", "_").replace("[", "").replace("]", "")


def predict_candidates(dataset: str, test: Path, work: Path) -> dict[str, Path]:
    """``{candidate: prediction folder}``, each predicted once with probabilities."""
    from fpnunet.paths import preprocessed_dir, resolve_dataset, results_dir  # lazy: start-up time
    from fpnunet.plans.plan import Plan  # lazy: start-up time
    from fpnunet.prediction_folder import PredictionFolder  # lazy: start-up time
    from fpnunet.preprocessed_dataset import plans_file  # lazy: start-up time
    from fpnunet.raw_dataset import images_dir  # lazy: start-up time
    from fpnunet.results_layout import list_folds  # lazy: start-up time

    name = resolve_dataset(dataset)
    n_images = len([p for p in images_dir(test, "Ts").iterdir() if p.is_file()])
    out = {}
    for cand in Plan.load(plans_file(preprocessed_dir(name))).candidates:
        folder = cand.model_folder_name()
        model_dir = results_dir(name) / folder
        if not model_dir.is_dir():
            continue
        dest = work / "candidates" / cand.name
        if len(PredictionFolder(dest).probabilities()) < n_images:
            folds = [f for f in list_folds(model_dir) if f.isdigit()]
            cmd = [_bin("fpn_predict"), "-d", dataset, "--model", folder, "-f", *folds, "-i",
                   str(images_dir(test, "Ts")), "-o", str(dest), "--device", "cpu", "--save-probabilities",
                   "--no-uncertainty"]
            print(f"predicting {cand.name} ({folder}, folds {' '.join(folds)})", file=sys.stderr)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out[cand.name] = dest
    return out


def pipeline_dice(members: list[Path], post_dict: dict | None, dest: Path, refs: dict, labels: dict[str, int],
                  name: str) -> dict[str, float]:
    """Per-case test Dice of the pipeline made by fpn_predict --best's own combination."""
    from fpnunet.evaluation.choose import foreground_dice  # lazy: start-up time
    from fpnunet.inference.chosen import combine  # lazy: start-up time
    from fpnunet.inference.postprocess import PostProcessing  # lazy: start-up time
    from fpnunet.prediction_folder import PredictionFolder, read_label_map  # lazy: start-up time

    post = PostProcessing.from_dict(post_dict) if post_dict else PostProcessing()
    folder = PredictionFolder(dest)
    combine([PredictionFolder(m) for m in members], folder, post, labels, name, False)
    masks = folder.masks()
    return {c: foreground_dice(refs[c][0], read_label_map(masks[c], labels)[0], labels) for c in refs}


def check_best(dataset: str, test: Path, work: Path, cases: list[str], ending: str, chosen_dir: Path,
               labels: dict[str, int]) -> str:
    """The real ``fpn_predict --best`` on ``cases``: are its masks those of ``chosen_dir``?"""
    from fpnunet.prediction_folder import PredictionFolder, read_label_map  # lazy: start-up time
    from fpnunet.raw_dataset import enface_dir, images_dir, volume_name  # lazy: start-up time

    sub = work / "check_best"
    (sub / "imagesTs").mkdir(parents=True, exist_ok=True)
    (sub / "enfaceTs").mkdir(exist_ok=True)
    for case in cases:
        img = images_dir(test, "Ts") / volume_name(case, ending)
        link = sub / "imagesTs" / img.name
        if not link.exists():
            link.symlink_to(img)
        for e in enface_dir(test, "Ts").glob(f"{case}_*"):
            if not (sub / "enfaceTs" / e.name).exists():
                (sub / "enfaceTs" / e.name).symlink_to(e)
    out = sub / "out"
    cmd = [_bin("fpn_predict"), "-d", dataset, "--best", "-i", str(sub / "imagesTs"), "--enface-dir",
           str(sub / "enfaceTs"), "-o", str(out), "--device", "cpu"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    real, ours = PredictionFolder(out).masks(), PredictionFolder(chosen_dir).masks()
    same = sum(np.array_equal(read_label_map(real[c], labels)[0], read_label_map(ours[c], labels)[0])
               for c in cases if c in real)
    return f"fpn_predict --best on the first {len(cases)} test cases: {same}/{len(cases)} masks identical"


def measure(args: argparse.Namespace) -> list[dict]:
    from fpnunet.paths import preprocessed_dir, resolve_dataset, results_dir  # lazy: start-up time
    from fpnunet.pipeline_files import read_chosen  # lazy: start-up time
    from fpnunet.plans.plan import Plan  # lazy: start-up time
    from fpnunet.prediction_folder import read_label_map  # lazy: start-up time
    from fpnunet.preprocessed_dataset import plans_file  # lazy: start-up time
    from fpnunet.raw_dataset import labels_dir  # lazy: start-up time

    name = resolve_dataset(args.dataset)
    plan = Plan.load(plans_file(preprocessed_dir(name)))
    choice = read_chosen(results_dir(name))
    test, work = Path(args.test), Path(args.work)
    label_files = sorted(p for p in labels_dir(test, "Ts").iterdir() if p.name.endswith(plan.file_ending))
    if not label_files:
        raise FPNError(f"{labels_dir(test, 'Ts')}: no label map ending in {plan.file_ending}")
    refs = {p.name[: -len(plan.file_ending)]: read_label_map(p, plan.labels) for p in label_files}
    cand = predict_candidates(args.dataset, test, work)
    chosen_name = " + ".join(m["candidate"] for m in choice["members"])
    rows = []
    scored = [s for s in choice["scores"] if all(m in cand for m in s["members"])]
    extra = [dict(s, name=s["name"] + POSTPROCESSED) for s in scored if s["name"] == chosen_name]
    default_post = choice["postprocessing"] == {"threshold": 0.5, "min_area_mm2": 0.0, "fill_holes": False,
                                                "keep_largest": False}
    for s in scored + ([] if default_post else extra):
        post = choice["postprocessing"] if s["name"].endswith(POSTPROCESSED) else None
        dest = work / "pipelines" / _slug(s["name"])
        per_case = pipeline_dice([cand[m] for m in s["members"]], post, dest, refs, plan.labels, s["name"])
        is_chosen = s["name"] == chosen_name + ("" if default_post else POSTPROCESSED)
        folds = " ".join(f"{f}:{v:.6f}" for f, v in s["fold_dice"].items())
        for case, d in per_case.items():
            rows.append({"dataset": name, "pipeline": s["name"], "members": "+".join(s["members"]),
                         "cv_dice": f"{s['dice']:.6f}", "cv_spread": f"{s['spread']:.6f}", "cv_folds": folds,
                         "chosen": int(is_chosen), "case": case, "test_dice": f"{d:.6f}"})
    if args.check_best:
        target = chosen_name if default_post else chosen_name + POSTPROCESSED
        print(check_best(args.dataset, test, work, sorted(refs)[: args.check_best], plan.file_ending,
                         work / "pipelines" / _slug(target), plan.labels))
    return rows


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    keep = [r for r in read_rows(path) if r["dataset"] not in {x["dataset"] for x in rows}] + rows
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(keep)


def read_pipelines(rows: list[dict]) -> tuple[list[Pipeline], dict[str, dict[str, float]], str]:
    tests: dict[str, dict[str, float]] = {}
    pipes: dict[str, Pipeline] = {}
    chosen = ""
    for r in rows:
        tests.setdefault(r["pipeline"], {})[r["case"]] = float(r["test_dice"])
        if str(r["chosen"]) == "1":
            chosen = r["pipeline"]
        if r["pipeline"] not in pipes and not r["pipeline"].endswith(POSTPROCESSED):
            folds = {k: float(v) for k, v in (x.split(":") for x in r["cv_folds"].split())}
            pipes[r["pipeline"]] = Pipeline(r["pipeline"], tuple(r["members"].split("+")), float(r["cv_dice"]),
                                            float(r["cv_spread"]), folds)
    return list(pipes.values()), tests, chosen


def mean_percent(per_case: dict[str, float], cases: list[str]) -> float:
    return 100 * float(np.mean([per_case[c] for c in cases]))


def goal_verdict(chosen: float, best: float, default: float) -> str:
    """The issue's goal on test Dice %: within 1 point of the best single candidate and not more than
    1 point below the default (a missing default, NaN, counts as met)."""
    return "met" if chosen >= best - 1 and not chosen < default - 1 else "MISSED"


def report(rows: list[dict]) -> str:
    out = []
    rule_lines = ["| dataset | test cases | rule | picks | test Dice | - best candidate | vs today: paired "
                  "per-case diff +- s.e. | verdict |", "|---|---|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        pipes, tests, chosen = read_pipelines([r for r in rows if r["dataset"] == dataset])
        cases = sorted(next(iter(tests.values())))
        sets = {f"first {FIRST}": cases[:FIRST], f"all {len(cases)}": cases}
        out += [f"### {dataset}", "", "| pipeline | CV Dice +- spread | " + " | ".join(
            f"test Dice ({k})" for k in sets) + " |", "|---|---|" + "---|" * len(sets)]
        by_name = {p.name: p for p in pipes}
        for name, per_case in tests.items():
            p = by_name.get(name) or by_name[name.replace(POSTPROCESSED, "")]
            mark = " **(chosen)**" if name == chosen else ""
            mark += " (default)" if name == DEFAULT else ""
            out.append(f"| {name}{mark} | {100 * p.cv_dice:.1f} +- {100 * p.cv_spread:.1f} | "
                       + " | ".join(f"{mean_percent(per_case, c):.1f}" for c in sets.values()) + " |")
        out.append("")
        singles = [p.name for p in pipes if len(p.members) == 1]
        for label, cs in sets.items():
            best = max(singles, key=lambda n: mean_percent(tests[n], cs))
            c, b = mean_percent(tests[chosen], cs), mean_percent(tests[best], cs)
            d = mean_percent(tests[DEFAULT], cs) if DEFAULT in tests else float("nan")
            if chosen.endswith(POSTPROCESSED):
                raw = mean_percent(tests[chosen.replace(POSTPROCESSED, "")], cs)
                post = f"; post-processing {c - raw:+.1f} ({'met' if c >= raw else 'MISSED'})"
            else:
                post = "; post-processing: none kept (met)"
            goal = goal_verdict(c, b, d)
            out.append(f"- {label}: chosen {c:.1f}, best candidate in hindsight {best} {b:.1f} (chosen - best "
                       f"{c - b:+.1f}), default {d:.1f} (chosen - default {c - d:+.1f}){post}: goal {goal}")
        out.append("")
        today = RULES["a-today"](pipes).name
        for rule, fn in RULES.items():
            pick = fn(pipes).name
            for label, cs in sets.items():
                best = max(mean_percent(tests[n], cs) for n in singles)
                mean, se = compare({c: tests[pick][c] for c in cs}, {c: tests[today][c] for c in cs})
                got = mean_percent(tests[pick], cs)
                rule_lines.append(f"| {dataset} | {label} | {rule} | {pick} | {got:.1f} | {got - best:+.1f} | "
                                  f"{100 * mean:+.1f} +- {100 * se:.1f} | {verdict(mean, se)} |")
        ranked = [n for n in tests if not n.endswith(POSTPROCESSED)]
        rho = spearmanr([by_name[n].cv_dice for n in ranked], [mean_percent(tests[n], cases) for n in ranked])[0]
        out += [f"- does the CV rank the pipelines as the test does? Spearman over the {len(ranked)} pipelines, "
                f"CV Dice vs test Dice (all {len(cases)}): {rho:.2f}", ""]
        fresh = cases[FIRST:]
        if fresh:
            single = best_single(pipes).name
            mean, se = compare({c: tests[single][c] for c in fresh}, {c: tests[today][c] for c in fresh})
            out += [f"- the {len(fresh)} new cases only: best single by CV ({single}) - today's choice "
                    f"{100 * mean:+.1f} +- {100 * se:.1f} (s.e.)", ""]
    return "\n".join(out + ["### Rules (choice_rules.py) against today's, per dataset", ""] + rule_lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", "--dataset")
    p.add_argument("--test", help="raw dataset folder with imagesTs, enfaceTs, labelsTs")
    p.add_argument("--work", help="scratch folder for the predictions")
    p.add_argument("--csv", help="per-case CSV to update (this dataset's rows replaced)")
    p.add_argument("--check-best", type=int, default=0, metavar="N",
                   help="also run fpn_predict --best on the first N test cases and compare the masks")
    p.add_argument("--report-only", metavar="CSV", help="reprint the report of a CSV")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report_only:
        rows = read_rows(Path(args.report_only))
        if not rows:
            raise FPNError(f"{args.report_only}: no rows")
        print(report(rows))
        return 0
    if not (args.dataset and args.test and args.work):
        raise FPNError("give -d, --test and --work (or --report-only CSV)")
    if not Path(args.test).is_dir():
        raise FPNError(f"--test {args.test}: not a folder")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = measure(args)
    if args.csv:
        write_rows(Path(args.csv), rows)
    print(report(rows))
    print(json.dumps({"cases": len({r['case'] for r in rows}), "pipelines": len({r['pipeline'] for r in rows})}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main)())
