//! The CUDA kernels of `short_conv`, `update = momentum(..)` and `rpe = toeplitz`, without a
//! GPU: each spec's `CUDA_SOURCE` runs in the host emulation (tests/common/cuda_emu.rs) on the
//! launch the runtime uses, and is compared with the f64 oracles of tests/common/systems.rs (the
//! convolution, then the README's recurrence, momentum's, or rpe's direct O(N^2) sum).
//!
//! Tolerance: max |cuda - oracle| / max |oracle| <= 1e-4 (the README's bound) for outputs and
//! states, over tails (N = 1, C - 1, C + 1, 3C + 7), random initial states (S, z, m, n and the
//! convolution tails), both layouts, and `step` from that state; the carried tails are copies
//! and must be exact. rpe (`forward` only): N = 1, 17, 100. `update = momentum(mu = 0)`'s step
//! must leave S bit-identical to `update = additive`'s.

mod common;

use attnc::prelude::*;
use attnc::spec::{Layout, Normalize};
use common::cuda_emu::{self, EmuInputs, EmuOutputs};
use common::systems as oracle;
use common::*;

const TOL: f64 = 1e-4;

/// Everything one call reads, heads first (the test lays it out per spec).
struct Case {
    x: Inputs,
    s0: Vec<f32>,
    z0: Vec<f32>,
    m0: Vec<f32>,
    n0: Vec<f32>,
    /// (H, D, w) weights of q, k, v.
    weights: [Vec<f32>; 3],
    /// (B·H, w - 1, D) tails of q, k, v.
    tails: [Vec<f32>; 3],
}

/// Random inputs and a random initial state for `spec` (z and n positive).
fn case(spec: &Spec, (b, h, n): (usize, usize, usize), seed: u64) -> Case {
    let (dk, dv, f, bh) = (spec.head_dim, spec.value_dim, spec.feature_dim(), b * h);
    let x = Inputs::random(b, h, n, dk, dv, seed).for_spec(spec, 5);
    let mut rng = Rng::new(seed + 1000);
    let normalized = spec.normalize == Normalize::Sum;
    let mut positive = |len: usize, on: bool| -> Vec<f32> {
        match on {
            true => (0..len).map(|_| 0.5 + rng.uniform()).collect(),
            false => Vec::new(),
        }
    };
    let (z0, n0) = (
        positive(bh * f, normalized),
        positive(bh * f, normalized && spec.momentum.is_some()),
    );
    let mut rng = Rng::new(seed + 2000);
    let s0 = rng.normals(bh * f * dv);
    let m0 = match spec.momentum {
        Some(_) => rng.normals(bh * f * dv),
        None => Vec::new(),
    };
    let (weights, tails) = match spec.short_conv {
        Some(w) => (
            [dk, dk, dv].map(|d| rng.normals(h * d * w).iter().map(|x| 0.5 * x).collect()),
            [dk, dk, dv].map(|d| rng.normals(bh * (w - 1) * d)),
        ),
        None => Default::default(),
    };
    Case {
        x,
        s0,
        z0,
        m0,
        n0,
        weights,
        tails,
    }
}

/// The oracle's output and final (s, z, m, n) and tails.
struct Want {
    o: Vec<f64>,
    state: [Vec<f64>; 4],
    tails: [Vec<f32>; 3],
}

fn oracle_of(spec: &Spec, c: &Case) -> Want {
    let x = &c.x;
    let mut xc = x.clone();
    let mut tails: [Vec<f32>; 3] = Default::default();
    if let Some(w) = spec.short_conv {
        let dims = |d| (x.b * x.h, x.h, x.n, d, w);
        let runs = [(&x.q, x.dk), (&x.k, x.dk), (&x.v, x.dv)];
        let mut outs: Vec<Vec<f32>> = Vec::new();
        for (i, (data, d)) in runs.into_iter().enumerate() {
            let (y, next) = oracle::conv_silu(data, &c.tails[i], &c.weights[i], dims(d));
            outs.push(y);
            tails[i] = next;
        }
        xc.v = outs.pop().unwrap_or_default();
        xc.k = outs.pop().unwrap_or_default();
        xc.q = outs.pop().unwrap_or_default();
    }
    match spec.momentum {
        Some(_) => {
            let (o, state) = oracle::momentum(spec, &xc, [&c.s0, &c.z0, &c.m0, &c.n0]);
            Want { o, state, tails }
        }
        None => {
            let z0 = (!c.z0.is_empty()).then_some(&c.z0[..]);
            let r = reference(spec, &xc, Some(&c.s0), z0);
            // The reference keeps a zero z for specs without a normaliser.
            let z = if z0.is_some() { r.z } else { Vec::new() };
            Want {
                o: r.o,
                state: [r.s, z, Vec::new(), Vec::new()],
                tails,
            }
        }
    }
}

/// The kernels' buffers: token tensors in `layout`.
fn kernel_inputs(spec: &Spec, c: &Case, layout: Layout) -> EmuInputs {
    let laid_out = Spec {
        layout,
        ..spec.clone()
    };
    EmuInputs {
        conv: c.weights.clone(),
        tails: c.tails.clone(),
        mom_s: c.m0.clone(),
        mom_z: c.n0.clone(),
        ..cuda_emu::inputs(&laid_out, &c.x, &c.s0, &c.z0)
    }
}

/// Every output and state of `got` against `want`.
fn check_all(label: &str, spec: &Spec, c: &Case, got: &EmuOutputs, want: &Want) -> f64 {
    let x = &c.x;
    let out = match spec.layout {
        Layout::Bnhd if x.n > 1 => from_bnhd(&got.out, x.b, x.h, x.n, x.dv),
        _ => got.out.clone(),
    };
    let pairs = [
        ("o", &out, &want.o),
        ("S", &got.s, &want.state[0]),
        ("z", &got.z, &want.state[1]),
        ("m", &got.mom_s, &want.state[2]),
        ("n", &got.mom_z, &want.state[3]),
    ];
    for (what, g, w) in pairs {
        assert_eq!(g.len(), w.len(), "{label}: {what} has the wrong length");
        if !w.is_empty() {
            let err = max_rel_err(g, w);
            assert!(
                err <= TOL,
                "{label}: {what} max-rel error {err:e} > {TOL:e}"
            );
        }
    }
    for i in 0..3 {
        assert_eq!(
            got.tails[i], want.tails[i],
            "{label}: tail {i} is not the last raw rows"
        );
    }
    max_rel_err(&out, &want.o)
}

/// The first token of every (batch, head), as a one-token case from the same state.
fn first_token(c: &Case) -> Case {
    let x = &c.x;
    let pick = |data: &[f32], d: usize| -> Vec<f32> {
        (0..x.b * x.h)
            .flat_map(|bh| data[bh * x.n * d..bh * x.n * d + d].to_vec())
            .collect()
    };
    Case {
        x: Inputs {
            n: 1,
            q: pick(&x.q, x.dk),
            k: pick(&x.k, x.dk),
            v: pick(&x.v, x.dv),
            beta: pick(&x.beta, 1),
            g: pick(&x.g, 1),
            ..x.clone()
        },
        s0: c.s0.clone(),
        z0: c.z0.clone(),
        m0: c.m0.clone(),
        n0: c.n0.clone(),
        weights: c.weights.clone(),
        tails: c.tails.clone(),
    }
}

macro_rules! systems_spec {
    ($m:ident, $($attr:tt)*) => {
        mod $m {
            use super::*;

            #[attention($($attr)*)]
            pub struct Attn;

            #[test]
            fn forward_and_step_match_the_oracles() {
                if !cuda_emu::available_or_skip(concat!(stringify!($m), "::forward_and_step")) {
                    return;
                }
                let spec = Attn::spec();
                let launch = Attn::CUDA_LAUNCH;
                let (b, h, c) = (2, 2, Attn::CHUNK);
                let mut worst = 0.0f64;
                for (i, n) in [1, c - 1, c + 1, 3 * c + 7].into_iter().enumerate() {
                    let cs = case(spec, (b, h, n), 40 + i as u64);
                    let want = oracle_of(spec, &cs);
                    let one = first_token(&cs);
                    let want_one = oracle_of(spec, &one);
                    // Each version of the kernels (per shared-memory class) that differs.
                    for class in cuda_emu::distinct_classes(&launch) {
                        let got = cuda_emu::run(
                            &launch, Attn::CUDA_SOURCE, &class.forward, b * h, h, n,
                            &kernel_inputs(spec, &cs, spec.layout),
                        )
                        .unwrap_or_else(|e| panic!("emulated forward, n = {n}: {e}"));
                        let err = check_all(&format!("forward, n = {n}"), spec, &cs, &got, &want);
                        worst = worst.max(err);

                        let got = cuda_emu::run(
                            &launch, Attn::CUDA_SOURCE, &class.step, b * h, h, 1,
                            &kernel_inputs(spec, &one, Layout::Bhnd),
                        )
                        .unwrap_or_else(|e| panic!("emulated step: {e}"));
                        check_all("step", spec, &one, &got, &want_one);
                    }
                }
                println!("{}: emulated CUDA forward max-rel error {worst:.2e}", stringify!($m));
            }
        }
    };
}

systems_spec!(conv_additive, head_dim = 16, short_conv = 4, chunk = 16);
systems_spec!(
    conv_elu_sum_bnhd,
    head_dim = 16,
    value_dim = 8,
    feature_map = elu_plus_one,
    normalize = sum,
    short_conv = 3,
    chunk = 16,
    layout = bnhd
);
systems_spec!(
    conv_gated_delta,
    head_dim = 16,
    short_conv = 3,
    qk_norm = l2,
    update = gated_delta,
    chunk = 16
);
systems_spec!(
    conv_bidirectional,
    head_dim = 8,
    value_dim = 16,
    mask = none,
    short_conv = 2,
    chunk = 16
);
systems_spec!(
    momentum_plain,
    head_dim = 16,
    update = momentum(mu = 0.9),
    chunk = 16
);
systems_spec!(
    momentum_elu_sum_bnhd,
    head_dim = 16,
    value_dim = 8,
    feature_map = elu_plus_one,
    normalize = sum,
    qk_norm = l2,
    update = momentum(mu = 0.5),
    chunk = 32,
    layout = bnhd
);
systems_spec!(
    momentum_conv_sum,
    head_dim = 8,
    feature_map = sigmoid,
    normalize = sum,
    short_conv = 2,
    update = momentum(mu = 0.75),
    chunk = 16
);

/// mu = 0, and the plain additive update of the same dims.
#[attention(head_dim = 16, update = momentum(mu = 0.0), chunk = 16)]
pub struct MomentumZero;

#[attention(head_dim = 16, chunk = 16)]
pub struct Additive;

/// The sm_90 class's kernels (the systems' specs are small: every class has the same).
fn sm90(launch: &attnc::CudaLaunch) -> &attnc::ClassKernels {
    launch
        .kernels(attnc::SmemClass::Sm90)
        .expect("sm_90 kernels")
}

#[test]
fn momentum_zero_steps_like_additive_bit_for_bit() {
    if !cuda_emu::available_or_skip("momentum_zero_steps_like_additive") {
        return;
    }
    let spec = MomentumZero::spec();
    let one = first_token(&case(spec, (2, 2, 5), 9));
    let mut base = kernel_inputs(spec, &one, Layout::Bhnd);
    let zero = cuda_emu::run(
        &MomentumZero::CUDA_LAUNCH,
        MomentumZero::CUDA_SOURCE,
        &sm90(&MomentumZero::CUDA_LAUNCH).step,
        4,
        2,
        1,
        &base,
    )
    .unwrap_or_else(|e| panic!("emulated momentum step: {e}"));
    base.mom_s.clear();
    let additive = cuda_emu::run(
        &Additive::CUDA_LAUNCH,
        Additive::CUDA_SOURCE,
        &sm90(&Additive::CUDA_LAUNCH).step,
        4,
        2,
        1,
        &base,
    )
    .unwrap_or_else(|e| panic!("emulated additive step: {e}"));
    assert_eq!(
        zero.s, additive.s,
        "S after one step differs from additive's"
    );
    assert_eq!(zero.out, additive.out, "o_t differs from additive's");
}

/// rpe's oracle: the convolution (from the case's tails: zeros, as rpe has no state), then
/// the direct O(N^2) sum.
fn rpe_oracle(spec: &Spec, c: &Case, bias: &[f32]) -> Vec<f64> {
    let (x, mut xc) = (&c.x, c.x.clone());
    if let Some(w) = spec.short_conv {
        let conv = |data: &[f32], i: usize, d: usize| {
            let dims = (x.b * x.h, x.h, x.n, d, w);
            oracle::conv_silu(data, &c.tails[i], &c.weights[i], dims).0
        };
        xc.q = conv(&x.q, 0, x.dk);
        xc.k = conv(&x.k, 1, x.dk);
        xc.v = conv(&x.v, 2, x.dv);
    }
    oracle::rpe(spec, &xc, bias)
}

macro_rules! rpe_spec {
    ($m:ident, $($attr:tt)*) => {
        mod $m {
            use super::*;

            #[attention($($attr)*)]
            pub struct Attn;

            #[test]
            fn forward_matches_the_direct_sum() {
                if !cuda_emu::available_or_skip(concat!(stringify!($m), "::forward")) {
                    return;
                }
                let spec = Attn::spec();
                let launch = Attn::CUDA_LAUNCH;
                let (b, h) = (2, 2);
                let mut worst = 0.0f64;
                for (i, n) in [1, 17, 100].into_iter().enumerate() {
                    let mut cs = case(spec, (b, h, n), 60 + i as u64);
                    cs.tails = cs.tails.clone().map(|t| vec![0.0; t.len()]);
                    let mut rng = Rng::new(80 + i as u64);
                    let bias: Vec<f32> =
                        (0..h * (2 * n - 1)).map(|_| rng.normal() * 0.5 - 0.2).collect();
                    let want = rpe_oracle(spec, &cs, &bias);
                    let mut inputs = kernel_inputs(spec, &cs, spec.layout);
                    inputs.proj = bias.clone();
                    let got = cuda_emu::run(
                        &launch, Attn::CUDA_SOURCE, &sm90(&launch).forward, b * h, h, n, &inputs,
                    )
                    .unwrap_or_else(|e| panic!("emulated rpe forward, n = {n}: {e}"));
                    let out = match spec.layout {
                        Layout::Bnhd => from_bnhd(&got.out, b, h, n, Attn::VALUE_DIM),
                        Layout::Bhnd => got.out.clone(),
                    };
                    let err = max_rel_err(&out, &want);
                    assert!(err <= TOL, "rpe forward, n = {n}: max-rel error {err:e} > {TOL:e}");
                    worst = worst.max(err);
                }
                println!("{}: emulated CUDA rpe max-rel error {worst:.2e}", stringify!($m));
            }
        }
    };
}

rpe_spec!(
    rpe_elu_sum,
    head_dim = 16,
    feature_map = elu_plus_one,
    normalize = sum,
    rpe = toeplitz
);
rpe_spec!(
    rpe_bidirectional_bnhd,
    head_dim = 8,
    value_dim = 16,
    mask = none,
    rpe = toeplitz,
    layout = bnhd
);
rpe_spec!(
    rpe_conv_relu_sum,
    head_dim = 8,
    feature_map = relu,
    normalize = sum,
    short_conv = 4,
    rpe = toeplitz
);
