#!/usr/bin/env bash
# Build cost of specs (issue #5.5): the incremental release build time of a binary crate that
# depends on attnc, with 0, 1 and 10 specs, after touching main.rs (dependencies already built).
# Usage: bench/build_cost.sh   (from the repository root; about 2 minutes)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/target/build-cost"
mkdir -p "$dir/src"
cat > "$dir/Cargo.toml" <<TOML
[package]
name = "build-cost"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
attnc = { path = "$root" }

[workspace]
TOML

specs=(
  "#[attention(head_dim = 64, chunk = 64)] struct S0;"
  "#[attention(head_dim = 64, feature_map = elu_plus_one, normalize = sum, chunk = 64)] struct S1;"
  "#[attention(head_dim = 64, update = gated, chunk = 64)] struct S2;"
  "#[attention(head_dim = 64, update = delta, qk_norm = l2, chunk = 64)] struct S3;"
  "#[attention(head_dim = 64, update = gated_delta, qk_norm = l2, chunk = 64)] struct S4;"
  "#[attention(head_dim = 64, feature_map = softmax, chunk = 64)] struct S5;"
  "#[attention(head_dim = 16, feature_map = taylor2, normalize = sum, chunk = 64)] struct S6;"
  "#[attention(head_dim = 32, feature_map = dpfp(nu = 2), chunk = 64)] struct S7;"
  "#[attention(head_dim = 64, feature_map = |x| x.max(0.0) + 0.5, chunk = 32)] struct S8;"
  "#[attention(head_dim = 64, mask = none, feature_map = relu, chunk = 128)] struct S9;"
)
# The forward call of spec i on a (1, 1, 8, d) input (its extra per-token inputs after v).
calls=(
  "S0::forward(t64.clone(), t64.clone(), t64.clone())"
  "S1::forward(t64.clone(), t64.clone(), t64.clone())"
  "S2::forward(t64.clone(), t64.clone(), t64.clone(), g.clone())"
  "S3::forward(t64.clone(), t64.clone(), t64.clone(), g.clone())"
  "S4::forward(t64.clone(), t64.clone(), t64.clone(), g.clone(), g.clone())"
  "S5::forward(t64.clone(), t64.clone(), t64.clone())"
  "S6::forward(t16.clone(), t16.clone(), t16.clone())"
  "S7::forward(t32.clone(), t32.clone(), t32.clone())"
  "S8::forward(t64.clone(), t64.clone(), t64.clone())"
  "S9::forward(t64.clone(), t64.clone(), t64.clone())"
)
write_main() { # $1 = number of specs; main calls forward of each (so its kernels are built)
  {
    echo "use attnc::prelude::*;"
    for ((i = 0; i < $1; i++)); do echo "${specs[$i]}"; done
    echo "fn main() {"
    echo "    let dev = Cpu::default();"
    echo "    let t64: Tensor<Rank4<1, 1, 8, 64>, f32, _> = dev.sample_normal();"
    echo "    let t32: Tensor<Rank4<1, 1, 8, 32>, f32, _> = dev.sample_normal();"
    echo "    let t16: Tensor<Rank4<1, 1, 8, 16>, f32, _> = dev.sample_normal();"
    echo "    let g: Tensor<Rank3<1, 1, 8>, f32, _> = dev.sample_uniform();"
    echo "    let _ = (&t64, &t32, &t16, &g);"
    for ((i = 0; i < $1; i++)); do echo "    println!(\"{:?}\", ${calls[$i]}.map(|o| o.as_vec()[0]));"; done
    echo "}"
  } > "$dir/src/main.rs"
}
build() {
  touch "$dir/src/main.rs"
  local t0 t1
  t0=$(date +%s.%N)
  cargo build --release --quiet --manifest-path "$dir/Cargo.toml" --target-dir "$root/target"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}
write_main 0; cargo build --release --quiet --manifest-path "$dir/Cargo.toml" --target-dir "$root/target"
for n in 0 1 10; do
  write_main "$n"
  build > /dev/null # first build after the change of main.rs
  echo "specs=$n seconds=$(build)"
done
