#!/usr/bin/env bash
# The main job (`make run`: PARSE and local training, watch, 30 agents, 40 rounds) end to
# end, on an earlier commit and on the working tree, one right after the other on the same
# machine, so the two wall times are comparable.
#
#   bash benchmarks/bench_main_job.sh [BASE-COMMIT]      # default: 9099f93
#
# Each side runs the command its own Makefile's `run` target runs, with that side's
# defaults (threads, engine, parallel methods), into a scratch folder, using this
# checkout's .venv (the dependencies did not change between the two).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${1:-9099f93}"
PY="$PWD/.venv/bin/python"
SCRATCH="$(mktemp -d)"
trap 'git worktree remove --force "$SCRATCH/base" >/dev/null 2>&1 || true; rm -rf "$SCRATCH"' EXIT
git worktree add --detach "$SCRATCH/base" "$BASE" >/dev/null 2>&1

job() {  # $1: source tree, $2: run folder
  local cmd
  cmd="$(grep -E '^\s+\$\(BIN\)/parse-dfl run' "$1/Makefile" | head -1 | sed -e 's/^\s*//' \
    -e "s|\$(BIN)/parse-dfl|$PY -m parse_dfl.cli|" -e "s|\$(OUT)|$2|")"
  echo "  $cmd" >&2
  (cd "$1" && PYTHONPATH="$1/src" /usr/bin/time -f "%e" bash -c "$cmd --quiet >/dev/null" 2>&1 | tail -1)
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "base ($BASE):"
before="$(job "$SCRATCH/base" "$SCRATCH/runs-base")"
echo "  wall ${before} s"
echo "now (working tree):"
after="$(job "$PWD" "$SCRATCH/runs-now")"
echo "  wall ${after} s"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" - "$before" "$after" <<'EOF'
import sys
b, a = map(float, sys.argv[1:3])
print(f"main job: {b:.1f} s -> {a:.1f} s ({a / b:.2f} of before, {b / a:.2f}x faster)")
EOF
