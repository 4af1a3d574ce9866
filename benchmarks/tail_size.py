"""TailedCore's tail on the whole real-ad training set: how many images, views and patch rows.

Runs the image embeddings and a tail estimator (default: linkage; --estimator paper for the
published TailSampler) on the merged training images of ../shared/data/real-ad and prints, per
class, the images it takes as tail and the time it took,
then the patch rows the tail coreset would receive (images x 48 views x 784 patches) and
its pair count (rows x 10% picks), the quantity that sets the exact coreset's time.

    python benchmarks/tail_size.py [--estimator paper]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from common import REAL_AD, print_table
from tail_quality import compute_inputs

from tailedcore.data import training_images
from tailedcore.tail import TAIL_ESTIMATORS, TailInputs, make_tail_estimator
from tailedcore.views import view_transforms

VIEWS_PER_IMAGE = 1 + len(view_transforms())  # the image and its rotated / flipped views (paper defaults)
PATCHES_PER_IMAGE = 28 * 28  # the default 224 px crop's stride-8 grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REAL_AD))
    parser.add_argument("--estimator", choices=list(TAIL_ESTIMATORS), default="linkage")
    args = parser.parse_args()
    source = Path(args.data)
    paths = training_images(source)
    inputs = compute_inputs(source)  # every train/good and defective test image, cached
    rows = inputs.rows([path.relative_to(source).as_posix() for path in paths])
    started = time.perf_counter()
    estimate = make_tail_estimator(args.estimator).estimate(TailInputs(inputs.embeddings[rows],
                                                                        inputs.mean_patches[rows]))
    seconds = time.perf_counter() - started
    classes = [p.parts[-4] for p in paths]
    per_class, in_tail = Counter(classes), Counter(classes[i] for i in estimate.tail_indices)
    print(f"{len(paths)} training images; {args.estimator} estimator ({seconds:.1f} s): max K = {estimate.max_k}; "
          f"tail = {len(estimate.tail_indices)} images")
    print_table(["class", "training images", "in the tail"],
                [[name, per_class[name], in_tail[name]] for name in sorted(per_class)])
    tail_rows = len(estimate.tail_indices) * VIEWS_PER_IMAGE * PATCHES_PER_IMAGE
    print(f"\ntail coreset input: {tail_rows:,} rows ({len(estimate.tail_indices)} x {VIEWS_PER_IMAGE} views x "
          f"{PATCHES_PER_IMAGE}); 10% picks -> {tail_rows * tail_rows // 10:.3e} row-centre pairs")


if __name__ == "__main__":
    main()
