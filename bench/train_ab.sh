#!/bin/bash
# Same-run comparison of the training step at N = 4096 between a base revision (built in a
# worktree) and the working tree, alternating, twice each, with calib's limit around it.
# Usage, from the repository root: bench/train_ab.sh <base-revision>
set -u
BASE=${1:?usage: bench/train_ab.sh <base-revision>}
CALIB_DIR=$(cd "${CALIB_DIR:-../shared/tools/calib}" && pwd)
# calib's build output stays out of shared/ (read-only in CI), as its README says.
CALIB_TARGET=${CALIB_TARGET:-${TMPDIR:-/tmp}/calib-target}
(cd "$CALIB_DIR" && CARGO_TARGET_DIR="$CALIB_TARGET" cargo build --release -q)
CAL="$CALIB_TARGET/release/calib"
WT=${TMPDIR:-/tmp}/attnc-train-base
git worktree add -f "$WT" "$BASE" >/dev/null 2>&1 || git -C "$WT" checkout -q "$BASE"
(cd "$WT" && CARGO_TARGET_DIR="$WT-target" cargo build --release -q -p attnc-bench --example train)
cargo build --release -q -p attnc-bench --example train
calib() { (cd "$CALIB_DIR" && "$CAL" "$@" 2>&1); }
echo "== calib peak"; calib peak | grep -i "peak"
echo "== calib v6"; calib "v6 +spread prefetch R=6 NT" | grep "v6"
for round in 1 2; do
  for which in base now; do
    if [ $which = base ]; then BIN="$WT-target/release/examples/train"; else BIN=target/release/examples/train; fi
    for v in plain "elu+1 sum" gated delta "gated delta"; do
      echo "== round $round $which $v"
      ATTNC_TRAIN_ONLY="$v" "$BIN" 4096 2>&1 | grep "| 4096"
    done
  done
done
echo "== calib v6 again"; calib "v6 +spread prefetch R=6 NT" | grep "v6"
