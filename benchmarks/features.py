"""Feature extraction throughput: backbone, aggregation (reference vs convolution), end to end.

The reference aggregation is PatchCore's: unfold the 3x3 neighbourhoods, resize the stride-16
grid, adaptive-average-pool each layer to 1024 values, pool the concatenation again.

    python benchmarks/features.py [--batch 32] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import median_time, print_table

from tailedcore import PatchCore


def reference_aggregation(map8: torch.Tensor, map16: torch.Tensor, dim: int = 1024) -> torch.Tensor:
    batch, _, height, width = map8.shape
    pooled = []
    for layer in (map8, map16):
        grid = F.unfold(layer, kernel_size=3, padding=1).reshape(batch, -1, *layer.shape[2:])
        if grid.shape[2:] != (height, width):
            grid = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        vectors = grid.flatten(2).transpose(1, 2).reshape(batch * height * width, 1, -1)
        pooled.append(F.adaptive_avg_pool1d(vectors, dim))
    return F.adaptive_avg_pool1d(torch.cat(pooled, dim=2), dim).reshape(batch, height * width, dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    extractor = PatchCore(progress=False, batch_size=args.batch).extractor
    fast = PatchCore(progress=False, batch_size=args.batch, precision="bfloat16").extractor
    x = torch.randn(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        map8, map16 = extractor.backbone(x)
        difference = (reference_aggregation(map8, map16) - extractor.aggregator(map8, map16)).abs().max().item()

        def rate(function) -> str:
            seconds, _ = median_time(function, args.repeats)
            return f"{args.batch / seconds:.1f}"

        rows = [
            ["backbone to the stride-16 block", rate(lambda: extractor.backbone(x))],
            ["backbone with the embedding head", rate(lambda: extractor.backbone.embed(x))],
            ["aggregation, reference (unfold + pooling)", rate(lambda: reference_aggregation(map8, map16))],
            ["aggregation as two convolutions", rate(lambda: extractor.aggregator(map8, map16))],
            ["features end to end, reference aggregation",
             rate(lambda: reference_aggregation(*extractor.backbone(x)))],
            ["features end to end (tailedcore)", rate(lambda: extractor.features(x))],
            ["features end to end, bfloat16 backbone", rate(lambda: fast.features(x))],
        ]
    print(f"batch {args.batch} x 224 px, {torch.get_num_threads()} threads; "
          f"max |reference - convolution| = {difference:.2e}")
    print_table(["stage", "images/s"], rows)


if __name__ == "__main__":
    main()
