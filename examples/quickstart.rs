//! Quickstart: declare four attention variants, run them, check `step` against `forward` (and
//! `decode_step` against `step`), time them.
//!
//! Run with `cargo run --release --example quickstart`.

use attnc::prelude::*;
use std::time::Instant;

/// Causal linear attention with the elu+1 feature map and its normaliser (Katharopoulos et al., 2020).
#[attention(head_dim = 64, feature_map = elu_plus_one, normalize = sum, chunk = 64)]
pub struct LinearAttention;

/// RetNet / simple-GLA style: a per-token scalar decay exp(g) on the state.
#[attention(head_dim = 64, update = gated, qk_norm = l2, chunk = 64)]
pub struct Retention;

/// A user feature map written as a closure (lowered to Rust here and to CUDA C by the same plan).
#[attention(head_dim = 64, feature_map = |x| if x > 0.0 { x + 1.0 } else { (0.5 * x).exp() }, normalize = sum)]
pub struct CustomMap;

/// Non-causal (every token sees the whole sequence), tokens-first layout as flash-linear-attention.
#[attention(head_dim = 64, value_dim = 32, feature_map = relu, mask = none, layout = bnhd)]
pub struct Bidirectional;

const B: usize = 1;
const H: usize = 8;
const N: usize = 4096;

type Tokens<const D: usize> = Tensor<(Const<B>, Const<H>, usize, Const<D>), f32, Cpu>;

fn main() -> Result<(), Error> {
    let device = attnc::Device::auto()?;
    println!("attnc quickstart: {}", device.describe());
    println!("shapes: B = {B}, H = {H}, N = {N}, dk = 64\n");

    let dev = Cpu::seed_from_u64(0);
    let q: Tokens<64> = dev.sample_normal_like(&(Const, Const, N, Const));
    let k: Tokens<64> = dev.sample_normal_like(&(Const, Const, N, Const));
    let v: Tokens<64> = dev.sample_normal_like(&(Const, Const, N, Const));
    // Log-decays g = log(sigmoid(x)) in about (-1, 0), as GLA's gates.
    let g: Tensor<(Const<B>, Const<H>, usize), f32, Cpu> = {
        let x: Tensor<(Const<B>, Const<H>, usize), f32, Cpu> =
            dev.sample_normal_like(&(Const, Const, N));
        let data = x
            .as_vec()
            .iter()
            .map(|x| -(1.0 + (-(x + 3.0)).exp()).ln())
            .collect();
        dev.tensor_from_vec(data, (Const, Const, N))
    };

    let ms = timed(|| LinearAttention::forward(q.clone(), k.clone(), v.clone()))?;
    report(
        "LinearAttention (elu+1, causal, normalised)",
        LinearAttention::spec(),
        ms,
    );
    let ms = timed(|| Retention::forward(q.clone(), k.clone(), v.clone(), g.clone()))?;
    report("Retention (gated, l2 q/k)", Retention::spec(), ms);
    let ms = timed(|| CustomMap::forward(q.clone(), k.clone(), v.clone()))?;
    report("CustomMap (closure feature map)", CustomMap::spec(), ms);

    // Bidirectional is tokens-first: (B, N, H, D).
    let qt: Tensor<(Const<B>, usize, Const<H>, Const<64>), f32, Cpu> =
        dev.sample_normal_like(&(Const, N, Const, Const));
    let kt = qt.clone();
    let vt: Tensor<(Const<B>, usize, Const<H>, Const<32>), f32, Cpu> =
        dev.sample_normal_like(&(Const, N, Const, Const));
    let ms = timed(|| Bidirectional::forward(qt.clone(), kt.clone(), vt.clone()))?;
    report(
        "Bidirectional (relu, non-causal, bnhd)",
        Bidirectional::spec(),
        ms,
    );

    // The recurrent view: decoding token by token with `step` gives what `forward` gives.
    let n = 300;
    let (qs, ks, vs) = (prefix(&q, n), prefix(&k, n), prefix(&v, n));
    let full = LinearAttention::forward(qs.clone(), ks.clone(), vs.clone())?.as_vec();
    let mut state = State::zeros(Const::<B>, Const::<H>, true)?;
    let mut worst = 0.0f32;
    let scale = full.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let tokens: Vec<_> = (0..n)
        .map(|t| (token(&qs, t), token(&ks, t), token(&vs, t)))
        .collect();
    let t0 = Instant::now();
    let outs = tokens
        .iter()
        .map(|(q_t, k_t, v_t)| LinearAttention::step(&mut state, q_t, k_t, v_t))
        .collect::<Result<Vec<_>, Error>>()?;
    let per_token = t0.elapsed().as_secs_f64() * 1e9 / (n * H) as f64;
    for (t, o_t) in outs.iter().enumerate() {
        for (h, row) in o_t.as_vec().chunks(64).enumerate() {
            let want = &full[(h * n + t) * 64..(h * n + t + 1) * 64];
            for (a, b) in row.iter().zip(want) {
                worst = worst.max((a - b).abs() / scale);
            }
        }
    }
    println!(
        "\nstep vs forward over {n} tokens: max relative difference {worst:.1e} (contract: <= 1e-4); \
         {per_token:.0} ns per token per head"
    );
    if worst > 1e-4 {
        return Err(Error::Internal("step and forward disagree"));
    }

    // For a generation loop: a `DecodeState` owns its buffers, so `decode_step` updates them in
    // place instead of copying the state out of and back into dfdx tensors every token.
    let mut dec = DecodeState::zeros(Const::<B>, Const::<H>, true);
    let t0 = Instant::now();
    let fast = tokens
        .iter()
        .map(|(q_t, k_t, v_t)| LinearAttention::decode_step(&mut dec, q_t, k_t, v_t))
        .collect::<Result<Vec<_>, Error>>()?;
    let per_token_fast = t0.elapsed().as_secs_f64() * 1e9 / (n * H) as f64;
    let same = outs
        .iter()
        .zip(&fast)
        .all(|(a, b)| a.as_vec() == b.as_vec());
    println!(
        "decode_step on a DecodeState: {per_token_fast:.0} ns per token per head, outputs {}",
        if same {
            "identical to step's"
        } else {
            "DIFFERENT from step's"
        }
    );
    if !same {
        return Err(Error::Internal("decode_step and step disagree"));
    }
    training(&q, &k, &v)?;
    on_the_gpu(&device, &q, &k, &v)
}

/// Training: a traced `forward` records its backward on dfdx's tape. The gradient of
/// L = sum(o * w) is checked along one random direction against a central difference.
fn training(q: &Tokens<64>, k: &Tokens<64>, v: &Tokens<64>) -> Result<(), Error> {
    let dev = Cpu::seed_from_u64(7);
    let w: Tokens<64> = dev.sample_normal_like(q.shape());
    // The loss summed in f64, so the central difference sees the kernel's rounding only.
    let wv = w.as_vec();
    let loss = |q: Tokens<64>| -> Result<f64, Error> {
        let o = LinearAttention::forward(q, k.clone(), v.clone())?.as_vec();
        Ok(o.iter().zip(&wv).map(|(a, b)| (a * b) as f64).sum())
    };
    let t0 = Instant::now();
    let o = LinearAttention::forward(q.leaky_trace(), k.leaky_trace(), v.leaky_trace())?;
    let grads = (o * w.clone()).sum::<Rank0, _>().backward();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let dq = grads.get(q).as_vec();
    let dir: Tokens<64> = dev.sample_normal_like(q.shape());
    let eps = 1e-2f32;
    let (plus, minus) = (q.clone() + dir.clone() * eps, q.clone() - dir.clone() * eps);
    let numeric = (loss(plus)? - loss(minus)?) / (2.0 * eps as f64);
    let analytic: f64 = dq
        .iter()
        .zip(dir.as_vec())
        .map(|(g, d)| (g * d) as f64)
        .sum();
    let rel = (numeric - analytic).abs() / analytic.abs().max(1e-12);
    println!(
        "\ntraining: forward + backward of `LinearAttention` in {ms:.1} ms; dL/dq along a random \
         direction {analytic:.4} vs central difference {numeric:.4} (relative {rel:.1e}, f32)"
    );
    if rel > 1e-2 {
        return Err(Error::Internal(
            "the gradient disagrees with finite differences",
        ));
    }
    Ok(())
}

/// Where `Device::auto()` picked a GPU: the same spec through the generated CUDA kernels, checked
/// against the CPU's output. Elsewhere it says why not (the CPU path above is the whole demo).
fn on_the_gpu(
    device: &attnc::Device,
    q: &Tokens<64>,
    k: &Tokens<64>,
    v: &Tokens<64>,
) -> Result<(), Error> {
    let Some(gpu) = device.cuda_device() else {
        println!("GPU: not used ({})", device.describe());
        return Ok(());
    };
    let (gq, gk, gv) = (gpu.upload(q)?, gpu.upload(k)?, gpu.upload(v)?);
    // First call compiles the CUDA C with NVRTC (or loads the cached PTX).
    LinearAttention::forward_cuda(&gq, &gk, &gv)?;
    gpu.synchronize()?;
    let ms = timed(|| {
        let o = LinearAttention::forward_cuda(&gq, &gk, &gv)?;
        gpu.synchronize()?;
        Ok(o)
    })?;
    let on_gpu = LinearAttention::forward_cuda(&gq, &gk, &gv)?
        .download()?
        .as_vec();
    let on_cpu = LinearAttention::forward(q.clone(), k.clone(), v.clone())?.as_vec();
    let scale = on_cpu.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let worst = on_gpu
        .iter()
        .zip(&on_cpu)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs() / scale));
    report("LinearAttention on the GPU", LinearAttention::spec(), ms);
    println!("GPU vs CPU: max relative difference {worst:.1e} (contract: <= 1e-4)");
    if worst > 1e-4 {
        return Err(Error::Internal("the GPU and CPU kernels disagree"));
    }
    Ok(())
}

/// Best of three runs (after one warm-up), in milliseconds.
fn timed<T>(mut f: impl FnMut() -> Result<T, Error>) -> Result<f64, Error> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        f()?;
        best = best.min(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn report(name: &str, spec: &Spec, ms: f64) {
    println!("{name:<45} {ms:>8.2} ms   [{spec}]");
}

/// The first `n` tokens.
fn prefix<const D: usize>(x: &Tokens<D>, n: usize) -> Tokens<D> {
    let data = x.as_vec();
    let len = x.shape().2;
    let mut out = Vec::with_capacity(B * H * n * D);
    for bh in 0..B * H {
        out.extend_from_slice(&data[bh * len * D..(bh * len + n) * D]);
    }
    Cpu::default().tensor_from_vec(out, (Const, Const, n, Const))
}

/// Token `t` of every head, as (B, H, D).
fn token<const D: usize>(
    x: &Tokens<D>,
    t: usize,
) -> Tensor<(Const<B>, Const<H>, Const<D>), f32, Cpu> {
    let data = x.as_vec();
    let len = x.shape().2;
    let mut out = Vec::with_capacity(B * H * D);
    for bh in 0..B * H {
        out.extend_from_slice(&data[(bh * len + t) * D..(bh * len + t + 1) * D]);
    }
    Cpu::default().tensor_from_vec(out, (Const, Const, Const))
}
