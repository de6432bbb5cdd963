"""How certain each stored choice is: a table of ``fpn_find_best_configuration``'s ``within_noise``
(the pipelines the cross-validation does not separate from the choice) for finished runs.

Each argument is ``ID:RESULTS_ROOT`` (the ``$FPN_RESULTS`` of a run of
``benchmarks/choose_configuration.sh``; run ``fpn_find_best_configuration -d ID`` there first so the
choice records ``within_noise``). The figures of docs/choosing.md ("Measured")::

    python benchmarks/choice_certainty.py 952:/tmp/choice_m/res 953:/tmp/choice_f/res \\
        970:/tmp/s3-26/c970/res 971:/tmp/s3-26/c971/res 972:/tmp/s3-26/c972/res
"""
from __future__ import annotations

import argparse
from pathlib import Path

from fpnunet.choice_caveats import points
from fpnunet.pipeline_files import read_chosen


def stored_choices(specs: list[str]) -> list[tuple[str, str, dict]]:
    """``(spec, id, chosen_pipeline.json)`` of each ``ID:RESULTS_ROOT`` argument."""
    out = []
    for spec in specs:
        did, root = spec.split(":", 1)
        (folder,) = Path(root).glob(f"Dataset{did}_*")
        out.append((spec, did, read_chosen(folder)))
    return out


def _margin(entry: dict) -> str:
    """The t-test margin; choices written before it was recorded give their spread (``+- s``)."""
    if "lead_margin" not in entry:
        return f"+- {100 * entry['lead_spread']:.1f}"
    return points(entry["lead_margin"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="ID:RESULTS_ROOT")
    args = p.parse_args()
    print("| dataset | labelled cases | chosen | CV Dice % | pipelines within noise | single candidates among them "
          "(lead, margin it must exceed, points) |")
    print("|---|---|---|---|---|---|")
    for _, did, c in stored_choices(args.runs):
        close = c.get("within_noise")
        singles = ", ".join(f"{x['name']} ({100 * x['lead']:+.1f}, {_margin(x)})"
                            for x in close or [] if len(x["members"]) == 1)
        chosen = " + ".join(m["candidate"] for m in c["members"])
        print(f"| {did} | {c['cases']} | {chosen} | {100 * c['cv_dice']:.1f} | "
              f"{'not recorded' if close is None else len(close)} | {singles or '-'} |")


if __name__ == "__main__":
    main()
