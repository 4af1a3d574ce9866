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

import numpy as np
from common import REAL_AD, print_table

from tailedcore.data import training_images
from tailedcore.features import FeatureExtractor
from tailedcore.tail import TAIL_ESTIMATORS, TailInputs, make_tail_estimator
from tailedcore.views import view_transforms

VIEWS_PER_IMAGE = 1 + len(view_transforms())  # the image and its rotated / flipped views (paper defaults)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REAL_AD))
    parser.add_argument("--estimator", choices=list(TAIL_ESTIMATORS), default="linkage")
    args = parser.parse_args()
    paths = training_images(args.data)
    extractor = FeatureExtractor(progress=True)
    embeddings = np.empty((len(paths), extractor.backbone.embedding_dim), np.float32)
    mean_patches = np.empty((len(paths), extractor.feature_dim), np.float32)
    for indices, batch in extractor.iter_batches(paths, with_embeddings=True):
        embeddings[indices] = batch.embeddings
        mean_patches[indices] = batch.patches.mean(axis=1)
    started = time.perf_counter()
    estimate = make_tail_estimator(args.estimator).estimate(TailInputs(embeddings, mean_patches))
    seconds = time.perf_counter() - started
    classes = [p.parts[-4] for p in paths]
    per_class, in_tail = Counter(classes), Counter(classes[i] for i in estimate.tail_indices)
    print(f"{len(paths)} training images; {args.estimator} estimator ({seconds:.1f} s): max K = {estimate.max_k}; "
          f"tail = {len(estimate.tail_indices)} images")
    print_table(["class", "training images", "in the tail"],
                [[name, per_class[name], in_tail[name]] for name in sorted(per_class)])
    grid = int(np.prod(extractor.grid_shape))
    rows = len(estimate.tail_indices) * VIEWS_PER_IMAGE * grid
    print(f"\ntail coreset input: {rows:,} rows ({len(estimate.tail_indices)} x {VIEWS_PER_IMAGE} views x {grid}); "
          f"10% picks -> {rows * rows // 10:.3e} row-centre pairs")


if __name__ == "__main__":
    main()
