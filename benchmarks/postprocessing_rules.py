"""Where the post-processing test changed a decision: the one-standard-deviation test (gain > spread of
the per-fold gains, used until session 5) against today's one-sided t-test (gain > ``margin``), read
from the step records of finished ``fpn_find_best_configuration`` runs (docs/results.md, "Choosing
the method"). Each argument is ``ID:RESULTS_ROOT``; rerun ``fpn_find_best_configuration -d ID``
there first so the steps record their ``margin``::

    python benchmarks/postprocessing_rules.py 952:/tmp/choice_m/res 970:/tmp/s5-26/x8_970/res ...

The steps are greedy, so after the first step the two tests decide differently the later steps
would start from another pipeline: the table stops at that first difference and says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from choice_certainty import stored_choices  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="ID:RESULTS_ROOT")
    args = p.parse_args()
    print("| run | step | gain, points | spread over folds | t-test margin | one-sd test | t-test |")
    print("|---|---|---|---|---|---|---|")
    changed = 0
    for spec, _, choice in stored_choices(args.runs):
        for step in choice["postprocessing_steps"]:
            old = step["gain"] > 0 and step["gain"] > step["fold_spread"]
            if old == step["kept"]:
                continue
            changed += 1
            print(f"| {spec} | {step['step']}={step['value']} | {100 * step['gain']:+.2f} | "
                  f"{100 * step['fold_spread']:.2f} | {100 * step['margin']:.2f} | "
                  f"{'kept' if old else 'rejected'} | {'kept' if step['kept'] else 'rejected'} |")
            break  # the later steps would start from another pipeline
    print(f"\n{changed} of {len(args.runs)} runs decide a step differently; the others decide every step alike")


if __name__ == "__main__":
    main()
