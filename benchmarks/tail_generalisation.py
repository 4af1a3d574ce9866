"""Leave-classes-out: do a tail estimator's parameters hold on classes they were not chosen on?

Every split of SOURCE's classes into design and unseen classes (each class left out once, and
``--random-splits`` splits leaving out ``--leave-out`` classes) is run the same way:
1. Each family's candidate settings run on the NLT mixes drawn from the design classes only, and one is
   chosen there: among those that meet the targets on average (precision >= 0.9, at most 2% of the
   injected defects in the tail) the one with the best mean recall (then the best worst-mix recall, the
   best precision, the fewest injected defects in the tail);
   when none meets them, the best recall + precision - injected share.
2. The chosen setting runs on the mixes drawn from all classes, which contain the unseen ones.
Seen figures are the chosen setting's on its design mixes; unseen figures are on the mixes of all
classes: recall, precision and injected share over the whole mix, and recall and injected share over
the unseen classes' images alone. Means over splits (each split's figure is a mean over its mixes;
worst: the worst mix of any split). A family of one candidate is a fixed setting.

    python benchmarks/tail_generalisation.py ../shared/data/real-ad --json docs/tail_generalisation.json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from common import print_table
from tail_quality import Mix, build_mixes, compute_inputs, mix_arguments, parse_estimator, score

from tailedcore.data import load_mvtec

FAMILIES = {
    "paper": ["paper"],
    "linkage at 0.4 (fixed; the default before)": ["linkage:distance=0.4"],
    "linkage at 0.3 (fixed; the default)": ["linkage:distance=0.3"],
    "linkage, cut chosen": [f"linkage:distance={d}" for d in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)],
    "linkage, core and cut chosen": [f"linkage:distance={d}" + (f",core={k}" if k > 1 else "")
                                     for k in (1, 2, 3, 4) for d in (0.25, 0.3, 0.35, 0.4)],
}
TARGET_PRECISION, TARGET_INJECTED = 0.9, 0.02


def splits(classes: list[str], leave_out: int, random_splits: int, seed: int) -> list[list[str]]:
    """The unseen classes of each split: each class once, then ``random_splits`` distinct draws of ``leave_out``."""
    unseen = [[name] for name in classes]
    rng = np.random.default_rng(seed)
    drawn: set[tuple[str, ...]] = set()
    while len(drawn) < random_splits:
        drawn.add(tuple(sorted(rng.choice(classes, size=leave_out, replace=False).tolist())))
    return unseen + [list(names) for names in sorted(drawn)]


def figures(mix: Mix, tail: np.ndarray, unseen: list[str]) -> dict:
    """score() of one estimate, plus recall and injected share over the images of the ``unseen`` classes."""
    result = score(mix, np.ones(len(mix.rows)), tail)
    result.pop("class_size_error")
    predicted = np.zeros(len(mix.rows), bool)
    predicted[tail] = True
    of_unseen = np.isin(mix.classes, unseen)
    true_tail = of_unseen & np.isin(mix.classes, sorted(mix.tail_classes))
    if true_tail.any():
        result["unseen_recall"] = float(predicted[true_tail].mean())
    if (of_unseen & mix.injected).any():
        result["unseen_injected"] = float(predicted[of_unseen & mix.injected].mean())
    return result


def means(rows: list[dict]) -> dict:
    """Mean of every figure over the mixes that have it, and the worst-mix recall."""
    keys = sorted({key for row in rows for key in row})
    out = {key: float(np.mean([row[key] for row in rows if key in row])) for key in keys}
    out["worst_recall"] = min(row["recall"] for row in rows)
    if any("unseen_recall" in row for row in rows):
        out["worst_unseen_recall"] = min(row["unseen_recall"] for row in rows if "unseen_recall" in row)
    return out


def choose(candidates: dict[str, dict]) -> str:
    """The candidate (spec -> design means) chosen by the targets, as the module says."""
    meeting = [spec for spec, m in candidates.items()
               if m["precision"] >= TARGET_PRECISION and m["injected_in_tail"] <= TARGET_INJECTED]
    if meeting:
        return max(meeting, key=lambda spec: (candidates[spec]["recall"], candidates[spec]["worst_recall"],
                                              candidates[spec]["precision"], -candidates[spec]["injected_in_tail"]))
    return max(candidates, key=lambda spec: candidates[spec]["recall"] + candidates[spec]["precision"]
               - candidates[spec]["injected_in_tail"])


class Runner:
    """Runs estimator specs on mixes, each (spec, mix) once; the tail indices are kept."""

    def __init__(self, inputs):
        self.inputs, self.tails, self.seconds = inputs, {}, {}

    def tail(self, spec: str, mix: Mix, key: tuple) -> np.ndarray:
        if (spec, key) not in self.tails:
            estimator, _ = parse_estimator(spec)
            started = time.perf_counter()
            self.tails[spec, key] = estimator.estimate(self.inputs.tail_inputs(mix.rows)).tail_indices
            self.seconds.setdefault(spec, []).append(time.perf_counter() - started)
        return self.tails[spec, key]


def main() -> None:
    parser = mix_arguments(__doc__.split("\n")[0], seeds=5)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--leave-out", type=int, default=3, help="classes left out by each random split")
    parser.add_argument("--random-splits", type=int, default=10)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every split's choice and figures to this file")
    args = parser.parse_args()
    inputs = compute_inputs(args.source)
    classes = [item.name for item in load_mvtec(args.source)]
    runner = Runner(inputs)
    everything = build_mixes(args.source, args.profiles, args.seeds, args.noise, inputs)
    report: dict[str, list[dict]] = {family: [] for family in args.families}
    for unseen in splits(classes, args.leave_out, args.random_splits, args.split_seed):
        design = [name for name in classes if name not in unseen]
        design_mixes = build_mixes(args.source, args.profiles, args.seeds, args.noise, inputs, design)
        for family in args.families:
            design_means = {spec: means([figures(mix, runner.tail(spec, mix, (tuple(design), mix.name)), [])
                                         for mix in design_mixes]) for spec in FAMILIES[family]}
            chosen = choose(design_means)
            rows = [figures(mix, runner.tail(chosen, mix, (tuple(classes), mix.name)), unseen) for mix in everything]
            report[family].append({"unseen": unseen, "chosen": chosen, "seen": design_means[chosen],
                                   "all_classes": means(rows),
                                   "profiles": {p: means([r for r, mix in zip(rows, everything)
                                                          if mix.name.startswith(p + " ")]) for p in args.profiles},
                                   "mixes": [{"mix": mix.name, **r} for mix, r in zip(everything, rows)]})
        print(f"unseen {', '.join(unseen)}: " + "; ".join(
            f"{family} {report[family][-1]['chosen']} recall {report[family][-1]['all_classes']['recall']:.3f}"
            for family in args.families), flush=True)
    summary = {}
    for family, runs in report.items():
        seen = {k: float(np.mean([run["seen"][k] for run in runs]))
                for k in ("recall", "precision", "injected_in_tail")}
        seen["worst_recall"] = min(run["seen"]["worst_recall"] for run in runs)
        unseen = {k: float(np.mean([run["all_classes"][k] for run in runs if k in run["all_classes"]] or [np.nan]))
                  for k in ("recall", "precision", "injected_in_tail", "unseen_recall", "unseen_injected")}
        unseen["worst_recall"] = min(run["all_classes"]["worst_recall"] for run in runs)
        unseen["worst_unseen_recall"] = min((run["all_classes"]["worst_unseen_recall"] for run in runs
                                             if "worst_unseen_recall" in run["all_classes"]), default=float("nan"))
        chosen, counts = np.unique([run["chosen"] for run in runs], return_counts=True)
        summary[family] = {"seen": seen, "unseen": unseen,
                           "chosen": {spec: int(count) for spec, count in zip(chosen, counts)},
                           "seconds_per_mix": {spec: float(np.mean(runner.seconds[spec]))
                                               for spec in FAMILIES[family] if spec in runner.seconds}}
    n_splits = len(next(iter(report.values())))
    print(f"\n{n_splits} splits; mixes: {', '.join(args.profiles)} x noise {args.noise} x seeds {args.seeds}")
    print_table(["family", "seen recall", "precision", "injected", "worst recall",
                 "unseen: recall", "precision", "injected", "worst recall", "unseen classes' recall", "worst",
                 "their injected"],
                [[family, *(f"{s['seen'][k]:.3f}" for k in ("recall", "precision", "injected_in_tail", "worst_recall")),
                  *(f"{s['unseen'][k]:.3f}" for k in ("recall", "precision", "injected_in_tail", "worst_recall",
                                                         "unseen_recall", "worst_unseen_recall", "unseen_injected"))]
                 for family, s in summary.items()])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "splits": report, "arguments": {
            "profiles": args.profiles, "seeds": args.seeds, "noise": args.noise, "leave_out": args.leave_out,
            "random_splits": args.random_splits, "split_seed": args.split_seed}}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
