//! The generated CUDA kernels' numbers, without a GPU: each spec's `CUDA_SOURCE` is compiled
//! with the host C++ compiler against a CUDA shim and run block by block on CPU threads with real
//! barriers (tests/common/cuda_emu.rs), on the launch configuration the runtime uses
//! (`CUDA_LAUNCH`). Outputs and final states are compared with the step-by-step f64 oracle of
//! the README's Meaning (tests/common), softmax with the CPU kernel (itself checked against a quadratic
//! reference in tests/softmax.rs).
//!
//! Tolerance: max |cuda - oracle| / max |oracle| <= 1e-4 (the README's accuracy bound), over tails (N = 1, C - 1,
//! C + 1, 3C + 7), a non-zero initial state, both layouts, and `step` from that state.
//! What this cannot show: races a GPU's memory model would expose but barriers on a CPU hide,
//! and anything about speed. GPU execution tests live in tests/cuda_gpu.rs.

mod common;

use attnc::prelude::*;
use attnc::spec::{Layout, Normalize};
use common::cuda_emu::{self, EmuInputs};
use common::*;

const TOL: f64 = 1e-4;

/// A random initial state: S standard normal, z positive (normalised specs).
fn initial_state(spec: &Spec, bh: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let f = spec.feature_dim();
    let mut rng = Rng::new(seed);
    let s = rng.normals(bh * f * spec.value_dim);
    let z = if spec.normalize == Normalize::Sum {
        (0..bh * f).map(|_| 0.5 + rng.uniform()).collect()
    } else {
        Vec::new()
    };
    (s, z)
}

/// The first token of every (batch, head), as a one-token problem.
fn first_token(x: &Inputs) -> Inputs {
    let pick = |data: &[f32], d: usize| -> Vec<f32> {
        (0..x.b * x.h)
            .flat_map(|bh| data[bh * x.n * d..bh * x.n * d + d].to_vec())
            .collect()
    };
    Inputs {
        n: 1,
        q: pick(&x.q, x.dk),
        k: pick(&x.k, x.dk),
        v: pick(&x.v, x.dv),
        beta: pick(&x.beta, 1),
        g: pick(&x.g, 1),
        ..x.clone()
    }
}

/// `precision = tf32`'s bound (one TF32 product per tensor-core step; the README's key table).
const TF32_TOL: f64 = 5e-3;

fn check(spec: &Spec, label: &str, got: &[f32], want: &[f64]) {
    let tol = match spec.precision {
        attnc::spec::Precision::Fp32 => TOL,
        attnc::spec::Precision::Tf32 => TF32_TOL,
    };
    let err = max_rel_err(got, want);
    assert!(err <= tol, "{label}: max-rel error {err:e} > {tol:e}");
}

macro_rules! linear_spec {
    ($m:ident, $($attr:tt)*) => {
        mod $m {
            use super::*;

            #[attention($($attr)*)]
            pub struct Attn;

            #[test]
            fn forward_and_step_match_the_oracle() {
                if !cuda_emu::available_or_skip(concat!(stringify!($m), "::forward_and_step")) {
                    return;
                }
                let spec = Attn::spec();
                let launch = Attn::CUDA_LAUNCH;
                let (b, h, c) = (2, 2, Attn::CHUNK);
                let mut worst = 0.0f64;
                for (i, n) in [1, c - 1, c + 1, 3 * c + 7].into_iter().enumerate() {
                    let x = Inputs::random(b, h, n, Attn::HEAD_DIM, Attn::VALUE_DIM, 40 + i as u64)
                        .for_spec(spec, 5);
                    let (s0, z0) = initial_state(spec, b * h, 7 + i as u64);
                    let z0_opt = (!z0.is_empty()).then_some(&z0[..]);
                    let want = reference(spec, &x, Some(&s0), z0_opt);
                    // Each version of the kernels (per shared-memory class) that differs.
                    for class in cuda_emu::distinct_classes(&launch) {
                    let got = cuda_emu::run(
                        &launch, Attn::CUDA_SOURCE, &class.forward, b * h, h, n,
                        &cuda_emu::inputs(spec, &x, &s0, &z0),
                    )
                    .unwrap_or_else(|e| panic!("emulated forward, {:?}, n = {n}: {e}", class.class));
                    let out = match spec.layout {
                        Layout::Bhnd => got.out.clone(),
                        Layout::Bnhd => from_bnhd(&got.out, b, h, n, Attn::VALUE_DIM),
                    };
                    check(spec, &format!("forward o, n = {n}"), &out, &want.o);
                    check(spec, &format!("forward S, n = {n}"), &got.s, &want.s);
                    if !z0.is_empty() {
                        check(spec, &format!("forward z, n = {n}"), &got.z, &want.z);
                    }
                    worst = worst.max(max_rel_err(&out, &want.o));
                    if n > 2 * c {
                        // Two blocks per (batch, head) looping over the chunks, as kernels with
                        // scratch run at scale: the same bits.
                        let capped = cuda_emu::run(
                            &launch, Attn::CUDA_SOURCE, &class.forward, b * h, h, n,
                            &EmuInputs { grid_cap: Some(2), ..cuda_emu::inputs(spec, &x, &s0, &z0) },
                        )
                        .unwrap_or_else(|e| panic!("emulated forward, grid capped: {e}"));
                        assert_eq!(capped.out, got.out, "grid capped at 2 blocks per (b, h)");
                        assert_eq!(capped.s, got.s, "grid capped: final state");
                    }
                    }

                    // step: the first token, from the same initial state.
                    let x1 = first_token(&x);
                    let want = reference(spec, &x1, Some(&s0), z0_opt);
                    let mut step_spec = spec.clone();
                    step_spec.layout = Layout::Bhnd;
                    for class in cuda_emu::distinct_classes(&launch) {
                    let got = cuda_emu::run(
                        &launch, Attn::CUDA_SOURCE, &class.step, b * h, h, 1,
                        &cuda_emu::inputs(&step_spec, &x1, &s0, &z0),
                    )
                    .unwrap_or_else(|e| panic!("emulated step, {:?}: {e}", class.class));
                    check(spec, "step o", &got.out, &want.o);
                    check(spec, "step S", &got.s, &want.s);
                    if !z0.is_empty() {
                        check(spec, "step z", &got.z, &want.z);
                    }
                    }
                }
                println!("{}: emulated CUDA forward max-rel error {worst:.2e}", stringify!($m));
            }
        }
    };
}

linear_spec!(identity_c16, head_dim = 16, chunk = 16);
linear_spec!(
    elu_sum,
    head_dim = 32,
    feature_map = elu_plus_one,
    normalize = sum,
    chunk = 32
);
linear_spec!(
    relu_dv_ne_dk,
    head_dim = 16,
    value_dim = 40,
    feature_map = relu,
    chunk = 16
);
linear_spec!(
    sigmoid_scale,
    head_dim = 16,
    feature_map = sigmoid,
    scale = 0.5,
    normalize = sum,
    chunk = 16
);
linear_spec!(
    squared_relu_bnhd,
    head_dim = 16,
    feature_map = squared_relu,
    layout = bnhd,
    chunk = 16
);
linear_spec!(
    closure_sum,
    head_dim = 16,
    feature_map = |x| if x > 0.0 {
        x.powi(2) + 1.0
    } else {
        (0.5 * x).exp()
    },
    normalize = sum,
    chunk = 16
);
linear_spec!(
    noncausal_sum_bnhd,
    head_dim = 16,
    value_dim = 24,
    feature_map = elu_plus_one,
    mask = none,
    normalize = sum,
    layout = bnhd,
    chunk = 16
);
linear_spec!(noncausal_identity, head_dim = 16, mask = none, chunk = 32);
linear_spec!(
    tf32_gated_delta,
    head_dim = 32,
    update = gated_delta,
    qk_norm = l2,
    precision = tf32,
    chunk = 32
);
linear_spec!(
    gated_l2,
    head_dim = 32,
    update = gated,
    qk_norm = l2,
    chunk = 16
);
linear_spec!(
    gated_sum_bnhd,
    head_dim = 16,
    update = gated,
    feature_map = elu_plus_one,
    normalize = sum,
    layout = bnhd,
    chunk = 16
);
linear_spec!(
    delta_l2,
    head_dim = 32,
    update = delta,
    qk_norm = l2,
    chunk = 16
);
linear_spec!(
    gated_delta_l2,
    head_dim = 32,
    value_dim = 64,
    update = gated_delta,
    qk_norm = l2,
    chunk = 32
);
linear_spec!(
    gated_delta_bnhd,
    head_dim = 16,
    update = gated_delta,
    qk_norm = l2,
    layout = bnhd,
    chunk = 16
);
linear_spec!(
    taylor2_sum,
    head_dim = 8,
    feature_map = taylor2,
    normalize = sum,
    chunk = 16
);
linear_spec!(
    dpfp_delta,
    head_dim = 8,
    feature_map = dpfp(nu = 2),
    update = delta,
    qk_norm = l2,
    chunk = 16
);
linear_spec!(chunk64_gated, head_dim = 64, update = gated, chunk = 64);
// Wide values: phase (c)'s value tiles overflow shared memory at dv = 256, so it splits them
// into column blocks (Grid::ChunkColumns), each block recomputing the scores and reading z.
linear_spec!(
    wide_values_sum,
    head_dim = 32,
    value_dim = 256,
    feature_map = elu_plus_one,
    normalize = sum,
    chunk = 32
);
linear_spec!(
    wide_values_delta,
    head_dim = 32,
    value_dim = 256,
    update = delta,
    qk_norm = l2,
    chunk = 32
);
linear_spec!(
    favor_sum,
    head_dim = 16,
    feature_map = favor(features = 64),
    normalize = sum,
    chunk = 16
);
linear_spec!(
    favor_noncausal_bnhd,
    head_dim = 8,
    value_dim = 16,
    feature_map = favor(features = 48),
    mask = none,
    layout = bnhd,
    chunk = 16
);
linear_spec!(
    favor_gated_delta_l2,
    head_dim = 16,
    feature_map = favor(features = 32),
    update = gated_delta,
    qk_norm = l2,
    chunk = 16
);

macro_rules! softmax_spec {
    ($m:ident, $($attr:tt)*) => {
        mod $m {
            use super::*;

            #[attention($($attr)*)]
            pub struct Attn;

            #[test]
            fn forward_matches_the_cpu_kernel() {
                if !cuda_emu::available_or_skip(concat!(stringify!($m), "::forward")) {
                    return;
                }
                let spec = Attn::spec();
                let launch = Attn::CUDA_LAUNCH;
                let (b, h, c) = (2, 2, Attn::CHUNK);
                const DK: usize = Attn::HEAD_DIM;
                const DV: usize = Attn::VALUE_DIM;
                for (i, n) in [1, c - 1, c + 1, 3 * c + 7].into_iter().enumerate() {
                    let x = Inputs::random(b, h, n, DK, DV, 90 + i as u64);
                    let dev = Cpu::default();
                    let q = dev.tensor_from_vec(x.q.clone(), (b, h, n, Const::<DK>));
                    let k = dev.tensor_from_vec(x.k.clone(), (b, h, n, Const::<DK>));
                    let v = dev.tensor_from_vec(x.v.clone(), (b, h, n, Const::<DV>));
                    let want: Vec<f64> = Attn::forward(q.clone(), k.clone(), v.clone())
                        .expect("CPU softmax")
                        .as_vec()
                        .into_iter()
                        .map(f64::from)
                        .collect();
                    for class in cuda_emu::distinct_classes(&launch) {
                    let got = cuda_emu::run(
                        &launch, Attn::CUDA_SOURCE, &class.forward, b * h, h, n,
                        &cuda_emu::inputs(spec, &x, &[], &[]),
                    )
                    .unwrap_or_else(|e| panic!("emulated softmax, {:?}, n = {n}: {e}", class.class));
                    check(spec, &format!("softmax o, n = {n}"), &got.out, &want);
                    if n > 2 * c {
                        // Two blocks per (batch, head), each looping over query tiles.
                        let capped = cuda_emu::run(
                            &launch, Attn::CUDA_SOURCE, &class.forward, b * h, h, n,
                            &EmuInputs { grid_cap: Some(2), ..cuda_emu::inputs(spec, &x, &[], &[]) },
                        )
                        .unwrap_or_else(|e| panic!("emulated softmax, grid capped: {e}"));
                        assert_eq!(capped.out, got.out, "grid capped at 2 blocks per (b, h)");
                    }
                    }
                }
            }
        }
    };
}

softmax_spec!(
    softmax_causal,
    head_dim = 16,
    feature_map = softmax,
    chunk = 16
);
softmax_spec!(
    softmax_none_l2,
    head_dim = 16,
    value_dim = 32,
    feature_map = softmax,
    mask = none,
    qk_norm = l2,
    chunk = 16
);

/// The wide-value specs above do exercise phase (c)'s column blocks (and nothing spills): the
/// values load after `Q S`, so at most four tiles are alive and sm_90's 113 KiB and sm_80's
/// 81 KiB two-block budgets hold dv = 256 whole; sm_86's 49 KiB splits it.
#[test]
fn wide_values_split_phase_c_into_column_blocks() {
    use attnc::{Grid, SmemClass};
    for launch in [
        &wide_values_sum::Attn::CUDA_LAUNCH,
        &wide_values_delta::Attn::CUDA_LAUNCH,
    ] {
        for (class, split) in [
            (SmemClass::Sm90, false),
            (SmemClass::Sm80, false),
            (SmemClass::Sm86, true),
        ] {
            let kernels = launch.kernels(class).expect("every class has kernels");
            let output = kernels.forward.iter().find(|k| k.name == "attnc_output");
            let output = output.expect("a phase (c) kernel");
            let blocks = matches!(output.grid, Grid::ChunkColumns(n) if n >= 2);
            assert_eq!(blocks, split, "{output:?}");
            assert_eq!(output.scratch_floats, 0, "{output:?}");
            assert!(output.blocks_per_sm(launch.threads) >= 2, "{output:?}");
        }
    }
}
