//! The three systems beyond the chunk program, beside plain linear attention:
//! - `update = momentum(mu = 0.9)`: heavy-ball momentum on the additive update (Momentum
//!   Transformer), with `step` continuing `forward_with_state`;
//! - `short_conv = 4`: a depthwise causal convolution + SiLU on q, k, v (the ShortConvolution of
//!   DeltaNet / Gated DeltaNet layers), here in front of the gated delta rule;
//! - `rpe = toeplitz`: relative positional weights exp(b[s - t]) on every score, by FFT.
//!
//! Run with `cargo run --release --example systems`.

use attnc::prelude::*;
use std::time::Instant;

/// Plain causal linear attention: the yardstick.
#[attention(head_dim = 64, chunk = 64)]
pub struct Plain;

/// Momentum Transformer's update, elu+1 features with the normaliser.
#[attention(head_dim = 64, feature_map = elu_plus_one, normalize = sum, update = momentum(mu = 0.9), chunk = 64)]
pub struct MomentumAttention;

/// Gated DeltaNet's token mixer: short convolutions, L2-normalised q and k, the gated delta rule.
#[attention(head_dim = 64, short_conv = 4, qk_norm = l2, update = gated_delta, chunk = 64)]
pub struct GatedDeltaNet;

/// Kernelized attention with relative positional encoding (Luo et al. 2021), causal, normalised.
#[attention(head_dim = 64, feature_map = elu_plus_one, normalize = sum, rpe = toeplitz)]
pub struct ToeplitzAttention;

const B: usize = 1;
const H: usize = 8;
const N: usize = 4096;

type Tokens = Tensor<(usize, usize, usize, Const<64>), f32, Cpu>;

/// Best of `runs` timed calls, in milliseconds.
fn best_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), Error> {
    println!("attnc systems: B = {B}, H = {H}, N = {N}, d = 64\n");
    let dev = Cpu::seed_from_u64(0);
    let tok = || -> Tokens { dev.sample_normal_like(&(B, H, N, Const)) };
    let (q, k, v) = (tok(), tok(), tok());
    let x: Tensor<(usize, usize, usize), f32, Cpu> = dev.sample_normal_like(&(B, H, N));
    let beta = x.clone().sigmoid();
    let g = (x + 3.0).sigmoid().ln();
    let w: Tensor<(usize, Const<64>, Const<4>), f32, Cpu> =
        dev.sample_normal_like(&(H, Const, Const));
    let w = w * 0.5;
    let bias: Tensor<(usize, usize), f32, Cpu> = dev.sample_normal_like(&(H, 2 * N - 1));
    let bias = bias * 0.1 - 0.5;

    // Momentum: forward over a prefix, then decoding continues token by token from its state.
    let (_, mut state) =
        MomentumAttention::forward_with_state(q.clone(), k.clone(), v.clone(), None)?;
    let row = |t: &Tokens| -> Tensor<(usize, usize, Const<64>), f32, Cpu> {
        let data: Vec<f32> = t
            .as_vec()
            .chunks(64 * N)
            .flat_map(|h| h[..64].to_vec())
            .collect();
        dev.tensor_from_vec(data, (B, H, Const))
    };
    let o_t = MomentumAttention::step(&mut state, &row(&q), &row(&k), &row(&v))?;
    println!(
        "momentum: state m has {} values; one decoding step -> o_t {:?}",
        state.m.as_ref().map_or(0, |m| m.as_vec().len()),
        o_t.shape()
    );

    // Gated DeltaNet: the convolution weights come after beta and g.
    let o = GatedDeltaNet::forward(
        q.clone(),
        k.clone(),
        v.clone(),
        beta.clone(),
        g.clone(),
        w.clone(),
        w.clone(),
        w.clone(),
    )?;
    println!("gated deltanet with short_conv: o {:?}", o.shape());

    // rpe: the log-weights b (H, 2N - 1); forward only.
    let o = ToeplitzAttention::forward(q.clone(), k.clone(), v.clone(), bias.clone())?;
    println!("rpe = toeplitz: o {:?}\n", o.shape());

    let runs = 5;
    let plain = best_ms(runs, || {
        drop(Plain::forward(q.clone(), k.clone(), v.clone()))
    });
    let timed: [(&str, f64); 3] = [
        (
            "momentum(mu = 0.9), elu+1, sum",
            best_ms(runs, || {
                drop(MomentumAttention::forward(q.clone(), k.clone(), v.clone()))
            }),
        ),
        (
            "short_conv = 4 + gated delta",
            best_ms(runs, || {
                drop(GatedDeltaNet::forward(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    beta.clone(),
                    g.clone(),
                    w.clone(),
                    w.clone(),
                    w.clone(),
                ))
            }),
        ),
        (
            "rpe = toeplitz (FFT), elu+1, sum",
            best_ms(1, || {
                drop(ToeplitzAttention::forward(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    bias.clone(),
                ))
            }),
        ),
    ];
    println!("forward, best of {runs} (rpe: 1), all threads:");
    println!("  {:<34} {plain:>9.2} ms   1.00x", "plain linear attention");
    for (name, ms) in timed {
        println!("  {name:<34} {ms:>9.2} ms {:>6.2}x", ms / plain);
    }
    Ok(())
}
