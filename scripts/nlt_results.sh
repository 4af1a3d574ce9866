#!/usr/bin/env bash
# The measured noisy long-tail results of docs/results.md: 3 profiles x 3 seeds x 3 methods on
# ../shared/data/real-ad, default backbone and the paper's settings, clean protocol.
# Test-time search: faiss IVF (nprobe 16), checked against exact search in docs/performance.md.
# TailedCore runs whose tail (with its 47 views per image) exceeds 2M patches are reported as not run;
# the second loop runs TailedCore with one tail coreset per tail image instead (OUT/PROFILE-per-image),
# by default on pareto, where the joint coreset does not fit; VARIANT_PROFILES chooses other profiles.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
PROFILES=${PROFILES-step-k1 step-k4 pareto}
SEEDS=${SEEDS:-0 1 2}
common=(--noise 0.1 --resume --search ivf --search-option nprobe=16)
for profile in $PROFILES; do
    .venv/bin/tailedcore --quiet benchmark ../shared/data/real-ad --profile "$profile" --seeds $SEEDS "${common[@]}" \
        --methods patchcore softpatch tailedcore --max-tail-rows 2000000 --out "$OUT/$profile"
done
for profile in ${VARIANT_PROFILES-pareto}; do
    .venv/bin/tailedcore --quiet benchmark ../shared/data/real-ad --profile "$profile" --seeds $SEEDS "${common[@]}" \
        --methods tailedcore --tail-coreset per-image --out "$OUT/$profile-per-image"
done
