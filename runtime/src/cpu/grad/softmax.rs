//! The backward of exact softmax attention on one (batch, head), FlashAttention-2's way: per
//! block of queries, the scores are recomputed, each row's log-sum-exp taken (the forward
//! kernel does not hand it over, so one extra pass of scores recomputes it), then
//! dP = dO V^T, D = rowsum(P * dP), dS = P * (dP - D) and dQ = scale dS K, dK = scale dS^T Q,
//! dV = P^T dO, key by key, so each key's rows stay in L1 while a block of queries passes.

use super::maps::{normalize, normalize_vjp};
use super::vecops::{axpy, dot, row, row_mut};
use super::{Config, HeadGrads, HeadInputs};
use crate::cpu::tile::exp;

/// Queries per block.
const QUERIES: usize = 16;

/// The backward of one (batch, head).
pub fn head(cfg: &Config, x: &HeadInputs<'_>, out: &mut HeadGrads<'_>) {
    let (dk, dv, n) = (cfg.dk, cfg.dv, x.n);
    // qk_norm, once per row.
    let mut qn = vec![0.0; n * dk];
    let mut kn = vec![0.0; n * dk];
    let mut qinv = vec![1.0; n];
    let mut kinv = vec![1.0; n];
    for t in 0..n {
        qinv[t] = normalize(cfg, row(x.q, t, dk), row_mut(&mut qn, t, dk));
        kinv[t] = normalize(cfg, row(x.k, t, dk), row_mut(&mut kn, t, dk));
    }
    let mut dqn = vec![0.0; n * dk];
    let mut dkn = vec![0.0; n * dk];
    let mut p = vec![0.0; QUERIES * n];
    let mut dp = vec![0.0; QUERIES * n];
    for r0 in (0..n).step_by(QUERIES) {
        let r1 = (r0 + QUERIES).min(n);
        let last = |r: usize| if cfg.causal { r + 1 } else { n };
        // Scores, then each row's max and log-sum-exp.
        let mut lse = [0.0f32; QUERIES];
        for r in r0..r1 {
            let pr = row_mut(&mut p, r - r0, n);
            let qr = row(&qn, r, dk);
            let mut m = f32::NEG_INFINITY;
            for (s, ps) in pr.iter_mut().enumerate().take(last(r)) {
                *ps = cfg.scale * dot(qr, row(&kn, s, dk));
                m = m.max(*ps);
            }
            let total: f32 = pr.iter().take(last(r)).map(|&l| exp(l - m)).sum();
            lse[r - r0] = m + total.ln();
        }
        // P and dP, then D.
        let mut dsum = [0.0f32; QUERIES];
        let keys = last(r1 - 1);
        for s in 0..keys {
            let vs = row(x.v, s, dv);
            for r in r0.max(if cfg.causal { s } else { 0 })..r1 {
                let i = (r - r0) * n + s;
                let pv = exp(p[i] - lse[r - r0]);
                p[i] = pv;
                dp[i] = dot(row(x.d_o, r, dv), vs);
                dsum[r - r0] += pv * dp[i];
            }
        }
        // dS, and the products.
        for s in 0..keys {
            let first = r0.max(if cfg.causal { s } else { 0 });
            let (ks, dks, dvs) = (
                row(&kn, s, dk),
                row_mut(&mut dkn, s, dk),
                row_mut(out.dv, s, dv),
            );
            for r in first..r1 {
                let i = (r - r0) * n + s;
                let ds = p[i] * (dp[i] - dsum[r - r0]) * cfg.scale;
                axpy(dvs, p[i], row(x.d_o, r, dv));
                axpy(dks, ds, row(&qn, r, dk));
            }
            for r in first..r1 {
                let i = (r - r0) * n + s;
                let ds = p[i] * (dp[i] - dsum[r - r0]) * cfg.scale;
                axpy(row_mut(&mut dqn, r, dk), ds, ks);
            }
        }
    }
    for t in 0..n {
        normalize_vjp(
            cfg,
            row(&qn, t, dk),
            qinv[t],
            row(&dqn, t, dk),
            row_mut(out.dq, t, dk),
        );
        normalize_vjp(
            cfg,
            row(&kn, t, dk),
            kinv[t],
            row(&dkn, t, dk),
            row_mut(out.dk, t, dk),
        );
    }
}
