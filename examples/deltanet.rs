//! DeltaNet and Gated DeltaNet: the delta rule with L2-normalised q/k and beta = sigmoid(x),
//! run chunkwise (`forward`) and token by token (`step`), checked against each other and timed.
//!
//! Run with `cargo run --release --example deltanet [N]` (default N = 4096).

use attnc::prelude::*;
use std::time::Instant;

/// DeltaNet (Yang et al., 2024): S_t = S_{t-1} + k_t beta_t (v_t - S_{t-1}^T k_t)^T.
#[attention(head_dim = 64, update = delta, qk_norm = l2, chunk = 64)]
pub struct DeltaNet;

/// Gated DeltaNet (Yang et al., 2025): the delta rule on a state decayed by exp(g_t).
#[attention(head_dim = 64, update = gated_delta, qk_norm = l2, chunk = 64)]
pub struct GatedDeltaNet;

const H: usize = 8;
type Tokens = Tensor<(Const<1>, Const<H>, usize, Const<64>), f32, Cpu>;
type PerToken = Tensor<(Const<1>, Const<H>, usize), f32, Cpu>;
type Head<const D: usize> = Tensor<(Const<1>, Const<H>, Const<D>), f32, Cpu>;
type HeadScalar = Tensor<(Const<1>, Const<H>), f32, Cpu>;

fn main() -> Result<(), Error> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4096);
    println!("{}", attnc::Device::auto()?.describe());
    println!("B = 1, H = {H}, N = {n}, dk = dv = 64, chunk = 64\n");
    let dev = Cpu::seed_from_u64(7);
    let q: Tokens = dev.sample_normal_like(&(Const, Const, n, Const));
    let k: Tokens = dev.sample_normal_like(&(Const, Const, n, Const));
    let v: Tokens = dev.sample_normal_like(&(Const, Const, n, Const));
    let logits: PerToken = dev.sample_normal_like(&(Const, Const, n));
    let beta = map(&logits, n, |x| 1.0 / (1.0 + (-x).exp())); // sigmoid: beta in (0, 1)
    let g = map(&logits, n, |x| -(1.0 + (-(x + 3.0)).exp()).ln()); // log-sigmoid: g < 0

    let (o, chunked) =
        best_of_3(|| DeltaNet::forward(q.clone(), k.clone(), v.clone(), beta.clone()))?;
    let (steps, stepped) = decode(n, &q, &k, &v, &beta, None)?;
    report("DeltaNet", chunked, stepped, max_rel(&steps, &o, n));

    let (o, chunked) = best_of_3(|| {
        GatedDeltaNet::forward(q.clone(), k.clone(), v.clone(), beta.clone(), g.clone())
    })?;
    let (steps, stepped) = decode(n, &q, &k, &v, &beta, Some(&g))?;
    report("Gated DeltaNet", chunked, stepped, max_rel(&steps, &o, n));
    Ok(())
}

/// Runs `f` once to warm up, then three times; returns the output and the best time in ms.
fn best_of_3(f: impl Fn() -> Result<Tokens, Error>) -> Result<(Vec<f32>, f64), Error> {
    let out = f()?.as_vec();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        f()?;
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((out, best))
}

fn report(name: &str, chunked_ms: f64, step_ms: f64, err: f32) {
    println!(
        "{name:<15} forward {chunked_ms:>8.2} ms | step x N {step_ms:>9.2} ms | step/forward {:>6.1}x | \
         max-rel difference {err:.1e}",
        step_ms / chunked_ms
    );
}

/// Decodes every token with `step`; returns heads-first outputs and the time in ms.
fn decode(
    n: usize,
    q: &Tokens,
    k: &Tokens,
    v: &Tokens,
    beta: &PerToken,
    g: Option<&PerToken>,
) -> Result<(Vec<f32>, f64), Error> {
    let (qd, kd, vd, bd) = (q.as_vec(), k.as_vec(), v.as_vec(), beta.as_vec());
    let gd = g.map(|g| g.as_vec());
    let dev = Cpu::default();
    let inputs: Vec<_> = (0..n)
        .map(|t| {
            let pick = |d: usize, src: &[f32]| -> Vec<f32> {
                (0..H)
                    .flat_map(|h| src[(h * n + t) * d..(h * n + t + 1) * d].to_vec())
                    .collect()
            };
            let head = |src: &[f32]| -> Head<64> {
                dev.tensor_from_vec(pick(64, src), (Const, Const, Const))
            };
            let scalar =
                |src: &[f32]| -> HeadScalar { dev.tensor_from_vec(pick(1, src), (Const, Const)) };
            (
                head(&qd),
                head(&kd),
                head(&vd),
                scalar(&bd),
                gd.as_deref().map(scalar),
            )
        })
        .collect();
    let mut out = vec![0.0f32; H * n * 64];
    let mut state = State::zeros(Const::<1>, Const::<H>, false)?;
    let t0 = Instant::now();
    let mut outs = Vec::with_capacity(n);
    for (q_t, k_t, v_t, b_t, g_t) in &inputs {
        outs.push(match g_t {
            Some(g_t) => GatedDeltaNet::step(&mut state, q_t, k_t, v_t, b_t, g_t)?,
            None => DeltaNet::step(&mut state, q_t, k_t, v_t, b_t)?,
        });
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    for (t, o_t) in outs.iter().enumerate() {
        for (h, row) in o_t.as_vec().chunks(64).enumerate() {
            out[(h * n + t) * 64..(h * n + t + 1) * 64].copy_from_slice(row);
        }
    }
    Ok((out, ms))
}

fn map(x: &PerToken, n: usize, f: impl Fn(f32) -> f32) -> PerToken {
    Cpu::default().tensor_from_vec(x.as_vec().into_iter().map(f).collect(), (Const, Const, n))
}

fn max_rel(a: &[f32], b: &[f32], _n: usize) -> f32 {
    let scale = b.iter().fold(1e-30f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}
