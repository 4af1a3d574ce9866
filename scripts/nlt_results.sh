#!/usr/bin/env bash
# The measured noisy long-tail results of docs/results.md: 3 profiles x 3 seeds x 3 methods on
# ../shared/data/real-ad, default backbone and the paper's settings, clean protocol.
# Test-time search: faiss IVF (nprobe 16), checked against exact search in docs/performance.md.
# TailedCore runs whose tail (with its 47 views per image) exceeds 2M patches are reported as not run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
for profile in step-k1 step-k4 pareto; do
    .venv/bin/tailedcore --quiet benchmark ../shared/data/real-ad --profile "$profile" --noise 0.1 \
        --seeds 0 1 2 --resume --methods patchcore softpatch tailedcore --search ivf --search-option nprobe=16 \
        --max-tail-rows 2000000 --out "$OUT/$profile"
done
