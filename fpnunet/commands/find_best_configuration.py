"""``fpn_find_best_configuration -d ID``: choose the pipeline by cross-validation.

::

    fpn_train_folds -d 900 -c all                 # every candidate, five folds, with --npz
    fpn_find_best_configuration -d 900            # scores, the choice, its post-processing
    fpn_predict -d 900 --best -i IN -o OUT         # predicts with exactly the choice

Scores every candidate of the plan that has out-of-fold validation probabilities, and every
ensemble of two and three of them (averaged probabilities), by cross-validation Dice; picks the
best; decides post-processing on the same predictions, keeping a step only when its paired gain
is beyond the noise over the folds (:mod:`fpnunet.evaluation.choose`). Writes
``$FPN_RESULTS/DatasetXXX/chosen_pipeline.json`` (tools) and ``chosen_pipeline.txt`` (people)
and prints the table.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpnunet import cli_args
from fpnunet.choice_caveats import caveats, points
from fpnunet.cli_utils import run_cli
from fpnunet.errors import FPNError
from fpnunet.preprocessed_dataset import plans_file

if TYPE_CHECKING:
    from fpnunet.evaluation.choose import OutOfFold
    from fpnunet.plans.plan import Plan

PROGRAM = "fpn_find_best_configuration"


@dataclass(frozen=True)
class FindBestConfig:
    dataset: str
    candidates: tuple[str, ...] = ()
    max_members: int = 3
    postprocessing: bool = True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROGRAM, description="Choose the best candidate configuration or ensemble by "
                                "cross-validation, and its post-processing; write chosen_pipeline.json.")
    cli_args.add_dataset(p)
    p.add_argument(*cli_args.VOCABULARY["config"].options, dest="config", nargs="+", default=["all"], metavar="NAME",
                   help="candidates to compare (default all: every candidate of the plan with out-of-fold "
                        "probabilities)")
    p.add_argument("--max-members", type=int, default=3, choices=(1, 2, 3),
                   help="largest ensemble tried (default 3; 1: single candidates only)")
    p.add_argument("--no-postprocessing", dest="postprocessing", action="store_false",
                   help="keep threshold 0.5 and no component filtering")
    return p


def config_from_args(args: argparse.Namespace) -> FindBestConfig:
    names = () if args.config == ["all"] else tuple(args.config)
    if "all" in names:
        raise FPNError("-c: give 'all' alone, or candidate names")
    return FindBestConfig(args.dataset, names, args.max_members, args.postprocessing)


def run(config: FindBestConfig) -> int:
    from fpnunet.evaluation.choose import (  # lazy: start-up time
        cases_without_lesion,
        choose_postprocessing,
        compatible,
        ensemble_probs,
        load_out_of_fold,
        load_references,
        rank,
        score,
        within_noise,
    )
    from fpnunet.inference.postprocess import PostProcessing  # lazy: start-up time
    from fpnunet.paths import preprocessed_dir, raw_dir, resolve_dataset, results_dir  # lazy: start-up time
    from fpnunet.pipeline_files import chosen_plot_file, write_chosen  # lazy: start-up time
    from fpnunet.plans.candidates import check_distinct  # lazy: start-up time
    from fpnunet.plans.plan import Plan  # lazy: start-up time
    from fpnunet.raw_dataset import labels_dir  # lazy: start-up time

    name = resolve_dataset(config.dataset)
    plan = Plan.load(plans_file(preprocessed_dir(name)))
    wanted = [plan.candidate(n) for n in config.candidates] if config.candidates else list(plan.candidates)
    if not wanted:
        raise FPNError(f"plans.json of {name} lists no candidate; run fpn_plan_and_preprocess -d {config.dataset}")
    check_distinct(wanted)
    results = results_dir(name)
    oofs, notes = [], []
    for cand in wanted:
        oof, why = load_out_of_fold(results, cand.name, cand.model_folder_name())
        if oof is None:
            notes.append(why)
        else:
            oofs.append(oof)
    oofs, more = compatible(oofs)
    notes += more
    if not oofs:
        raise FPNError(f"no candidate of {name} has out-of-fold probabilities: {'; '.join(notes)}")
    cases = sorted(oofs[0].case_fold)
    refs = load_references(labels_dir(raw_dir(name), "Tr"), cases, plan.file_ending, plan.labels)
    scores = rank(oofs, refs, plan.labels, config.max_members)
    best = scores[0]
    by_name = {o.name: o for o in oofs}
    chosen = [by_name[m] for m in best.members]
    probs = chosen[0].probs if len(chosen) == 1 else ensemble_probs(chosen)
    if config.postprocessing:
        post, steps = choose_postprocessing(probs, refs, oofs[0].case_fold, plan.labels)
    else:
        post, steps = PostProcessing(), []
    final = score(probs, refs, oofs[0].case_fold, plan.labels, post, best.members)
    command = f"fpn_predict -d {config.dataset} --best -i INPUT_FOLDER -o OUTPUT_FOLDER"
    choice: dict[str, Any] = {
        "dataset": name,
        "members": [{"candidate": o.name, "model_folder": o.model_folder, "folds": o.folds} for o in chosen],
        "checkpoint": "final", "tta": True,
        "postprocessing": post.to_dict(), "postprocessing_steps": steps,
        "cv_dice": best.dice, "cv_spread": best.spread, "cv_dice_postprocessed": final.dice,
        "cases": len(cases), "scores": [s.to_dict() for s in scores], "not_compared": notes,
        "within_noise": within_noise(scores, oofs[0].case_fold),
        "short_training": short_training(plan, oofs, results),
        "cases_without_lesion": cases_without_lesion(refs),
        "predict_command": command,
    }
    text = format_choice(choice)
    from fpnunet.report.choice_plot import draw_choice  # lazy: start-up time (matplotlib)

    json_path, text_path = write_chosen(results, choice, text, draw_choice(choice))
    print(text)
    print(f"wrote {json_path}, {text_path} and {chosen_plot_file(results)}")
    return 0


def short_training(plan: Plan, oofs: list[OutOfFold], results: Path) -> list[dict[str, Any]]:
    """The candidates whose folds trained fewer steps (epochs x iterations) than the plan's schedule
    for their configuration: ``{candidate, steps, planned}`` (the fewest steps over its folds).

    On folds of 6 x 8 steps the choice missed the best candidate by up to 7.8 Dice points, on 6 x 32
    by at most 1.0 (docs/results.md, "Choosing the method"), so a choice made on shortened training
    is named as such. Folds without ``run_config.json`` (trained before it existed) are not judged."""
    from fpnunet.results_layout import fold_folder_name  # lazy: start-up time
    from fpnunet.training.run_config import RUN_CONFIG_FILE, RunConfig  # lazy: start-up time

    out = []
    for o in oofs:
        configuration = plan.configurations.get(plan.candidate(o.name).config)
        folders = [results / o.model_folder / fold_folder_name(f) for f in o.folds]
        runs = [RunConfig.load(f) for f in folders if (f / RUN_CONFIG_FILE).is_file()]
        if configuration is None or not runs:
            continue
        planned = configuration.training.epochs * configuration.training.iterations_per_epoch
        steps = min(r.epochs * r.iterations_per_epoch for r in runs)
        if steps < planned:
            out.append({"candidate": o.name, "steps": steps, "planned": planned})
    return out


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.1f}"


def format_choice(choice: dict[str, Any]) -> str:
    """The table (Dice % and spread over folds, points) and the choice, for people."""
    rows = [("pipeline", "CV Dice %", "+- folds", "per fold")]
    for s in choice["scores"]:
        rows.append((s["name"], _fmt(s["dice"]), _fmt(s["spread"]),
                     " ".join(_fmt(v) for v in s["fold_dice"].values())))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{choice['dataset']}: cross-validation over {choice['cases']} labelled cases "
             "(out-of-fold probabilities, threshold 0.5)"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    members = " + ".join(m["candidate"] for m in choice["members"])
    lines.append(f"chosen: {members} (CV Dice {_fmt(choice['cv_dice'])} +- {_fmt(choice['cv_spread'])})")
    lines += [f"  {c.long}" for c in caveats(choice)]
    for step in choice["postprocessing_steps"]:
        verdict = "kept" if step["kept"] else "rejected"
        value = step["value"] if isinstance(step["value"], bool) else f"{step['value']:.4g}"
        margin = f"needs > {points(step['margin'])}, " if "margin" in step else ""
        lines.append(f"  post-processing {step['step']}={value}: {verdict} (gain {100 * step['gain']:+.2f} "
                     f"points, {margin}spread over folds {100 * step['fold_spread']:.2f})")
    post = choice["postprocessing"]
    lines.append(f"post-processing: threshold {post['threshold']:g}, min lesion area {post['min_area_mm2']:.4g} mm^2, "
                 f"fill holes {post['fill_holes']}, keep largest {post['keep_largest']} -> CV Dice "
                 f"{_fmt(choice['cv_dice_postprocessed'])}")
    lines += [f"not compared: {n}" for n in choice["not_compared"]]
    lines.append(f"predict: {choice['predict_command']}")
    return "\n".join(lines)


@run_cli
def main(argv: list[str] | None = None) -> int:
    config = config_from_args(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    cli_args.print_data_roots()
    return run(config)


if __name__ == "__main__":  # pragma: no cover
    main()
