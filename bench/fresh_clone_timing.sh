#!/usr/bin/env bash
# Time `make test` and `make demo` on a fresh clone (install included), as CI and a new user see them.
# Usage: bash bench/fresh_clone_timing.sh [WORKDIR]   -> prints both wall times
set -euo pipefail
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=${1:-$(mktemp -d)}
git clone -q "$repo" "$work/fresh"
cd "$work/fresh"
start=$(date +%s); make test > "$work/test.log" 2>&1; test_s=$(( $(date +%s) - start ))
start=$(date +%s); make demo > "$work/demo.log" 2>&1; demo_s=$(( $(date +%s) - start ))
echo "make test (fresh clone, install included): ${test_s} s; $(grep -E '[0-9]+ passed' "$work/test.log" | tail -1)"
echo "make demo (after make test's install):     ${demo_s} s; logs in $work"
