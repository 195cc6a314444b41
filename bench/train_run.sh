#!/bin/bash
# One run of the training benchmark with calib's limit before and after it (BENCHMARKS.md,
# training section). From the repository root; calib is built from ../shared/tools/calib, or
# from $CALIB_DIR.
set -u
CALIB_DIR=$(cd "${CALIB_DIR:-../shared/tools/calib}" && pwd)
# calib's build output stays out of shared/ (read-only in CI), as its README says.
CALIB_TARGET=${CALIB_TARGET:-${TMPDIR:-/tmp}/calib-target}
(cd "$CALIB_DIR" && CARGO_TARGET_DIR="$CALIB_TARGET" cargo build --release -q)
CAL="$CALIB_TARGET/release/calib"
cargo build --release -q -p attnc-bench --example train
TRAIN=$(pwd)/target/release/examples/train
calib() { (cd "$CALIB_DIR" && "$CAL" "$@" 2>&1); }
date -u; uptime
echo "== calib peak"; calib peak | grep -i "peak"
echo "== calib v6"; calib "v6 +spread prefetch R=6 NT" | grep "v6"
echo "== train"; "$TRAIN" 512 2048 4096 8192 16384 2>&1
echo "== memory"; "$TRAIN" --memory 16384 2>&1
echo "== calib v6 again"; calib "v6 +spread prefetch R=6 NT" | grep "v6"
date -u
