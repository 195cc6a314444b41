//! The systems' oracles, in f64, written plainly: the short convolution (then SiLU), the
//! momentum recurrence token by token, and rpe's direct O(N^2) sum.
#![allow(dead_code, clippy::needless_range_loop)]

use super::{phi_row, Inputs};
use attnc::spec::{Mask, Normalize, Spec};

/// `silu(conv(x))` heads first: `x` (bh x n x d), `tails` (bh x (w-1) x d), `w` (h x d x width).
/// Returns the output and the next tails.
pub fn conv_silu(
    x: &[f32],
    tails: &[f32],
    w: &[f32],
    (bh, heads, n, d, width): (usize, usize, usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let w1 = width - 1;
    let mut y = vec![0.0f32; bh * n * d];
    let mut next = vec![0.0f32; bh * w1 * d];
    for i in 0..bh {
        let h = i % heads;
        let ext = |e: usize, c: usize| -> f64 {
            if e < w1 {
                tails[(i * w1 + e) * d + c] as f64
            } else {
                x[(i * n + e - w1) * d + c] as f64
            }
        };
        for t in 0..n {
            for c in 0..d {
                let mut a = 0.0f64;
                for j in 0..width {
                    a += w[(h * d + c) * width + j] as f64 * ext(t + j, c);
                }
                y[(i * n + t) * d + c] = (a / (1.0 + (-a).exp())) as f32;
            }
        }
        for e in 0..w1 {
            for c in 0..d {
                next[(i * w1 + e) * d + c] = ext(n + e, c) as f32;
            }
        }
    }
    (y, next)
}

/// The momentum recurrence from (s0, z0, m0, n0) (zeros when empty): returns o and the final
/// (s, z, m, n), heads first.
pub fn momentum(spec: &Spec, x: &Inputs, init: [&[f32]; 4]) -> (Vec<f64>, [Vec<f64>; 4]) {
    let (n, dk, dv, f) = (x.n, x.dk, x.dv, spec.feature_dim());
    let mu = spec.momentum.unwrap() as f64;
    let norm = spec.normalize == Normalize::Sum;
    let scale = spec.scale_value() as f64;
    let mut o = vec![0.0; x.b * x.h * n * dv];
    let mut fin: [Vec<f64>; 4] = Default::default();
    for bh in 0..x.b * x.h {
        let part = |v: &[f32], len: usize| -> Vec<f64> {
            if v.is_empty() {
                vec![0.0; len]
            } else {
                v[bh * len..(bh + 1) * len]
                    .iter()
                    .map(|&a| a as f64)
                    .collect()
            }
        };
        let (mut s, mut z, mut m, mut nn) = (
            part(init[0], f * dv),
            part(init[1], f),
            part(init[2], f * dv),
            part(init[3], f),
        );
        for t in 0..n {
            let k = phi_row(
                spec,
                &x.k[(bh * n + t) * dk..(bh * n + t + 1) * dk],
                &x.proj,
            );
            let q: Vec<f64> = phi_row(
                spec,
                &x.q[(bh * n + t) * dk..(bh * n + t + 1) * dk],
                &x.proj,
            )
            .iter()
            .map(|v| v * scale)
            .collect();
            let v = &x.v[(bh * n + t) * dv..(bh * n + t + 1) * dv];
            for i in 0..f {
                for j in 0..dv {
                    m[i * dv + j] = mu * m[i * dv + j] + k[i] * v[j] as f64;
                    s[i * dv + j] += m[i * dv + j];
                }
                nn[i] = mu * nn[i] + k[i];
                z[i] += nn[i];
            }
            let den = if norm {
                q.iter().zip(&z).map(|(a, b)| a * b).sum::<f64>() + 1e-6
            } else {
                1.0
            };
            for j in 0..dv {
                let num: f64 = (0..f).map(|i| q[i] * s[i * dv + j]).sum();
                o[(bh * n + t) * dv + j] = num / den;
            }
        }
        fin[0].extend(s);
        fin[2].extend(m);
        if norm {
            fin[1].extend(z);
            fin[3].extend(nn);
        }
    }
    (o, fin)
}

/// rpe's direct sum: `o_t = sum_s exp(b[h, s - t + N - 1]) (q~_t . k~_s) v_s` over s <= t
/// (causal) or all s, divided by the same sum without v under `normalize = sum`.
pub fn rpe(spec: &Spec, x: &Inputs, bias: &[f32]) -> Vec<f64> {
    let (n, dk, dv) = (x.n, x.dk, x.dv);
    let norm = spec.normalize == Normalize::Sum;
    let scale = spec.scale_value() as f64;
    let mut o = vec![0.0; x.b * x.h * n * dv];
    for bh in 0..x.b * x.h {
        let h = bh % x.h;
        let feats = |src: &[f32]| -> Vec<Vec<f64>> {
            (0..n)
                .map(|t| {
                    phi_row(
                        spec,
                        &src[(bh * n + t) * dk..(bh * n + t + 1) * dk],
                        &x.proj,
                    )
                })
                .collect()
        };
        let (qs, ks) = (feats(&x.q), feats(&x.k));
        for t in 0..n {
            let (mut num, mut den) = (vec![0.0; dv], 0.0);
            for s in 0..n {
                if spec.mask == Mask::Causal && s > t {
                    continue;
                }
                let a = (bias[h * (2 * n - 1) + s + n - 1 - t] as f64).exp();
                let score: f64 =
                    qs[t].iter().zip(&ks[s]).map(|(a, b)| a * b).sum::<f64>() * scale * a;
                for j in 0..dv {
                    num[j] += score * x.v[(bh * n + s) * dv + j] as f64;
                }
                den += score;
            }
            let d = if norm { den + 1e-6 } else { 1.0 };
            for j in 0..dv {
                o[(bh * n + t) * dv + j] = num[j] / d;
            }
        }
    }
    o
}
