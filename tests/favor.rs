//! FAVOR+ (Performer) beyond the oracle comparisons of tests/numerics.rs:
//!
//! - with many random features, `normalize = sum` approaches exact softmax attention (a plain
//!   quadratic f64 reference); the error curve against m is printed and must fall;
//! - inputs of norm 100 (and the inputs that maximise a feature) give finite outputs that still
//!   match the oracle, in `forward` and `step`;
//! - the projection's place in the API.

mod common;

use attnc::prelude::*;
use common::*;

const DK: usize = 16;

type Tok<const D: usize> = Tensor<(usize, usize, usize, Const<D>), f32, Cpu>;

fn tok<const D: usize>(data: &[f32], x: &Inputs) -> Tok<D> {
    Cpu::default().tensor_from_vec(data.to_vec(), (x.b, x.h, x.n, Const))
}

/// Causal softmax attention with scale 1/sqrt(dk), quadratic, in f64:
/// o_t = sum_{s <= t} softmax_s(q_t . k_s / sqrt(dk)) v_s.
fn softmax_reference(x: &Inputs) -> Vec<f64> {
    let (n, dk, dv) = (x.n, x.dk, x.dv);
    let mut o = vec![0.0f64; x.b * x.h * n * dv];
    for bh in 0..x.b * x.h {
        let row = |data: &[f32], t: usize, d: usize| -> Vec<f64> {
            data[(bh * n + t) * d..(bh * n + t + 1) * d]
                .iter()
                .map(|&v| v as f64)
                .collect()
        };
        for t in 0..n {
            let q = row(&x.q, t, dk);
            let logits: Vec<f64> = (0..=t)
                .map(|s| {
                    let k = row(&x.k, s, dk);
                    q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() / (dk as f64).sqrt()
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let out = &mut o[(bh * n + t) * dv..(bh * n + t + 1) * dv];
            for (s, es) in e.iter().enumerate() {
                for (oj, vj) in out.iter_mut().zip(row(&x.v, s, dv)) {
                    *oj += es / sum * vj;
                }
            }
        }
    }
    o
}

/// sqrt(sum (got - want)^2 / sum want^2).
fn rms_rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den).sqrt()
}

// The same model at m = 64 ... 4096 random features; N = 64 tokens in two chunks of 32.
#[attention(head_dim = 16, feature_map = favor(features = 64), normalize = sum, chunk = 32)]
struct Favor64;
#[attention(head_dim = 16, feature_map = favor(features = 256), normalize = sum, chunk = 32)]
struct Favor256;
#[attention(head_dim = 16, feature_map = favor(features = 1024), normalize = sum, chunk = 32)]
struct Favor1024;
#[attention(head_dim = 16, feature_map = favor(features = 4096), normalize = sum, chunk = 32)]
struct Favor4096;

/// `Attn::forward` with a projection sampled from `seed` (its size inferred from the signature).
macro_rules! favor_forward {
    ($attn:ty, $x:expr, $seed:expr) => {{
        let x: &Inputs = $x;
        let w = attnc::favor::orthogonal_gaussian($seed).expect("projection");
        let (q, k, v) = (tok::<DK>(&x.q, x), tok::<DK>(&x.k, x), tok::<DK>(&x.v, x));
        <$attn>::forward(q.clone(), k.clone(), v.clone(), w.clone())
            .expect("forward")
            .as_vec()
    }};
}

/// Inputs of the comparison: q, k ~ N(0, 0.5^2 I) (so |q| is about 2 and the softmax logits
/// q . k / 4 have a standard deviation of about 0.25), v ~ N(0, I). FAVOR+'s estimator has a
/// relative variance of about exp(|q' + k'|^2): larger inputs need far more features.
fn comparison_inputs(seed: u64) -> Inputs {
    let mut x = Inputs::random(1, 4, 64, DK, DK, seed);
    for v in x.q.iter_mut().chain(x.k.iter_mut()) {
        *v *= 0.5;
    }
    x
}

/// One spec's outputs for some inputs and a projection seed.
type Run = fn(&Inputs, u64) -> Vec<f32>;

#[test]
fn favor_with_many_features_approaches_softmax() {
    const SEEDS: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    let runs: [(usize, Run); 4] = [
        (64, |x, s| favor_forward!(Favor64, x, s)),
        (256, |x, s| favor_forward!(Favor256, x, s)),
        (1024, |x, s| favor_forward!(Favor1024, x, s)),
        (4096, |x, s| favor_forward!(Favor4096, x, s)),
    ];
    let mut curve = Vec::new();
    println!("FAVOR+ (normalize = sum, causal, dk = 16, N = 64, 4 heads) vs exact softmax,");
    println!("mean over {} seeds (inputs and projection):", SEEDS.len());
    println!("{:>6} {:>12} {:>12}", "m", "max-rel", "rms-rel");
    for (m, run) in runs {
        let (mut max_rel, mut rms) = (0.0, 0.0);
        for seed in SEEDS {
            let x = comparison_inputs(seed);
            let want = softmax_reference(&x);
            let got = run(&x, 100 + seed);
            max_rel += max_rel_err(&got, &want) / SEEDS.len() as f64;
            rms += rms_rel_err(&got, &want) / SEEDS.len() as f64;
        }
        println!("{m:>6} {max_rel:>12.4} {rms:>12.4}");
        curve.push((m, max_rel, rms));
    }
    // The error falls as m grows (about as 1/sqrt(m)): every 4x more features lowers the rms
    // error, and from 64 to 4096 features both errors fall at least 3x.
    for pair in curve.windows(2) {
        let ((m0, _, r0), (m1, _, r1)) = (pair[0], pair[1]);
        assert!(
            r1 < r0,
            "rms error rose from m = {m0} ({r0:.4}) to m = {m1} ({r1:.4})"
        );
    }
    let (first, last) = (curve[0], curve[curve.len() - 1]);
    assert!(
        last.1 * 3.0 < first.1 && last.2 * 3.0 < first.2,
        "{curve:?}"
    );
    // The bound at m = 4096 (measured: about 0.030 for both).
    assert!(
        last.1 < 0.06 && last.2 < 0.05,
        "at m = 4096: max-rel {:.4}, rms-rel {:.4}",
        last.1,
        last.2
    );
}

#[attention(head_dim = 16, feature_map = favor(features = 64), normalize = sum, chunk = 16)]
struct FavorSum;
#[attention(head_dim = 16, feature_map = favor(features = 64), chunk = 16)]
struct FavorPlain;

/// Standard normal inputs with large ones mixed in: every third token's q and k scaled to norm
/// 100; the key of token 5 and the query of token 7 at `dk^(1/4) w_0`, where feature 0 reaches
/// its largest possible value exp(|w_0|^2 / 2) / sqrt(m); the key of token 11 of norm 100 along
/// w_1 (the direction that helps feature 1 most).
fn large_inputs(spec: &Spec) -> Inputs {
    let mut x = Inputs::random(1, 2, 40, DK, DK, 61).for_spec(spec, 62);
    let set_row = |data: &mut [f32], bh: usize, t: usize, row: &[f32]| {
        data[(bh * x.n + t) * DK..(bh * x.n + t + 1) * DK].copy_from_slice(row);
    };
    let scaled = |row: &[f32], norm: f32| -> Vec<f32> {
        let len = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter().map(|v| v * norm / len).collect()
    };
    let w0 = x.proj[..DK].to_vec();
    let w1 = x.proj[DK..2 * DK].to_vec();
    let root4 = (DK as f32).sqrt().sqrt();
    let maximiser: Vec<f32> = w0.iter().map(|v| v * root4).collect();
    let (mut q, mut k) = (x.q.clone(), x.k.clone());
    for bh in 0..x.b * x.h {
        for t in (0..x.n).step_by(3) {
            let at = (bh * x.n + t) * DK;
            set_row(&mut q, bh, t, &scaled(&x.q[at..at + DK], 100.0));
            set_row(&mut k, bh, t, &scaled(&x.k[at..at + DK], 100.0));
        }
        set_row(&mut k, bh, 5, &maximiser);
        set_row(&mut q, bh, 7, &maximiser);
        set_row(&mut k, bh, 11, &scaled(&w1, 100.0));
    }
    x.q = q;
    x.k = k;
    x
}

/// `forward` (and `step`, token by token) on [`large_inputs`]: finite, and as the oracle.
macro_rules! check_large {
    ($attn:ty) => {{
        let spec = <$attn>::spec();
        let x = large_inputs(spec);
        let w: Tensor<(Const<64>, Const<DK>), f32, Cpu> = Cpu::default()
            .tensor_from_vec(x.proj.clone(), (Const, Const));
        let (q, k, v) = (tok::<DK>(&x.q, &x), tok::<DK>(&x.k, &x), tok::<DK>(&x.v, &x));
        let want = reference(spec, &x, None, None);
        assert!(want.o.iter().all(|v| v.is_finite()), "the oracle overflowed");
        let (o, st) = <$attn>::forward_with_state(q.clone(), k.clone(), v.clone(), w.clone(), None).expect("forward");
        let o = o.as_vec();
        assert!(o.iter().chain(&st.s.as_vec()).all(|v| v.is_finite()), "`{spec}`: not finite");
        let err = max_rel_err(&o, &want.o);
        assert!(err <= 1e-4, "`{spec}`: max-rel {err:e} against the oracle");

        let normalized = spec.normalize == attnc::spec::Normalize::Sum;
        let mut state = State::<usize, usize, 64, DK>::zeros(x.b, x.h, normalized).expect("state");
        let dev = Cpu::default();
        let at = |data: &[f32], t: usize| -> Tensor<(usize, usize, Const<DK>), f32, Cpu> {
            let rows = (0..x.b * x.h)
                .flat_map(|bh| data[(bh * x.n + t) * DK..(bh * x.n + t + 1) * DK].to_vec())
                .collect();
            dev.tensor_from_vec(rows, (x.b, x.h, Const))
        };
        let mut step_err = 0.0f64;
        for t in 0..x.n {
            let o_t = <$attn>::step(&mut state, &at(&x.q, t), &at(&x.k, t), &at(&x.v, t), &w)
                .expect("step")
                .as_vec();
            assert!(o_t.iter().all(|v| v.is_finite()), "`{spec}`: step {t} not finite");
            let want_t: Vec<f64> = (0..x.b * x.h)
                .flat_map(|bh| want.o[(bh * x.n + t) * DK..(bh * x.n + t + 1) * DK].to_vec())
                .collect();
            let scale = want.o.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let diff = o_t
                .iter()
                .zip(&want_t)
                .fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
            step_err = step_err.max(diff / scale);
        }
        assert!(step_err <= 1e-4, "`{spec}`: step max-rel {step_err:e}");
        println!("`{spec}`: inputs of norm 100 and feature maximisers: forward max-rel {err:.2e}, step {step_err:.2e}");
    }};
}

#[test]
fn inputs_of_norm_100_give_finite_outputs() {
    check_large!(FavorSum);
    check_large!(FavorPlain);
}

#[test]
fn the_largest_feature_is_bounded_by_the_projection() {
    // phi(x)_i <= exp(|w_i|^2 / 2) / sqrt(m), with equality at x = dk^(1/4) w_i: the bound
    // (c = 0) holds whatever the input's norm, so exp cannot overflow while |w_i|^2 < 177.
    let spec = FavorPlain::spec();
    let x = large_inputs(spec);
    let w0_sq: f64 = x.proj[..DK].iter().map(|v| (*v as f64).powi(2)).sum();
    assert!(w0_sq / 2.0 < 88.0, "|w_0|^2 / 2 = {}", w0_sq / 2.0);
    // One token, key = the maximiser, value e_0, query = the maximiser: with scale s = 1/4,
    // o_0 = s * sum_i phi(q)_i phi(k)_i >= s * phi(q)_0^2 = s * exp(|w_0|^2) / 64.
    let mut one = Inputs::random(1, 1, 1, DK, DK, 3).for_spec(spec, 62);
    let root4 = (DK as f32).sqrt().sqrt();
    let maximiser: Vec<f32> = x.proj[..DK].iter().map(|v| v * root4).collect();
    one.q = maximiser.clone();
    one.k = maximiser;
    one.v = (0..DK).map(|j| if j == 0 { 1.0 } else { 0.0 }).collect();
    let w: Tensor<(Const<64>, Const<DK>), f32, Cpu> =
        Cpu::default().tensor_from_vec(one.proj.clone(), (Const, Const));
    let o = FavorPlain::forward(
        tok::<DK>(&one.q, &one),
        tok(&one.k, &one),
        tok(&one.v, &one),
        w.clone(),
    )
    .expect("forward")
    .as_vec();
    let lower = 0.25 * w0_sq.exp() / 64.0;
    assert!(
        o[0].is_finite() && o[0] as f64 >= lower * (1.0 - 1e-4),
        "{} < {lower}",
        o[0]
    );
    let want = reference(spec, &one, None, None);
    assert!(max_rel_err(&o, &want.o) <= 1e-4);
}

/// Tokens `lo..hi` of every (batch, head).
fn part(x: &Inputs, lo: usize, hi: usize) -> Inputs {
    let take = |data: &[f32], d: usize| -> Vec<f32> {
        (0..x.b * x.h)
            .flat_map(|bh| data[(bh * x.n + lo) * d..(bh * x.n + hi) * d].to_vec())
            .collect()
    };
    Inputs {
        n: hi - lo,
        q: take(&x.q, x.dk),
        k: take(&x.k, x.dk),
        v: take(&x.v, x.dv),
        beta: take(&x.beta, 1),
        g: take(&x.g, 1),
        ..x.clone()
    }
}

#[test]
fn the_projection_is_the_last_argument_and_chained_calls_share_it() {
    // forward(q, k, v, proj) and forward_with_state(q, k, v, proj, initial): two calls chained
    // with the same projection continue one sequence.
    let spec = FavorSum::spec();
    let x = Inputs::random(1, 2, 20, DK, DK, 71).for_spec(spec, 72);
    let w: Tensor<(Const<64>, Const<DK>), f32, Cpu> =
        Cpu::default().tensor_from_vec(x.proj.clone(), (Const, Const));
    let (q, k, v) = (
        tok::<DK>(&x.q, &x),
        tok::<DK>(&x.k, &x),
        tok::<DK>(&x.v, &x),
    );
    let whole = FavorSum::forward(q.clone(), k.clone(), v.clone(), w.clone())
        .expect("forward")
        .as_vec();
    let want = reference(spec, &x, None, None);
    assert!(max_rel_err(&whole, &want.o) <= 1e-4);

    let (a, b) = (part(&x, 0, 9), part(&x, 9, 20));
    let args = |p: &Inputs| (tok::<DK>(&p.q, p), tok::<DK>(&p.k, p), tok::<DK>(&p.v, p));
    let (qa, ka, va) = args(&a);
    let (qb, kb, vb) = args(&b);
    let (_, st) = FavorSum::forward_with_state(qa.clone(), ka.clone(), va.clone(), w.clone(), None)
        .expect("first half");
    let (ob, st) =
        FavorSum::forward_with_state(qb.clone(), kb.clone(), vb.clone(), w.clone(), Some(&st))
            .expect("second");
    let want_b: Vec<f64> = (0..x.b * x.h)
        .flat_map(|bh| want.o[(bh * x.n + 9) * DK..(bh * x.n + 20) * DK].to_vec())
        .collect();
    assert!(max_rel_err(&ob.as_vec(), &want_b) <= 1e-4);
    assert!(max_rel_err(&st.s.as_vec(), &want.s) <= 1e-4);

    // A different projection is a different feature map.
    let other = attnc::favor::orthogonal_gaussian(73).expect("projection");
    let changed = FavorSum::forward(q.clone(), k.clone(), v.clone(), other.clone())
        .expect("forward")
        .as_vec();
    assert!(max_rel_err(&changed, &want.o) > 1e-3);
}

#[test]
fn a_non_finite_projection_is_rejected_when_checking_is_on() {
    let spec = FavorSum::spec();
    let x = Inputs::random(1, 1, 3, DK, DK, 81).for_spec(spec, 82);
    let mut bad = x.proj.clone();
    bad[17] = f32::INFINITY;
    let w: Tensor<(Const<64>, Const<DK>), f32, Cpu> =
        Cpu::default().tensor_from_vec(bad, (Const, Const));
    let (q, k, v) = (
        tok::<DK>(&x.q, &x),
        tok::<DK>(&x.k, &x),
        tok::<DK>(&x.v, &x),
    );
    attnc::set_finite_check(true);
    let err = FavorSum::forward(q.clone(), k.clone(), v.clone(), w.clone()).unwrap_err();
    attnc::set_finite_check(false);
    assert_eq!(
        err,
        Error::NonFinite {
            arg: "proj",
            index: 17
        }
    );
}
