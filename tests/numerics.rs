//! Every supported variant against the step-by-step oracle of the README's Meaning (tests/common), over
//! chunk sizes, tail lengths, both layouts and every ISA variant this CPU has.
//!
//! Tolerance: max |attnc - oracle| / max |oracle| <= 1e-4 (the README's accuracy bound).

#![allow(clippy::needless_range_loop)] // index loops mirror the math in test code

mod common;
#[path = "common/grad.rs"]
mod grad;

use attnc::prelude::*;
use attnc::spec::Layout;
use attnc::{CpuIsa, Schedule};
use common::*;
use dfdx::tensor::{OwnedTape, Trace};
use dfdx::tensor_ops::{Backward, SumTo};

const TOL: f64 = 1e-4;

type Tok<const D: usize> = Tensor<(usize, usize, usize, Const<D>), f32, Cpu>;

/// A token tensor in the spec's layout from heads-first data.
fn tokens<const D: usize>(data: &[f32], x: &Inputs, layout: Layout) -> Tok<D> {
    let dev = Cpu::default();
    match layout {
        Layout::Bhnd => dev.tensor_from_vec(data.to_vec(), (x.b, x.h, x.n, Const)),
        Layout::Bnhd => {
            dev.tensor_from_vec(to_bnhd(data, x.b, x.h, x.n, D), (x.b, x.n, x.h, Const))
        }
    }
}

/// A per-token tensor (beta, g) in the spec's layout.
fn scalars(data: &[f32], x: &Inputs, layout: Layout) -> Tensor<(usize, usize, usize), f32, Cpu> {
    let dev = Cpu::default();
    match layout {
        Layout::Bhnd => dev.tensor_from_vec(data.to_vec(), (x.b, x.h, x.n)),
        Layout::Bnhd => dev.tensor_from_vec(to_bnhd(data, x.b, x.h, x.n, 1), (x.b, x.n, x.h)),
    }
}

/// Token t of every (batch, head), as a (B, H, D) tensor.
fn at_token<const D: usize>(
    data: &[f32],
    x: &Inputs,
    t: usize,
) -> Tensor<(usize, usize, Const<D>), f32, Cpu> {
    let mut out = Vec::with_capacity(x.b * x.h * D);
    for bh in 0..x.b * x.h {
        out.extend_from_slice(&data[(bh * x.n + t) * D..(bh * x.n + t + 1) * D]);
    }
    Cpu::default().tensor_from_vec(out, (x.b, x.h, Const))
}

/// Scalar t of every (batch, head), as a (B, H) tensor.
fn scalar_at(data: &[f32], x: &Inputs, t: usize) -> Tensor<(usize, usize), f32, Cpu> {
    let out = (0..x.b * x.h).map(|bh| data[bh * x.n + t]).collect();
    Cpu::default().tensor_from_vec(out, (x.b, x.h))
}

/// FAVOR+'s projection (F, DK) of the inputs, as the tensor `forward` and `step` take.
fn projection<const M: usize, const D: usize>(
    x: &Inputs,
) -> Tensor<(Const<M>, Const<D>), f32, Cpu> {
    Cpu::default().tensor_from_vec(x.proj.clone(), (Const, Const))
}

/// The `forward` argument of an `extra = [..]` name: a per-token input, or `proj`.
macro_rules! forward_arg {
    (proj, $x:expr, $layout:expr) => {
        projection($x)
    };
    ($name:ident, $x:expr, $layout:expr) => {
        scalars(&$x.$name, $x, $layout)
    };
}

/// The `step` argument of an `extra = [..]` name: token `t` of a per-token input, or `proj`.
macro_rules! step_arg {
    (proj, $x:expr, $t:expr) => {
        projection($x)
    };
    ($name:ident, $x:expr, $t:expr) => {
        scalar_at(&$x.$name, $x, $t)
    };
}

/// The gradient of an `extra = [..]` input, heads first (a per-token input) or as it is (`proj`).
macro_rules! extra_grad {
    (proj, $grads:expr, $t:expr, $x:expr, $layout:expr) => {
        $grads.get(&$t).as_vec()
    };
    ($name:ident, $grads:expr, $t:expr, $x:expr, $layout:expr) => {
        match $layout {
            Layout::Bhnd => $grads.get(&$t).as_vec(),
            Layout::Bnhd => from_bnhd(&$grads.get(&$t).as_vec(), $x.b, $x.h, $x.n, 1),
        }
    };
}

/// f64 cotangents as f32 data.
fn f32s(x: &[f64]) -> Vec<f32> {
    x.iter().map(|&v| v as f32).collect()
}

/// The README's gradient bounds: 1e-4 for q, k, v, the state and the projection; 5e-4 for g and beta,
/// which go through cumulative sums.
fn grad_tolerance(name: &str) -> f64 {
    match name {
        "g" | "beta" => 5e-4,
        _ => 1e-4,
    }
}

/// Heads-first output data from a tensor in the spec's layout.
fn heads_first<const D: usize>(o: &Tok<D>, x: &Inputs, layout: Layout) -> Vec<f32> {
    match layout {
        Layout::Bhnd => o.as_vec(),
        Layout::Bnhd => from_bnhd(&o.as_vec(), x.b, x.h, x.n, D),
    }
}

macro_rules! check_spec {
    ($m:ident, extra = [$($extra:ident),*], $($attr:tt)*) => {
        mod $m {
            use super::*;

            #[attention($($attr)*)]
            pub struct Attn;

            const DK: usize = Attn::HEAD_DIM;
            const DV: usize = Attn::VALUE_DIM;
            type St = State<usize, usize, { Attn::FEATURE_DIM }, { Attn::VALUE_DIM }>;

            fn forward_with_state(x: &Inputs, initial: Option<&St>) -> Result<(Vec<f32>, St), Error> {
                let layout = Attn::spec().layout;
                let q: Tok<DK> = tokens(&x.q, x, layout);
                let k: Tok<DK> = tokens(&x.k, x, layout);
                let v: Tok<DV> = tokens(&x.v, x, layout);
                $(let $extra = forward_arg!($extra, x, layout);)*
                let (o, st) = Attn::forward_with_state(q, k, v, $($extra,)* initial)?;
                Ok((heads_first(&o, x, layout), st))
            }

            fn forward(x: &Inputs) -> Vec<f32> {
                let layout = Attn::spec().layout;
                let q: Tok<DK> = tokens(&x.q, x, layout);
                let k: Tok<DK> = tokens(&x.k, x, layout);
                let v: Tok<DV> = tokens(&x.v, x, layout);
                $(let $extra = forward_arg!($extra, x, layout);)*
                heads_first(&Attn::forward(q, k, v, $($extra,)*).unwrap(), x, layout)
            }

            /// Gradients through dfdx's tape of L = <o, dO> + <S_N, dS> (+ <z_N, dz>), every input
            /// traced, from the initial state `init`: (name, heads-first gradient) pairs named as
            /// the oracle's [`grad::Grads`] fields.
            fn traced_grads(x: &Inputs, init: &St, ct: &grad::Cotangents) -> Vec<(&'static str, Vec<f32>)> {
                let layout = Attn::spec().layout;
                let dev = Cpu::default();
                let q: Tok<DK> = tokens(&x.q, x, layout);
                let k: Tok<DK> = tokens(&x.k, x, layout);
                let v: Tok<DV> = tokens(&x.v, x, layout);
                $(let $extra = forward_arg!($extra, x, layout);)*
                let (o, fin) = Attn::forward_with_state(
                    q.leaky_trace(), k.leaky_trace(), v.leaky_trace(), $($extra.leaky_trace(),)* Some(init),
                ).unwrap();
                let d_o: Tok<DV> = tokens(&f32s(&ct.d_o), x, layout);
                let d_s = dev.tensor_from_vec(f32s(&ct.d_s), *fin.s.shape());
                let mut loss = (o * d_o).sum::<Rank0, _>()
                    + (fin.s.retaped::<OwnedTape<f32, Cpu>>() * d_s).sum::<Rank0, _>();
                if let Some(z) = &fin.z {
                    let d_z = dev.tensor_from_vec(f32s(&ct.d_z), *z.shape());
                    loss = loss + (z.retaped::<OwnedTape<f32, Cpu>>() * d_z).sum::<Rank0, _>();
                }
                let grads = loss.backward();
                let mut out = vec![
                    ("q", heads_first(&grads.get(&q), x, layout)),
                    ("k", heads_first(&grads.get(&k), x, layout)),
                    ("v", heads_first(&grads.get(&v), x, layout)),
                ];
                $(out.push((stringify!($extra), extra_grad!($extra, grads, $extra, x, layout)));)*
                out.push(("s0", grads.get(&init.s).as_vec()));
                if let Some(z) = &init.z {
                    out.push(("z0", grads.get(z).as_vec()));
                }
                out
            }

            /// The backward on dfdx's tape against the f64 gradient oracle (tests/common/grad.rs,
            /// itself checked against finite differences): every input's gradient, the initial
            /// state's included, for N = 1, C - 1, C + 1, 3C + 7, on every ISA variant and both schedules.
            #[test]
            fn backward_matches_gradient_oracle() {
                let spec = Attn::spec();
                let c = Attn::CHUNK;
                let (_, init) = forward_with_state(&random(1, 2, 5, 88), None).unwrap();
                let s0 = init.s.as_vec();
                let z0 = init.z.as_ref().map(|z| z.as_vec());
                for isa in CpuIsa::available() {
                    for (i, n) in [1, c - 1, c + 1, 3 * c + 7].into_iter().enumerate() {
                        let x = random(1, 2, n, 90 + i as u64);
                        let ct = grad::Cotangents::random(spec, 1, 2, n, DV, 7 + i as u64);
                        let want = grad::backward(spec, &x, Some(&s0), z0.as_deref(), &ct);
                        let want: std::collections::HashMap<_, _> = want.named().into_iter().collect();
                        // By (batch, head), and with the chunk-parallel schedule forced (the
                        // chunkwise backward of causal specs; the others ignore it).
                        for schedule in [Schedule::Heads, Schedule::Chunks] {
                            let run = || schedule.run_with(|| traced_grads(&x, &init, &ct));
                            let got = isa.run_with(run).unwrap();
                            assert_eq!(got.len(), want.len(), "gradients {:?} for `{spec}`", got.iter().map(|g| g.0).collect::<Vec<_>>());
                            for (name, g) in &got {
                                let g: Vec<f64> = g.iter().map(|&v| v as f64).collect();
                                let err = grad::rel_err(&g, want[name]);
                                let tol = grad_tolerance(name);
                                eprintln!("grad max-rel d{name} {err:.2e} {isa} {schedule:?} N={n} `{spec}`");
                                assert!(err <= tol, "{isa} {schedule:?} N={n}: d{name} error {err:.2e} > {tol:e} for `{spec}`");
                            }
                        }
                    }
                }
            }

            /// Decodes every token with `step`, returning heads-first outputs and the final state.
            fn stepwise(x: &Inputs) -> (Vec<f32>, St) {
                let normalized = Attn::spec().normalize == attnc::spec::Normalize::Sum;
                let mut st = St::zeros(x.b, x.h, normalized).unwrap();
                let mut o = vec![0.0f32; x.b * x.h * x.n * DV];
                for t in 0..x.n {
                    let q = at_token::<DK>(&x.q, x, t);
                    let k = at_token::<DK>(&x.k, x, t);
                    let v = at_token::<DV>(&x.v, x, t);
                    $(let $extra = step_arg!($extra, x, t);)*
                    let ot = Attn::step(&mut st, &q, &k, &v, $(&$extra,)*).unwrap().as_vec();
                    for bh in 0..x.b * x.h {
                        o[(bh * x.n + t) * DV..(bh * x.n + t + 1) * DV]
                            .copy_from_slice(&ot[bh * DV..(bh + 1) * DV]);
                    }
                }
                (o, st)
            }

            /// Random inputs for this spec (with FAVOR+'s projection, one per spec, if it has one).
            fn random(b: usize, h: usize, n: usize, seed: u64) -> Inputs {
                Inputs::random(b, h, n, DK, DV, seed).for_spec(Attn::spec(), 1234)
            }

            /// N = 1, C - 1, C, C + 1, 3C + 7.
            fn tails() -> Vec<usize> {
                let c = Attn::CHUNK;
                vec![1, c - 1, c, c + 1, 3 * c + 7]
            }

            #[test]
            fn forward_matches_reference_for_every_tail_and_isa() {
                let spec = Attn::spec();
                for isa in CpuIsa::available() {
                    for (i, n) in tails().into_iter().enumerate() {
                        let x = random(2, 3, n, 17 + i as u64);
                        let want = reference(spec, &x, None, None);
                        let (o, st) = isa.run_with(|| forward_with_state(&x, None)).unwrap().unwrap();
                        let err = max_rel_err(&o, &want.o);
                        assert!(err <= TOL, "{isa} N={n}: output error {err:.2e} > {TOL:e} for `{spec}`");
                        let err_s = max_rel_err(&st.s.as_vec(), &want.s);
                        assert!(err_s <= TOL, "{isa} N={n}: state error {err_s:.2e} for `{spec}`");
                        if let Some(z) = &st.z {
                            let err_z = max_rel_err(&z.as_vec(), &want.z);
                            assert!(err_z <= TOL, "{isa} N={n}: z error {err_z:.2e} for `{spec}`");
                        }
                        eprintln!("max-rel {err:.2e} (state {err_s:.2e}) {isa} N={n} `{spec}`");
                    }
                }
            }

            /// The chunk-parallel schedule (phases intra, scan, output), forced, from a non-zero
            /// initial state, on every ISA variant.
            #[test]
            fn chunk_parallel_schedule_matches_reference() {
                let spec = Attn::spec();
                let c = Attn::CHUNK;
                let prefix = random(1, 2, 5, 72);
                let (_, st0) = forward_with_state(&prefix, None).unwrap();
                let s0 = st0.s.as_vec();
                let z0 = st0.z.as_ref().map(|z| z.as_vec());
                for isa in CpuIsa::available() {
                    for (i, n) in [c + 1, 3 * c + 7, 9 * c].into_iter().enumerate() {
                        let x = random(1, 2, n, 71 + i as u64);
                        let want = reference(spec, &x, Some(&s0), z0.as_deref());
                        let run = || Schedule::Chunks.run_with(|| forward_with_state(&x, Some(&st0)));
                        let (o, st) = isa.run_with(run).unwrap().unwrap();
                        let err = max_rel_err(&o, &want.o);
                        assert!(err <= TOL, "{isa} N={n}: chunk-parallel output error {err:.2e} for `{spec}`");
                        let err_s = max_rel_err(&st.s.as_vec(), &want.s);
                        assert!(err_s <= TOL, "{isa} N={n}: chunk-parallel state error {err_s:.2e}");
                        if let Some(z) = &st.z {
                            let err_z = max_rel_err(&z.as_vec(), &want.z);
                            assert!(err_z <= TOL, "{isa} N={n}: chunk-parallel z error {err_z:.2e}");
                        }
                    }
                }
            }

            #[test]
            fn forward_equals_forward_with_state_none() {
                let x = random(1, 2, Attn::CHUNK + 3, 5);
                let (o, _) = forward_with_state(&x, None).unwrap();
                assert_eq!(forward(&x), o);
            }

            #[test]
            fn chaining_two_halves_equals_one_call() {
                let n = 2 * Attn::CHUNK + 9;
                let x = random(2, 2, n, 23);
                let want = reference(Attn::spec(), &x, None, None);
                let split = Attn::CHUNK / 2 + 5;
                let (a, b) = split_tokens(&x, split);
                let (o1, st1) = forward_with_state(&a, None).unwrap();
                let (o2, st2) = forward_with_state(&b, Some(&st1)).unwrap();
                // Non-causal outputs depend on the whole sequence given to one call, so only
                // the state chains for them; causal outputs chain too.
                if Attn::spec().mask == attnc::spec::Mask::Causal {
                    let o = join_tokens(&o1, &o2, &x, split, DV);
                    let err = max_rel_err(&o, &want.o);
                    assert!(err <= TOL, "chained output error {err:.2e}");
                }
                let err_s = max_rel_err(&st2.s.as_vec(), &want.s);
                assert!(err_s <= TOL, "chained state error {err_s:.2e}");
            }

            #[test]
            fn initial_state_matches_reference() {
                let x = random(1, 2, Attn::CHUNK + 1, 31);
                let prefix = random(1, 2, 7, 32);
                let (_, st0) = forward_with_state(&prefix, None).unwrap();
                let s0 = st0.s.as_vec();
                let z0 = st0.z.as_ref().map(|z| z.as_vec());
                let want = reference(Attn::spec(), &x, Some(&s0), z0.as_deref());
                let (o, _) = forward_with_state(&x, Some(&st0)).unwrap();
                let err = max_rel_err(&o, &want.o);
                assert!(err <= TOL, "output from an initial state: error {err:.2e}");
            }

            #[test]
            fn step_token_by_token_matches_forward() {
                let x = random(2, 2, Attn::CHUNK + 5, 41);
                let (o, st) = forward_with_state(&x, None).unwrap();
                let (o_step, st_step) = stepwise(&x);
                let want = reference(Attn::spec(), &x, None, None);
                // The step form is causal by construction; compare it with forward only when the
                // spec is causal, and always with the oracle's final state.
                if Attn::spec().mask == attnc::spec::Mask::Causal {
                    let as_f64: Vec<f64> = o.iter().map(|&v| v as f64).collect();
                    let err = max_rel_err(&o_step, &as_f64);
                    assert!(err <= TOL, "step vs forward: error {err:.2e}");
                }
                let err_s = max_rel_err(&st_step.s.as_vec(), &want.s);
                assert!(err_s <= TOL, "step final state: error {err_s:.2e}");
                let s: Vec<f64> = st.s.as_vec().iter().map(|&v| v as f64).collect();
                assert!(max_rel_err(&st_step.s.as_vec(), &s) <= TOL);
            }
        }
    };
}

/// Splits inputs at token `at` into two problems.
fn split_tokens(x: &Inputs, at: usize) -> (Inputs, Inputs) {
    let part = |lo: usize, hi: usize| {
        let take = |d: usize, src: &[f32]| {
            let mut out = Vec::new();
            for bh in 0..x.b * x.h {
                out.extend_from_slice(&src[(bh * x.n + lo) * d..(bh * x.n + hi) * d]);
            }
            out
        };
        Inputs {
            n: hi - lo,
            q: take(x.dk, &x.q),
            k: take(x.dk, &x.k),
            v: take(x.dv, &x.v),
            beta: take(1, &x.beta),
            g: take(1, &x.g),
            ..x.clone()
        }
    };
    (part(0, at), part(at, x.n))
}

/// Concatenates heads-first outputs of two token ranges.
fn join_tokens(a: &[f32], b: &[f32], x: &Inputs, at: usize, dv: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for bh in 0..x.b * x.h {
        out.extend_from_slice(&a[bh * at * dv..(bh + 1) * at * dv]);
        let rest = x.n - at;
        out.extend_from_slice(&b[bh * rest * dv..(bh + 1) * rest * dv]);
    }
    out
}

// Additive, causal, every elementwise map, every chunk size.
check_spec!(plain_c16, extra = [], head_dim = 16, chunk = 16);
check_spec!(plain_c64, extra = [], head_dim = 16, chunk = 64);
check_spec!(plain_c256, extra = [], head_dim = 16, chunk = 256);
check_spec!(plain_d64_c64, extra = [], head_dim = 64, chunk = 64);
check_spec!(
    elu_sum_c16,
    extra = [],
    head_dim = 16,
    feature_map = elu_plus_one,
    normalize = sum,
    chunk = 16
);
check_spec!(
    elu_sum_c64,
    extra = [],
    head_dim = 32,
    feature_map = elu_plus_one,
    normalize = sum,
    chunk = 64
);
check_spec!(
    elu_sum_c256,
    extra = [],
    head_dim = 16,
    feature_map = elu_plus_one,
    normalize = sum,
    chunk = 256
);
check_spec!(
    relu_l2_c32,
    extra = [],
    head_dim = 32,
    value_dim = 48,
    feature_map = relu,
    qk_norm = l2,
    scale = 0.5,
    chunk = 32
);
check_spec!(
    sqrelu_sum_c16,
    extra = [],
    head_dim = 16,
    feature_map = squared_relu,
    normalize = sum,
    chunk = 16
);
check_spec!(
    sigmoid_sum_c128,
    extra = [],
    head_dim = 8,
    value_dim = 24,
    feature_map = sigmoid,
    normalize = sum,
    chunk = 128
);
check_spec!(
    closure_c16,
    extra = [],
    head_dim = 16,
    feature_map = |x| if x > 0.0 {
        x * x + 1.0
    } else {
        (0.5 * x).exp()
    },
    chunk = 16
);
// A closure whose printed derivative would be too large (40 nested `abs`): phi' by dual
// numbers at run time.
check_spec!(
    closure_dual_c16,
    extra = [],
    head_dim = 16,
    feature_map = |x| 0.5
        * x.abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
            .abs()
        + x.tanh(),
    chunk = 16
);
check_spec!(
    closure_sum_c64,
    extra = [],
    head_dim = 16,
    feature_map = |x| x.tanh().abs() + x.min(0.0).powi(2),
    normalize = sum,
    chunk = 64
);

// Gated (RetNet / simple GLA).
check_spec!(
    gated_c16,
    extra = [g],
    head_dim = 16,
    update = gated,
    chunk = 16
);
check_spec!(
    gated_c64,
    extra = [g],
    head_dim = 32,
    value_dim = 16,
    update = gated,
    chunk = 64
);
check_spec!(
    gated_c256,
    extra = [g],
    head_dim = 16,
    update = gated,
    chunk = 256
);
check_spec!(
    gated_elu_sum_l2_c32,
    extra = [g],
    head_dim = 16,
    update = gated,
    feature_map = elu_plus_one,
    normalize = sum,
    qk_norm = l2,
    chunk = 32
);

// Non-causal.
check_spec!(
    noncausal_c16,
    extra = [],
    head_dim = 16,
    mask = none,
    chunk = 16
);
check_spec!(
    noncausal_elu_sum_c64,
    extra = [],
    head_dim = 16,
    mask = none,
    feature_map = elu_plus_one,
    normalize = sum,
    chunk = 64
);
check_spec!(
    noncausal_c256,
    extra = [],
    head_dim = 8,
    mask = none,
    feature_map = relu,
    chunk = 256
);

// Tokens-first layout (flash-linear-attention's), across the same variants.
check_spec!(
    bnhd_plain_c16,
    extra = [],
    head_dim = 16,
    layout = bnhd,
    chunk = 16
);
check_spec!(
    bnhd_plain_c256,
    extra = [],
    head_dim = 16,
    layout = bnhd,
    chunk = 256
);
check_spec!(
    bnhd_elu_sum_c64,
    extra = [],
    head_dim = 16,
    value_dim = 32,
    feature_map = elu_plus_one,
    normalize = sum,
    layout = bnhd,
    chunk = 64
);
check_spec!(
    bnhd_gated_c16,
    extra = [g],
    head_dim = 16,
    update = gated,
    layout = bnhd,
    chunk = 16
);
check_spec!(
    bnhd_gated_l2_c64,
    extra = [g],
    head_dim = 32,
    update = gated,
    qk_norm = l2,
    layout = bnhd,
    chunk = 64
);
check_spec!(
    bnhd_noncausal_c16,
    extra = [],
    head_dim = 16,
    mask = none,
    feature_map = sigmoid,
    normalize = sum,
    layout = bnhd,
    chunk = 16
);

// Expanding feature maps: Based's taylor2 (F = 1 + d + d(d+1)/2) and DPFP (F = 2 d nu).
check_spec!(
    taylor2_sum_c16,
    extra = [],
    head_dim = 8,
    feature_map = taylor2,
    normalize = sum,
    chunk = 16
);
check_spec!(
    taylor2_c64,
    extra = [],
    head_dim = 16,
    value_dim = 8,
    feature_map = taylor2,
    qk_norm = l2,
    chunk = 64
);
check_spec!(
    taylor2_gated_bnhd_c32,
    extra = [g],
    head_dim = 8,
    feature_map = taylor2,
    update = gated,
    layout = bnhd,
    chunk = 32
);
check_spec!(
    dpfp_sum_c16,
    extra = [],
    head_dim = 8,
    feature_map = dpfp(nu = 2),
    normalize = sum,
    chunk = 16
);
check_spec!(
    dpfp_c256,
    extra = [],
    head_dim = 8,
    value_dim = 16,
    feature_map = dpfp(nu = 3),
    chunk = 256
);
check_spec!(
    dpfp_delta_c16,
    extra = [beta],
    head_dim = 8,
    feature_map = dpfp(nu = 1),
    update = delta,
    qk_norm = l2,
    chunk = 16
);
// The remaining chunk sizes and the tokens-first layout for the expanding maps.
check_spec!(
    taylor2_delta_c128,
    extra = [beta],
    head_dim = 8,
    feature_map = taylor2,
    update = delta,
    qk_norm = l2,
    chunk = 128
);
check_spec!(
    taylor2_sum_bnhd_c256,
    extra = [],
    head_dim = 8,
    value_dim = 16,
    feature_map = taylor2,
    normalize = sum,
    layout = bnhd,
    chunk = 256
);
check_spec!(
    dpfp_gated_bnhd_c32,
    extra = [g],
    head_dim = 8,
    feature_map = dpfp(nu = 2),
    update = gated,
    layout = bnhd,
    chunk = 32
);
check_spec!(
    dpfp_sum_c64,
    extra = [],
    head_dim = 16,
    feature_map = dpfp(nu = 1),
    normalize = sum,
    chunk = 64
);
check_spec!(
    dpfp_gated_delta_c128,
    extra = [beta, g],
    head_dim = 8,
    value_dim = 24,
    feature_map = dpfp(nu = 2),
    update = gated_delta,
    qk_norm = l2,
    chunk = 128
);
check_spec!(
    noncausal_taylor2_sum_c16,
    extra = [],
    head_dim = 8,
    feature_map = taylor2,
    mask = none,
    normalize = sum,
    chunk = 16
);

// The delta rule and the gated delta rule (DeltaNet, Gated DeltaNet).
check_spec!(
    delta_c16,
    extra = [beta],
    head_dim = 16,
    update = delta,
    qk_norm = l2,
    chunk = 16
);
check_spec!(
    delta_c64,
    extra = [beta],
    head_dim = 32,
    value_dim = 16,
    update = delta,
    qk_norm = l2,
    chunk = 64
);
check_spec!(
    delta_c256,
    extra = [beta],
    head_dim = 16,
    update = delta,
    qk_norm = l2,
    chunk = 256
);
// (relu after L2 keeps |phi(k)| <= 1, where the delta rule is a contraction.)
check_spec!(
    delta_relu_c32,
    extra = [beta],
    head_dim = 16,
    update = delta,
    feature_map = relu,
    qk_norm = l2,
    scale = 1.0,
    chunk = 32
);
check_spec!(
    gated_delta_c16,
    extra = [beta, g],
    head_dim = 16,
    update = gated_delta,
    qk_norm = l2,
    chunk = 16
);
check_spec!(
    gated_delta_c64,
    extra = [beta, g],
    head_dim = 16,
    value_dim = 32,
    update = gated_delta,
    qk_norm = l2,
    chunk = 64
);
check_spec!(
    gated_delta_c256,
    extra = [beta, g],
    head_dim = 16,
    update = gated_delta,
    qk_norm = l2,
    chunk = 256
);
check_spec!(
    bnhd_delta_c16,
    extra = [beta],
    head_dim = 16,
    update = delta,
    qk_norm = l2,
    layout = bnhd,
    chunk = 16
);
check_spec!(
    bnhd_gated_delta_c64,
    extra = [beta, g],
    head_dim = 16,
    update = gated_delta,
    qk_norm = l2,
    layout = bnhd,
    chunk = 64
);

// FAVOR+ (Performer's positive random features, F = features): the projection is the last
// argument (`proj`, sampled once per spec by `attnc::favor::orthogonal_gaussian_vec`).
check_spec!(
    favor_sum_c16,
    extra = [proj],
    head_dim = 16,
    feature_map = favor(features = 64),
    normalize = sum,
    chunk = 16
);
check_spec!(
    favor_noncausal_sum_c32,
    extra = [proj],
    head_dim = 16,
    feature_map = favor(features = 128),
    mask = none,
    normalize = sum,
    chunk = 32
);
check_spec!(
    favor_additive_c64,
    extra = [proj],
    head_dim = 32,
    value_dim = 16,
    feature_map = favor(features = 96),
    chunk = 64
);
check_spec!(
    favor_gated_sum_c16,
    extra = [g, proj],
    head_dim = 16,
    feature_map = favor(features = 32),
    update = gated,
    normalize = sum,
    chunk = 16
);
check_spec!(
    favor_delta_l2_c32,
    extra = [beta, proj],
    head_dim = 16,
    feature_map = favor(features = 64),
    update = delta,
    qk_norm = l2,
    chunk = 32
);
check_spec!(
    favor_bnhd_sum_c256,
    extra = [proj],
    head_dim = 8,
    value_dim = 24,
    feature_map = favor(features = 256),
    normalize = sum,
    layout = bnhd,
    chunk = 256
);
