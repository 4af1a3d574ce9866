"""TailedCore's tail on the whole real-ad training set: how many images, views and patch rows.

Runs the image embeddings and TailSampler with the paper's settings on the merged training
images of ../shared/data/real-ad and prints, per class, the images TailSampler takes as tail,
then the patch rows the tail coreset would receive (images x 48 views x 784 patches) and
its pair count (rows x 10% picks), the quantity that sets the exact coreset's time.

    python benchmarks/tail_size.py
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
from common import REAL_AD, print_table

from tailedcore.data import training_images
from tailedcore.features import FeatureExtractor
from tailedcore.tail import tail_sampler
from tailedcore.views import view_transforms

VIEWS_PER_IMAGE = 1 + len(view_transforms())  # the image and its rotated / flipped views (paper defaults)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REAL_AD))
    args = parser.parse_args()
    paths = training_images(args.data)
    extractor = FeatureExtractor(progress=True)
    parts = {}
    for indices, batch in extractor.iter_batches(paths, with_embeddings=True):
        parts.update(zip(indices, batch.embeddings))
    embeddings = np.stack([parts[i] for i in range(len(paths))])
    estimate = tail_sampler(embeddings)
    classes = [p.parts[-4] for p in paths]
    per_class, in_tail = Counter(classes), Counter(classes[i] for i in estimate.tail_indices)
    print(f"{len(paths)} training images; max K = {estimate.max_k}; tail = {len(estimate.tail_indices)} images")
    print_table(["class", "training images", "in the tail"],
                [[name, per_class[name], in_tail[name]] for name in sorted(per_class)])
    grid = int(np.prod(extractor.grid_shape))
    rows = len(estimate.tail_indices) * VIEWS_PER_IMAGE * grid
    print(f"\ntail coreset input: {rows:,} rows ({len(estimate.tail_indices)} x {VIEWS_PER_IMAGE} views x {grid}); "
          f"10% picks -> {rows * rows // 10:.3e} row-centre pairs")


if __name__ == "__main__":
    main()
