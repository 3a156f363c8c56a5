#!/usr/bin/env bash
# Run the paper's experiments (configs/paper/) and write their reports.
#   scripts/paper.sh                 every run of every sweep (days on a 2-core machine)
#   scripts/paper.sh --only seed=0   one seed of each (what docs/results.md reports)
# Runs already finished anywhere under runs/ with the same config are copied, not rerun;
# a killed script continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
JOBS=${JOBS:-2}
SWEEPS=${SWEEPS:-"watch-main watch-subjects watch-faults watch-attacks synthetic-pid mfeat-two
  watch-ablations watch-topologies watch-mixes watch-heterogeneity watch-lr mfeat-three"}
for name in $SWEEPS; do
  echo "== $name $(date +%H:%M:%S)"
  "$BIN/parse-dfl" sweep "configs/paper/$name.yaml" --jobs "$JOBS" --quiet --reuse runs "$@" || true
done
