"""A linkage cut chosen per set from the gaps between the links of its minimum spanning tree.

Single linkage cut at c keeps the links of the minimum spanning tree (MST) of the images no longer
than c. A fixed c encodes the classes it was chosen on; these rules choose c per mix from the MST's
own links within a window [lo, hi] (the links sorted, with lo and hi as end points):
- ``log``: in the largest ratio between consecutive links (the cut is the shorter of the two);
- ``lin``: in the largest difference between consecutive links (the widest range of cuts that give
  the same clusters: the most stable cut);
- ``first:R``: in the first ratio of at least R from lo upwards (hi when there is none).
Every rule runs on the mixes of tail_quality.py (the linkage estimator's distances, cap and max-K rule
alike) beside fixed cuts; printed: means over the mixes and the range of cuts chosen.

    python benchmarks/tail_gaps.py ../shared/data/real-ad --json docs/tail_gaps.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from common import print_table
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from tail_quality import build_mixes, compute_inputs, mix_arguments, score

from tailedcore.tail import LinkageTailSampler

RULES = ["fixed:0.25", "fixed:0.3", "log", "lin", "first:1.05", "first:1.1", "first:1.15", "first:1.2", "first:1.3"]


def spanning_links(estimator: LinkageTailSampler, inputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MST of the images' linkage distances: (n - 1,) lengths and the two ends of each link."""
    distances = estimator.distances_between(inputs, inputs)
    tree = minimum_spanning_tree(distances + 1e-9).tocoo()  # + 1e-9: a zero distance is still a link
    return tree.data, tree.row, tree.col


def choose_cut(lengths: np.ndarray, rule: str, lo: float, hi: float) -> float:
    """The cut ``rule`` chooses from the MST link ``lengths`` (see the module)."""
    name, _, value = rule.partition(":")
    if name == "fixed":
        return float(value)
    points = np.r_[lo, np.sort(lengths[(lengths >= lo) & (lengths <= hi)]), hi]
    ratios = points[1:] / points[:-1]
    if name == "log":
        return float(points[np.argmax(ratios)])
    if name == "lin":
        return float(points[np.argmax(np.diff(points))])
    if name == "first":
        above = np.flatnonzero(ratios >= float(value))
        return float(points[above[0]]) if above.size else hi
    raise ValueError(f"rule '{rule}': choose from fixed:C, log, lin, first:R")


def clusters_at(n: int, links: tuple[np.ndarray, np.ndarray, np.ndarray], cut: float) -> np.ndarray:
    """(n,) cluster of each image: the connected parts of the MST links no longer than ``cut``."""
    lengths, ends_a, ends_b = links
    kept = lengths <= cut
    graph = coo_matrix((np.ones(kept.sum()), (ends_a[kept], ends_b[kept])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def main() -> None:
    parser = mix_arguments(__doc__.split("\n")[0], seeds=10)
    parser.add_argument("--rules", nargs="+", default=RULES)
    parser.add_argument("--window", nargs=2, type=float, default=[0.2, 0.5], metavar=("LO", "HI"))
    parser.add_argument("--json", type=Path, help="write the means and every mix's figures and cut to this file")
    args = parser.parse_args()
    inputs = compute_inputs(args.source)
    mixes = build_mixes(args.source, args.profiles, args.seeds, args.noise, inputs)
    estimator = LinkageTailSampler()
    results: dict[str, list[dict]] = {rule: [] for rule in args.rules}
    for mix in mixes:
        links = spanning_links(estimator, inputs.tail_inputs(mix.rows))
        for rule in args.rules:
            cut = choose_cut(links[0], rule, *args.window)
            estimate = estimator.estimate_from_clusters(clusters_at(len(mix.rows), links, cut))
            results[rule].append({"mix": mix.name, "cut": cut,
                                  **score(mix, estimate.class_sizes, estimate.tail_indices)})
    keys = ["recall", "precision", "injected_in_tail"]
    means = {rule: {key: float(np.mean([r[key] for r in rows])) for key in keys} for rule, rows in results.items()}
    print(f"{len(mixes)} mixes; window {args.window[0]}-{args.window[1]}")
    print_table(["rule", *keys, "worst recall", "worst precision", "cut: median", "range"],
                [[rule, *(f"{means[rule][k]:.3f}" for k in keys), f"{min(r['recall'] for r in rows):.2f}",
                  f"{min(r['precision'] for r in rows):.2f}", f"{np.median([r['cut'] for r in rows]):.3f}",
                  f"{min(r['cut'] for r in rows):.3f}-{max(r['cut'] for r in rows):.3f}"]
                 for rule, rows in results.items()])
    if args.json:
        args.json.write_text(json.dumps({"window": args.window, "means": means, "mixes": results}, indent=1) + "\n",
                             encoding="utf-8")


if __name__ == "__main__":
    main()
