//! Gradients of the systems on dfdx's tape against central differences of their f64 oracles
//! (tests/common/systems.rs), for a random linear loss on the output and the final state.
//!
//! The step is 2^-10 (exact in f32 for the inputs' range, so the difference sees exactly the
//! perturbation); the truncation error is O(step^2) ~ 1e-6 relative. Tolerance: max-rel 1e-3
//! (the kernels run in f32; rpe's FFT in f64).

#![allow(clippy::needless_range_loop)]

mod common;

use attnc::prelude::*;
use common::systems as oracle;
use common::*;

const TOL: f64 = 1e-3;
const STEP: f32 = 1.0 / 1024.0;

/// Momentum after a short convolution, with the normaliser.
#[attention(head_dim = 8, feature_map = elu_plus_one, normalize = sum, short_conv = 3, update = momentum(mu = 0.8), chunk = 16)]
pub struct ConvMomentum;

/// Plain momentum over several chunks.
#[attention(head_dim = 8, update = momentum(mu = 0.9), chunk = 16)]
pub struct Momentum;

/// rpe, causal, normalised.
#[attention(head_dim = 8, feature_map = elu_plus_one, normalize = sum, rpe = toeplitz)]
pub struct Rpe;

/// rpe over the whole sequence.
#[attention(head_dim = 8, mask = none, rpe = toeplitz)]
pub struct RpeAll;

type Tok<const D: usize> = Tensor<(usize, usize, usize, Const<D>), f32, Cpu>;

fn tok<const D: usize>(d: &[f32], b: usize, h: usize, n: usize) -> Tok<D> {
    Cpu::default().tensor_from_vec(d.to_vec(), (b, h, n, Const))
}

/// `d/dx_i eval(x)` by central differences, every i.
fn numeric(x: &[f32], eval: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut p = x.to_vec();
    (0..x.len())
        .map(|i| {
            p[i] = x[i] + STEP;
            let up = eval(&p);
            p[i] = x[i] - STEP;
            let down = eval(&p);
            p[i] = x[i];
            (up - down) / (2.0 * STEP as f64)
        })
        .collect()
}

fn dot(a: &[f64], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * *y as f64).sum()
}

fn check(name: &str, got: &[f32], want: &[f64]) {
    let err = max_rel_err(got, want);
    eprintln!("grad max-rel d{name} {err:.2e}");
    assert!(err <= TOL, "d{name}: error {err:.2e}");
}

#[test]
fn conv_momentum_gradients_match_finite_differences() {
    let (b, h, n, d, w) = (1, 2, 37, 8, 3);
    let mut rng = Rng::new(3);
    let x = Inputs::random(b, h, n, d, d, 12);
    let ws: Vec<Vec<f32>> = (0..3)
        .map(|_| (0..h * d * w).map(|_| rng.normal() * 0.5).collect())
        .collect();
    let wt = |v: &[f32]| Cpu::default().tensor_from_vec(v.to_vec(), (h, Const::<8>, Const::<3>));
    // An initial state from a first segment, so every field (and the tails) is nonzero.
    let pre = Inputs::random(b, h, 5, d, d, 13);
    let (_, init) = ConvMomentum::forward_with_state(
        tok::<8>(&pre.q, b, h, 5),
        tok(&pre.k, b, h, 5),
        tok(&pre.v, b, h, 5),
        wt(&ws[0]),
        wt(&ws[1]),
        wt(&ws[2]),
        None,
    )
    .unwrap();
    let m0 = init.m.as_ref().unwrap();
    let st: Vec<Vec<f32>> = [&init.s, m0]
        .iter()
        .map(|t| t.as_vec())
        .chain(
            [&init.z, &init.n]
                .iter()
                .map(|t| t.as_ref().unwrap().as_vec()),
        )
        .collect();
    let tails: Vec<Vec<f32>> = vec![
        init.conv_q.as_ref().unwrap().as_vec(),
        init.conv_k.as_ref().unwrap().as_vec(),
        init.conv_v.as_ref().unwrap().as_vec(),
    ];
    let ct_o = rng.normals(b * h * n * d);
    let ct_s: Vec<Vec<f32>> = st.iter().map(|s| rng.normals(s.len())).collect();
    let spec = ConvMomentum::spec();
    // The loss of the oracle at (q, k, v, weights, state [s, m, z, n], tails).
    let loss = |q: &[f32],
                k: &[f32],
                v: &[f32],
                ws: &[Vec<f32>],
                st: &[Vec<f32>],
                tails: &[Vec<f32>]|
     -> f64 {
        let conv =
            |x: &[f32], t: &[f32], w_: &[f32]| oracle::conv_silu(x, t, w_, (b * h, h, n, d, w)).0;
        let cx = Inputs {
            q: conv(q, &tails[0], &ws[0]),
            k: conv(k, &tails[1], &ws[1]),
            v: conv(v, &tails[2], &ws[2]),
            ..x.clone()
        };
        let (o, fin) = oracle::momentum(spec, &cx, [&st[0], &st[2], &st[1], &st[3]]);
        dot(&o, &ct_o)
            + dot(&fin[0], &ct_s[0])
            + dot(&fin[2], &ct_s[1])
            + dot(&fin[1], &ct_s[2])
            + dot(&fin[3], &ct_s[3])
    };
    let (q, k, v) = (
        tok::<8>(&x.q, b, h, n),
        tok::<8>(&x.k, b, h, n),
        tok::<8>(&x.v, b, h, n),
    );
    let (cq, ck, cv) = (wt(&ws[0]), wt(&ws[1]), wt(&ws[2]));
    let (o, fin) = ConvMomentum::forward_with_state(
        q.leaky_trace(),
        k.leaky_trace(),
        v.leaky_trace(),
        cq.leaky_trace(),
        ck.leaky_trace(),
        cv.leaky_trace(),
        Some(&init),
    )
    .unwrap();
    let dev = Cpu::default();
    let taped = |t: &Tensor<_, f32, Cpu>| t.retaped::<OwnedTape<f32, Cpu>>();
    let l = (o * tok::<8>(&ct_o, b, h, n)).sum::<Rank0, _>()
        + (taped(&fin.s) * dev.tensor_from_vec(ct_s[0].clone(), *fin.s.shape())).sum::<Rank0, _>()
        + (taped(fin.m.as_ref().unwrap()) * dev.tensor_from_vec(ct_s[1].clone(), *fin.s.shape()))
            .sum::<Rank0, _>()
        + (fin.z.as_ref().unwrap().retaped::<OwnedTape<f32, Cpu>>()
            * dev.tensor_from_vec(ct_s[2].clone(), (1usize, 2usize, Const::<8>)))
        .sum::<Rank0, _>()
        + (fin.n.as_ref().unwrap().retaped::<OwnedTape<f32, Cpu>>()
            * dev.tensor_from_vec(ct_s[3].clone(), (1usize, 2usize, Const::<8>)))
        .sum::<Rank0, _>();
    let grads = l.backward();
    check(
        "q",
        &grads.get(&q).as_vec(),
        &numeric(&x.q, |p| loss(p, &x.k, &x.v, &ws, &st, &tails)),
    );
    check(
        "k",
        &grads.get(&k).as_vec(),
        &numeric(&x.k, |p| loss(&x.q, p, &x.v, &ws, &st, &tails)),
    );
    check(
        "v",
        &grads.get(&v).as_vec(),
        &numeric(&x.v, |p| loss(&x.q, &x.k, p, &ws, &st, &tails)),
    );
    for (i, t) in [&cq, &ck, &cv].iter().enumerate() {
        let want = numeric(&ws[i], |p| {
            let mut w2 = ws.clone();
            w2[i] = p.to_vec();
            loss(&x.q, &x.k, &x.v, &w2, &st, &tails)
        });
        check(&format!("conv{i}"), &grads.get(*t).as_vec(), &want);
    }
    let fields = [&init.s, m0];
    for (i, t) in fields.iter().enumerate() {
        let want = numeric(&st[i], |p| {
            let mut s2 = st.clone();
            s2[i] = p.to_vec();
            loss(&x.q, &x.k, &x.v, &ws, &s2, &tails)
        });
        check(["s0", "m0"][i], &grads.get(*t).as_vec(), &want);
    }
    for (i, t) in [init.z.as_ref().unwrap(), init.n.as_ref().unwrap()]
        .iter()
        .enumerate()
    {
        let want = numeric(&st[2 + i], |p| {
            let mut s2 = st.clone();
            s2[2 + i] = p.to_vec();
            loss(&x.q, &x.k, &x.v, &ws, &s2, &tails)
        });
        check(["z0", "n0"][i], &grads.get(*t).as_vec(), &want);
    }
    let tail_ts = [init.conv_q.as_ref().unwrap(), init.conv_k.as_ref().unwrap()];
    for (i, t) in tail_ts.iter().enumerate() {
        let want = numeric(&tails[i], |p| {
            let mut t2 = tails.clone();
            t2[i] = p.to_vec();
            loss(&x.q, &x.k, &x.v, &ws, &st, &t2)
        });
        check(["tail_q", "tail_k"][i], &grads.get(*t).as_vec(), &want);
    }
}

#[test]
fn momentum_gradients_over_chunks_match_finite_differences() {
    let (b, h, n, d) = (1, 1, 53, 8);
    let x = Inputs::random(b, h, n, d, d, 21);
    let mut rng = Rng::new(4);
    let ct_o = rng.normals(n * d);
    let spec = Momentum::spec();
    let loss = |q: &[f32], k: &[f32], v: &[f32]| {
        let (o, _) = oracle::momentum(
            spec,
            &Inputs {
                q: q.to_vec(),
                k: k.to_vec(),
                v: v.to_vec(),
                ..x.clone()
            },
            [&[], &[], &[], &[]],
        );
        dot(&o, &ct_o)
    };
    let (q, k, v) = (
        tok::<8>(&x.q, b, h, n),
        tok::<8>(&x.k, b, h, n),
        tok::<8>(&x.v, b, h, n),
    );
    let o = Momentum::forward(q.leaky_trace(), k.leaky_trace(), v.leaky_trace()).unwrap();
    let grads = (o * tok::<8>(&ct_o, b, h, n)).sum::<Rank0, _>().backward();
    check(
        "q",
        &grads.get(&q).as_vec(),
        &numeric(&x.q, |p| loss(p, &x.k, &x.v)),
    );
    check(
        "k",
        &grads.get(&k).as_vec(),
        &numeric(&x.k, |p| loss(&x.q, p, &x.v)),
    );
    check(
        "v",
        &grads.get(&v).as_vec(),
        &numeric(&x.v, |p| loss(&x.q, &x.k, p)),
    );
}

fn rpe_case<A>(spec: &attnc::Spec, n: usize, seed: u64, forward: A)
where
    A: Fn(
        Tok<8>,
        Tok<8>,
        Tok<8>,
        Tensor<(usize, usize), f32, Cpu, OwnedTape<f32, Cpu>>,
        (Tok<8>, Tok<8>, Tok<8>),
    ) -> Tensor<(usize, usize, usize, Const<8>), f32, Cpu, OwnedTape<f32, Cpu>>,
{
    let (b, h, d) = (1, 2, 8);
    let x = Inputs::random(b, h, n, d, d, seed);
    let mut rng = Rng::new(seed + 1);
    let bias: Vec<f32> = (0..h * (2 * n - 1)).map(|_| rng.normal() * 0.3).collect();
    let ct_o = rng.normals(b * h * n * d);
    let loss = |q: &[f32], k: &[f32], v: &[f32], bv: &[f32]| {
        let o = oracle::rpe(
            spec,
            &Inputs {
                q: q.to_vec(),
                k: k.to_vec(),
                v: v.to_vec(),
                ..x.clone()
            },
            bv,
        );
        dot(&o, &ct_o)
    };
    let (q, k, v) = (
        tok::<8>(&x.q, b, h, n),
        tok::<8>(&x.k, b, h, n),
        tok::<8>(&x.v, b, h, n),
    );
    let bt = Cpu::default().tensor_from_vec(bias.clone(), (h, 2 * n - 1));
    let o = forward(
        q.clone(),
        k.clone(),
        v.clone(),
        bt.leaky_trace(),
        (q.clone(), k.clone(), v.clone()),
    );
    let grads = (o * tok::<8>(&ct_o, b, h, n)).sum::<Rank0, _>().backward();
    check(
        "q",
        &grads.get(&q).as_vec(),
        &numeric(&x.q, |p| loss(p, &x.k, &x.v, &bias)),
    );
    check(
        "k",
        &grads.get(&k).as_vec(),
        &numeric(&x.k, |p| loss(&x.q, p, &x.v, &bias)),
    );
    check(
        "v",
        &grads.get(&v).as_vec(),
        &numeric(&x.v, |p| loss(&x.q, &x.k, p, &bias)),
    );
    check(
        "bias",
        &grads.get(&bt).as_vec(),
        &numeric(&bias, |p| loss(&x.q, &x.k, &x.v, p)),
    );
}

#[test]
fn rpe_gradients_match_finite_differences() {
    // The bias carries the tape (traced first), q, k, v are traced through it.
    rpe_case(Rpe::spec(), 23, 5, |q, k, v, bias, _| {
        let (q, k, v) = (q.leaky_trace(), k.leaky_trace(), v.leaky_trace());
        Rpe::forward(q, k, v, bias).unwrap()
    });
    rpe_case(RpeAll::spec(), 19, 9, |q, k, v, bias, _| {
        RpeAll::forward(q.leaky_trace(), k.leaky_trace(), v.leaky_trace(), bias).unwrap()
    });
}
