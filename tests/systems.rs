//! The systems (`update = momentum(..)`, `short_conv`, `rpe = toeplitz`) against their f64
//! oracles (tests/common/systems.rs): forward over chunk tails and layouts, state chaining,
//! `step` against `forward`, every ISA this CPU has, gradients against central differences of
//! the f64 oracle, and the runtime errors.
//!
//! Tolerance: max |attnc - oracle| / max |oracle| <= 1e-4 (the README's bound); gradients
//! 1e-3 against finite differences of the f64 oracle (step 1e-3: truncation error ~1e-6
//! relative, the rest the f32 kernels' rounding).

#![allow(clippy::needless_range_loop, clippy::type_complexity)]

mod common;

use attnc::prelude::*;
use attnc::spec::Layout;
use attnc::CpuIsa;
use common::systems as oracle;
use common::*;

const TOL: f64 = 1e-4;

/// Heavy-ball momentum on plain linear attention.
#[attention(head_dim = 16, update = momentum(mu = 0.9), chunk = 16)]
pub struct Momentum;

/// Momentum with elu+1, the normaliser, qk_norm and tokens-first layout.
#[attention(head_dim = 16, value_dim = 8, feature_map = elu_plus_one, normalize = sum, qk_norm = l2, update = momentum(mu = 0.5), chunk = 32, layout = bnhd)]
pub struct MomentumNorm;

/// mu = 0: must equal `Additive` bit for bit.
#[attention(head_dim = 16, update = momentum(mu = 0.0), chunk = 16)]
pub struct MomentumZero;

/// The plain additive update of the same dims.
#[attention(head_dim = 16, chunk = 16)]
pub struct Additive;

/// A short convolution before plain linear attention.
#[attention(head_dim = 16, short_conv = 4, chunk = 16)]
pub struct Conv;

/// Gated DeltaNet's layer: short convolution, L2-normalised q and k, the gated delta rule.
#[attention(head_dim = 16, short_conv = 3, qk_norm = l2, update = gated_delta, chunk = 16)]
pub struct ConvGatedDelta;

/// Momentum after a short convolution, with the normaliser.
#[attention(head_dim = 8, feature_map = sigmoid, normalize = sum, short_conv = 2, update = momentum(mu = 0.75), chunk = 16)]
pub struct ConvMomentum;

/// rpe, causal, normalised.
#[attention(head_dim = 16, feature_map = elu_plus_one, normalize = sum, rpe = toeplitz)]
pub struct Rpe;

/// rpe over the whole sequence, unnormalised, tokens first.
#[attention(head_dim = 8, value_dim = 16, mask = none, rpe = toeplitz, layout = bnhd)]
pub struct RpeAll;

/// rpe after a short convolution.
#[attention(head_dim = 8, feature_map = relu, normalize = sum, short_conv = 4, rpe = toeplitz)]
pub struct RpeConv;

type Tok<const D: usize> = Tensor<(usize, usize, usize, Const<D>), f32, Cpu>;

fn tokens<const D: usize>(data: &[f32], x: &Inputs, layout: Layout) -> Tok<D> {
    let dev = Cpu::default();
    match layout {
        Layout::Bhnd => dev.tensor_from_vec(data.to_vec(), (x.b, x.h, x.n, Const)),
        Layout::Bnhd => {
            dev.tensor_from_vec(to_bnhd(data, x.b, x.h, x.n, D), (x.b, x.n, x.h, Const))
        }
    }
}

fn heads_first(o: &[f32], x: &Inputs, layout: Layout, d: usize) -> Vec<f32> {
    match layout {
        Layout::Bhnd => o.to_vec(),
        Layout::Bnhd => from_bnhd(o, x.b, x.h, x.n, d),
    }
}

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

fn conv_weights<const D: usize, const W: usize>(
    h: usize,
    seed: u64,
) -> (Vec<f32>, Tensor<(usize, Const<D>, Const<W>), f32, Cpu>) {
    let mut rng = Rng::new(seed);
    let w: Vec<f32> = (0..h * D * W).map(|_| rng.normal() * 0.5).collect();
    let t = Cpu::default().tensor_from_vec(w.clone(), (h, Const, Const));
    (w, t)
}

#[test]
fn momentum_matches_the_recurrence_over_tails_and_isas() {
    for isa in CpuIsa::available() {
        for n in [1, 15, 16, 37, 64] {
            let x = Inputs::random(2, 3, n, 16, 16, 7 + n as u64);
            let spec = Momentum::spec();
            let (want, fin) = oracle::momentum(spec, &x, [&[], &[], &[], &[]]);
            let (o, st) = isa
                .run_with(|| {
                    Momentum::forward_with_state(
                        tokens::<16>(&x.q, &x, Layout::Bhnd),
                        tokens(&x.k, &x, Layout::Bhnd),
                        tokens(&x.v, &x, Layout::Bhnd),
                        None,
                    )
                })
                .unwrap()
                .unwrap();
            let err = max_rel_err(&o.as_vec(), &want);
            eprintln!(
                "max-rel {:.2e} momentum_matches_the_recurrence_over_tails_and_isas",
                err
            );
            assert!(err <= TOL, "{isa:?} n = {n}: output error {err:e}");
            let (es, em) = (
                max_rel_err(&st.s.as_vec(), &fin[0]),
                max_rel_err(&st.m.unwrap().as_vec(), &fin[2]),
            );
            assert!(
                es <= TOL && em <= TOL,
                "{isa:?} n = {n}: state errors S {es:e}, m {em:e}"
            );
        }
    }
}

#[test]
fn momentum_with_the_normaliser_chains_and_steps() {
    let x = Inputs::random(1, 2, 45, 16, 8, 3);
    let spec = MomentumNorm::spec();
    let (want, fin) = oracle::momentum(spec, &x, [&[], &[], &[], &[]]);
    let l = Layout::Bnhd;
    let (o, st) = MomentumNorm::forward_with_state(
        tokens::<16>(&x.q, &x, l),
        tokens(&x.k, &x, l),
        tokens(&x.v, &x, l),
        None,
    )
    .unwrap();
    let err = max_rel_err(&heads_first(&o.as_vec(), &x, l, 8), &want);
    eprintln!(
        "max-rel {:.2e} momentum_with_the_normaliser_chains_and_steps",
        err
    );
    assert!(err <= TOL, "output error {err:e}");
    assert!(max_rel_err(&st.z.clone().unwrap().as_vec(), &fin[1]) <= TOL);
    assert!(max_rel_err(&st.n.clone().unwrap().as_vec(), &fin[3]) <= TOL);
    // Two halves chained through the state equal one call.
    let (a, b) = (split(&x, 0, 20), split(&x, 20, 45));
    let (o1, s1) = MomentumNorm::forward_with_state(
        tokens::<16>(&a.q, &a, l),
        tokens(&a.k, &a, l),
        tokens(&a.v, &a, l),
        None,
    )
    .unwrap();
    let (o2, _) = MomentumNorm::forward_with_state(
        tokens::<16>(&b.q, &b, l),
        tokens(&b.k, &b, l),
        tokens(&b.v, &b, l),
        Some(&s1),
    )
    .unwrap();
    let mut got = heads_first(&o1.as_vec(), &a, l, 8);
    got = join(&got, &heads_first(&o2.as_vec(), &b, l, 8), &x, 20, 8);
    let err = max_rel_err(&got, &want);
    eprintln!(
        "max-rel {:.2e} momentum_with_the_normaliser_chains_and_steps",
        err
    );
    assert!(err <= TOL, "chained error {err:e}");
    // Token by token from a zero state.
    let mut state = MomentumNorm::zero_state(1usize, 2usize).unwrap();
    for t in 0..x.n {
        let o_t = MomentumNorm::step(
            &mut state,
            &at_token::<16>(&x.q, &x, t),
            &at_token::<16>(&x.k, &x, t),
            &at_token::<8>(&x.v, &x, t),
        )
        .unwrap();
        for (bh, row) in o_t.as_vec().chunks(8).enumerate() {
            let w = &want[(bh * x.n + t) * 8..(bh * x.n + t + 1) * 8];
            let e = max_rel_err(row, w);
            eprintln!(
                "max-rel {:.2e} momentum_with_the_normaliser_chains_and_steps",
                e
            );
            assert!(e <= TOL, "step {t}: error {e:e}");
        }
    }
}

/// Tokens `lo..hi` of `x`.
fn split(x: &Inputs, lo: usize, hi: usize) -> Inputs {
    let cut = |v: &[f32], d: usize| -> Vec<f32> {
        (0..x.b * x.h)
            .flat_map(|bh| v[(bh * x.n + lo) * d..(bh * x.n + hi) * d].to_vec())
            .collect()
    };
    Inputs {
        n: hi - lo,
        q: cut(&x.q, x.dk),
        k: cut(&x.k, x.dk),
        v: cut(&x.v, x.dv),
        beta: cut(&x.beta, 1),
        g: cut(&x.g, 1),
        ..x.clone()
    }
}

/// Heads-first outputs of two halves (split at `at`) joined.
fn join(a: &[f32], b: &[f32], x: &Inputs, at: usize, d: usize) -> Vec<f32> {
    let n2 = x.n - at;
    (0..x.b * x.h)
        .flat_map(|bh| {
            a[bh * at * d..(bh + 1) * at * d]
                .iter()
                .chain(&b[bh * n2 * d..(bh + 1) * n2 * d])
                .copied()
                .collect::<Vec<f32>>()
        })
        .collect()
}

#[test]
fn momentum_zero_is_the_additive_update_bit_for_bit() {
    let x = Inputs::random(2, 2, 53, 16, 16, 11);
    let l = Layout::Bhnd;
    let (o, st) = MomentumZero::forward_with_state(
        tokens::<16>(&x.q, &x, l),
        tokens(&x.k, &x, l),
        tokens(&x.v, &x, l),
        None,
    )
    .unwrap();
    let (oa, sa) = Additive::forward_with_state(
        tokens::<16>(&x.q, &x, l),
        tokens(&x.k, &x, l),
        tokens(&x.v, &x, l),
        None,
    )
    .unwrap();
    assert_eq!(o.as_vec(), oa.as_vec(), "outputs differ");
    assert_eq!(st.s.as_vec(), sa.s.as_vec(), "states differ");
    let mut s0 = MomentumZero::zero_state(2usize, 2usize).unwrap();
    let mut s1 = Additive::zero_state(2usize, 2usize).unwrap();
    for t in 0..5 {
        let (q, k, v) = (
            at_token::<16>(&x.q, &x, t),
            at_token::<16>(&x.k, &x, t),
            at_token::<16>(&x.v, &x, t),
        );
        let a = MomentumZero::step(&mut s0, &q, &k, &v).unwrap();
        let b = Additive::step(&mut s1, &q, &k, &v).unwrap();
        assert_eq!(a.as_vec(), b.as_vec(), "step {t} differs");
    }
}

/// Convolved inputs (heads first) of `x` with weights `w = [wq, wk, wv]` from zero tails.
fn convolved(x: &Inputs, w: &[Vec<f32>; 3], width: usize) -> Inputs {
    let bh = x.b * x.h;
    let run = |v: &[f32], w: &[f32], d: usize| {
        oracle::conv_silu(
            v,
            &vec![0.0; bh * (width - 1) * d],
            w,
            (bh, x.h, x.n, d, width),
        )
        .0
    };
    Inputs {
        q: run(&x.q, &w[0], x.dk),
        k: run(&x.k, &w[1], x.dk),
        v: run(&x.v, &w[2], x.dv),
        ..x.clone()
    }
}

#[test]
fn short_conv_matches_conv_then_the_recurrence() {
    for n in [1, 3, 16, 29] {
        let x = Inputs::random(2, 2, n, 16, 16, 5 + n as u64);
        let (wq, tq) = conv_weights::<16, 4>(2, 1);
        let (wk, tk) = conv_weights::<16, 4>(2, 2);
        let (wv, tv) = conv_weights::<16, 4>(2, 3);
        let cx = convolved(&x, &[wq, wk, wv], 4);
        let want = reference(Conv::spec(), &cx, None, None);
        let l = Layout::Bhnd;
        let o = Conv::forward(
            tokens::<16>(&x.q, &x, l),
            tokens(&x.k, &x, l),
            tokens(&x.v, &x, l),
            tq,
            tk,
            tv,
        )
        .unwrap();
        let err = max_rel_err(&o.as_vec(), &want.o);
        eprintln!(
            "max-rel {:.2e} short_conv_matches_conv_then_the_recurrence",
            err
        );
        assert!(err <= TOL, "n = {n}: error {err:e}");
    }
}

#[test]
fn short_conv_gated_delta_chains_and_steps() {
    let x = Inputs::random(1, 2, 40, 16, 16, 9);
    let (wq, tq) = conv_weights::<16, 3>(2, 4);
    let (wk, tk) = conv_weights::<16, 3>(2, 5);
    let (wv, tv) = conv_weights::<16, 3>(2, 6);
    let cx = convolved(&x, &[wq, wk, wv], 3);
    let want = reference(ConvGatedDelta::spec(), &cx, None, None);
    let l = Layout::Bhnd;
    let sc = |d: &[f32], x: &Inputs| Cpu::default().tensor_from_vec(d.to_vec(), (x.b, x.h, x.n));
    let (a, b) = (split(&x, 0, 17), split(&x, 17, 40));
    let (o1, st) = ConvGatedDelta::forward_with_state(
        tokens::<16>(&a.q, &a, l),
        tokens(&a.k, &a, l),
        tokens(&a.v, &a, l),
        sc(&a.beta, &a),
        sc(&a.g, &a),
        tq.clone(),
        tk.clone(),
        tv.clone(),
        None,
    )
    .unwrap();
    let (o2, _) = ConvGatedDelta::forward_with_state(
        tokens::<16>(&b.q, &b, l),
        tokens(&b.k, &b, l),
        tokens(&b.v, &b, l),
        sc(&b.beta, &b),
        sc(&b.g, &b),
        tq.clone(),
        tk.clone(),
        tv.clone(),
        Some(&st),
    )
    .unwrap();
    let got = join(&o1.as_vec(), &o2.as_vec(), &x, 17, 16);
    let err = max_rel_err(&got, &want.o);
    eprintln!(
        "max-rel {:.2e} short_conv_gated_delta_chains_and_steps",
        err
    );
    assert!(err <= TOL, "chained error {err:e}");
    let mut state = ConvGatedDelta::zero_state(1usize, 2usize).unwrap();
    let dev = Cpu::default();
    for t in 0..x.n {
        let s_at = |d: &[f32]| {
            dev.tensor_from_vec(
                (0..2).map(|bh| d[bh * x.n + t]).collect::<Vec<f32>>(),
                (1usize, 2usize),
            )
        };
        let o_t = ConvGatedDelta::step(
            &mut state,
            &at_token::<16>(&x.q, &x, t),
            &at_token::<16>(&x.k, &x, t),
            &at_token::<16>(&x.v, &x, t),
            &s_at(&x.beta),
            &s_at(&x.g),
            &tq,
            &tk,
            &tv,
        )
        .unwrap();
        for (bh, row) in o_t.as_vec().chunks(16).enumerate() {
            let e = max_rel_err(row, &want.o[(bh * x.n + t) * 16..(bh * x.n + t + 1) * 16]);
            eprintln!("max-rel {:.2e} short_conv_gated_delta_chains_and_steps", e);
            assert!(e <= TOL, "step {t}: error {e:e}");
        }
    }
}

#[test]
fn short_conv_with_momentum_matches_its_oracle() {
    let x = Inputs::random(2, 1, 33, 8, 8, 21);
    let (wq, tq) = conv_weights::<8, 2>(1, 7);
    let (wk, tk) = conv_weights::<8, 2>(1, 8);
    let (wv, tv) = conv_weights::<8, 2>(1, 9);
    let cx = convolved(&x, &[wq, wk, wv], 2);
    let (want, _) = oracle::momentum(ConvMomentum::spec(), &cx, [&[], &[], &[], &[]]);
    let l = Layout::Bhnd;
    let o = ConvMomentum::forward(
        tokens::<8>(&x.q, &x, l),
        tokens(&x.k, &x, l),
        tokens(&x.v, &x, l),
        tq,
        tk,
        tv,
    )
    .unwrap();
    let err = max_rel_err(&o.as_vec(), &want);
    eprintln!(
        "max-rel {:.2e} short_conv_with_momentum_matches_its_oracle",
        err
    );
    assert!(err <= TOL, "error {err:e}");
}

fn bias(h: usize, n: usize, seed: u64) -> (Vec<f32>, Tensor<(usize, usize), f32, Cpu>) {
    let mut rng = Rng::new(seed);
    let b: Vec<f32> = (0..h * (2 * n - 1))
        .map(|_| rng.normal() * 0.5 - 0.2)
        .collect();
    (b.clone(), Cpu::default().tensor_from_vec(b, (h, 2 * n - 1)))
}

#[test]
fn rpe_matches_the_direct_sum() {
    for n in [1, 2, 17, 64, 100] {
        let x = Inputs::random(2, 2, n, 16, 16, 30 + n as u64);
        let (bv, bt) = bias(2, n, n as u64);
        let want = oracle::rpe(Rpe::spec(), &x, &bv);
        let l = Layout::Bhnd;
        let o = Rpe::forward(
            tokens::<16>(&x.q, &x, l),
            tokens(&x.k, &x, l),
            tokens(&x.v, &x, l),
            bt,
        )
        .unwrap();
        let err = max_rel_err(&o.as_vec(), &want);
        eprintln!("max-rel {:.2e} rpe_matches_the_direct_sum", err);
        assert!(err <= TOL, "causal n = {n}: error {err:e}");
        let x = Inputs::random(1, 2, n, 8, 16, 40 + n as u64);
        let want = oracle::rpe(RpeAll::spec(), &x, &bv);
        let l = Layout::Bnhd;
        let o = RpeAll::forward(
            tokens::<8>(&x.q, &x, l),
            tokens(&x.k, &x, l),
            tokens(&x.v, &x, l),
            Cpu::default().tensor_from_vec(bv.clone(), (2usize, 2 * n - 1)),
        )
        .unwrap();
        let err = max_rel_err(&heads_first(&o.as_vec(), &x, l, 16), &want);
        eprintln!("max-rel {:.2e} rpe_matches_the_direct_sum", err);
        assert!(err <= TOL, "non-causal n = {n}: error {err:e}");
    }
}

#[test]
fn rpe_after_a_short_convolution() {
    let x = Inputs::random(1, 3, 50, 8, 8, 77);
    let (wq, tq) = conv_weights::<8, 4>(3, 11);
    let (wk, tk) = conv_weights::<8, 4>(3, 12);
    let (wv, tv) = conv_weights::<8, 4>(3, 13);
    let cx = convolved(&x, &[wq, wk, wv], 4);
    let (bv, bt) = bias(3, 50, 5);
    let want = oracle::rpe(RpeConv::spec(), &cx, &bv);
    let l = Layout::Bhnd;
    let o = RpeConv::forward(
        tokens::<8>(&x.q, &x, l),
        tokens(&x.k, &x, l),
        tokens(&x.v, &x, l),
        tq,
        tk,
        tv,
        bt,
    )
    .unwrap();
    let err = max_rel_err(&o.as_vec(), &want);
    eprintln!("max-rel {:.2e} rpe_after_a_short_convolution", err);
    assert!(err <= TOL, "error {err:e}");
}

#[test]
fn wrong_bias_and_weight_shapes_are_errors() {
    let x = Inputs::random(1, 2, 10, 16, 16, 1);
    let l = Layout::Bhnd;
    let bad = Cpu::default().tensor_from_vec(vec![0.0; 2 * 18], (2usize, 18usize));
    let e = Rpe::forward(
        tokens::<16>(&x.q, &x, l),
        tokens(&x.k, &x, l),
        tokens(&x.v, &x, l),
        bad,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("`bias` has shape [2, 18] but [2, 19] was expected"),
        "{e}"
    );
    let (_, tq) = conv_weights::<16, 4>(3, 1);
    let (_, tk) = conv_weights::<16, 4>(2, 1);
    let e = Conv::forward(
        tokens::<16>(&x.q, &x, l),
        tokens(&x.k, &x, l),
        tokens(&x.v, &x, l),
        tq,
        tk.clone(),
        tk,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("`conv_q` has shape [3, 16, 4] but [2, 16, 4] was expected"),
        "{e}"
    );
}

/// rpe, unnormalised, d = 8: small enough to run at N = 65536.
#[attention(head_dim = 8, rpe = toeplitz)]
pub struct RpeLong;

/// At N = 65536 an N x N score matrix would take 16 GiB (f32) per head; the FFT kernel holds
/// O(N) per sequence. The call must succeed, and sampled rows must agree with the direct sum
/// (each row's sum is O(N d), so the oracle stays cheap). The N log N growth of its time is
/// measured by the harness (`rpe` rows, N = 1K .. 64K), not asserted here.
#[test]
fn rpe_runs_at_64k_tokens_without_an_n_by_n_matrix() {
    let n = 65536;
    let x = Inputs::random(1, 1, n, 8, 8, 64);
    let mut rng = Rng::new(65);
    // Log-weights decaying with distance, as a positional prior would.
    let b: Vec<f32> = (0..2 * n - 1)
        .map(|r| -0.01 * (r as f32 - (n - 1) as f32).abs() + 0.1 * rng.normal())
        .collect();
    let l = Layout::Bhnd;
    let bt = Cpu::default().tensor_from_vec(b.clone(), (1usize, 2 * n - 1));
    let o = RpeLong::forward(
        tokens::<8>(&x.q, &x, l),
        tokens(&x.k, &x, l),
        tokens(&x.v, &x, l),
        bt,
    )
    .unwrap()
    .as_vec();
    let scale = RpeLong::spec().scale_value() as f64;
    for t in [0, 1, 777, 40000, n - 1] {
        let mut want = [0.0f64; 8];
        for s in 0..=t {
            let a = (b[s + n - 1 - t] as f64).exp();
            let qk: f64 = (0..8)
                .map(|i| x.q[t * 8 + i] as f64 * x.k[s * 8 + i] as f64)
                .sum();
            for j in 0..8 {
                want[j] += a * qk * scale * x.v[s * 8 + j] as f64;
            }
        }
        let err = max_rel_err(&o[t * 8..(t + 1) * 8], &want);
        eprintln!(
            "max-rel {:.2e} rpe_runs_at_64k_tokens_without_an_n_by_n_matrix",
            err
        );
        assert!(err <= TOL, "row {t}: error {err:e}");
    }
}

#[test]
fn cuda_entry_points_say_the_systems_run_on_the_cpu() {
    let Ok(dev) = attnc::CudaDevice::new(0) else {
        eprintln!("SKIP: no usable CUDA device; the error path needs device tensors");
        return;
    };
    let x = Inputs::random(1, 2, 4, 16, 16, 1);
    let q = dev.upload(&tokens::<16>(&x.q, &x, Layout::Bhnd)).unwrap();
    let e = Momentum::forward_cuda(&q, &q, &q).unwrap_err();
    assert!(e.to_string().contains("run on the CPU"), "{e}");
}

#[test]
fn decode_step_equals_step_and_continues_forward() {
    let x = Inputs::random(1, 2, 30, 8, 8, 31);
    let (wq, tq) = conv_weights::<8, 2>(2, 1);
    let (wk, tk) = conv_weights::<8, 2>(2, 2);
    let (wv, tv) = conv_weights::<8, 2>(2, 3);
    let cx = convolved(&x, &[wq, wk, wv], 2);
    let (want, _) = oracle::momentum(ConvMomentum::spec(), &cx, [&[], &[], &[], &[]]);
    let l = Layout::Bhnd;
    // A prefix through forward_with_state, the rest token by token with decode_step.
    let a = split(&x, 0, 12);
    let (_, st) = ConvMomentum::forward_with_state(
        tokens::<8>(&a.q, &a, l),
        tokens(&a.k, &a, l),
        tokens(&a.v, &a, l),
        tq.clone(),
        tk.clone(),
        tv.clone(),
        None,
    )
    .unwrap();
    let mut dec = attnc::ExtDecodeState::from_state(&st, ConvMomentum::spec()).unwrap();
    let mut st2 = st.clone();
    for t in 12..x.n {
        let (q, k, v) = (
            at_token::<8>(&x.q, &x, t),
            at_token::<8>(&x.k, &x, t),
            at_token::<8>(&x.v, &x, t),
        );
        let o = ConvMomentum::decode_step(&mut dec, &q, &k, &v, &tq, &tk, &tv).unwrap();
        let o2 = ConvMomentum::step(&mut st2, &q, &k, &v, &tq, &tk, &tv).unwrap();
        assert_eq!(
            o.as_vec(),
            o2.as_vec(),
            "token {t}: decode_step and step differ"
        );
        for (bh, row) in o.as_vec().chunks(8).enumerate() {
            let e = max_rel_err(row, &want[(bh * x.n + t) * 8..(bh * x.n + t + 1) * 8]);
            eprintln!("max-rel {e:.2e} decode_step_equals_step_and_continues_forward");
            assert!(e <= TOL, "token {t}: error {e:e}");
        }
    }
    let back = dec.to_state().unwrap();
    assert_eq!(back.m.unwrap().as_vec(), st2.m.unwrap().as_vec());
}
