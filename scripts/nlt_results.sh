#!/usr/bin/env bash
# The measured noisy long-tail results of docs/results.md on ../shared/data/real-ad: default backbone,
# the paper's settings, clean protocol, noise 0.1. Test-time search: faiss IVF (nprobe 16), checked
# against exact search in docs/performance.md.
# Two lanes, one torch thread each, run side by side:
#   runs/PROFILE             PatchCore and SoftPatch
#   runs/PROFILE-tailedcore  TailedCore (defaults: linkage tail estimator, gated head step) on every
#                            profile, then
#   runs/PROFILE-paper-head  TailedCore with the paper's head step (LOF over all patches, fixed 15%), and
#   runs/PROFILE-paper-tail  TailedCore with the paper's TailSampler and head step (each its own row).
# A joint tail coreset over more than 2M patch rows runs two-round (--max-tail-rows).
# --resume reads finished seeds back instead of running them again.
# `scripts/nlt_results.sh baselines` (or `tailedcore`) runs one lane only.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
PROFILES=${PROFILES-step-k1 step-k4 pareto}
SEEDS=${SEEDS:-0 1 2}
common=(--threads 1 benchmark ../shared/data/real-ad --seeds $SEEDS --noise 0.1 --resume --search ivf
        --search-option nprobe=16)
paper_head=(--lof-scale global --lof-share fixed --lof-unlike-share none)
baselines() {
    for profile in $PROFILES; do
        .venv/bin/tailedcore --quiet "${common[@]}" --profile "$profile" --methods patchcore softpatch \
            --out "$OUT/$profile"
    done
}
tailedcore() {
    for profile in $PROFILES; do
        .venv/bin/tailedcore --quiet "${common[@]}" --profile "$profile" --methods tailedcore \
            --max-tail-rows 2000000 --out "$OUT/$profile-tailedcore"
    done
    for profile in $PROFILES; do
        .venv/bin/tailedcore --quiet "${common[@]}" --profile "$profile" --methods tailedcore \
            "${paper_head[@]}" --max-tail-rows 2000000 --out "$OUT/$profile-paper-head"
    done
    for profile in $PROFILES; do
        .venv/bin/tailedcore --quiet "${common[@]}" --profile "$profile" --methods tailedcore \
            --tail-estimator paper "${paper_head[@]}" --max-tail-rows 2000000 --out "$OUT/$profile-paper-tail"
    done
}
if [ $# -gt 0 ]; then
    "$1"
else
    baselines &
    tailedcore
    wait
fi
