//! The backward of exact softmax attention on one (batch, head), FlashAttention-2's way: per
//! tile of C queries, a first sweep over the key tiles recomputes the scores and each row's
//! log-sum-exp (the forward kernel does not hand it over); with D = rowsum(dO ⊙ O) from the
//! saved output, a second sweep recomputes P = exp(S - lse) and accumulates
//! dV += P^T dO, dS = P ⊙ (dO V^T - D) scale, dQ += dS K, dK += dS^T Q, tile by tile (no N x N
//! matrix), every product through the runtime-sized products of `gemm.rs`.

use super::gemm::{matmul, transpose};
use super::maps::{normalize, normalize_vjp};
use super::vecops::{dot, row, row_mut};
use super::{Config, HeadGrads, HeadInputs};
use crate::cpu::isa::Isa;
use crate::cpu::tile::exp;

/// The backward of one (batch, head).
#[inline(always)]
pub fn head<I: Isa>(isa: I, cfg: &Config, x: &HeadInputs<'_>, out: &mut HeadGrads<'_>) {
    let (dk, dv, n) = (cfg.dk, cfg.dv, x.n);
    let c = cfg.chunk.max(1);
    // qk_norm once per row; K^T and V^T for the products.
    let mut qn = vec![0.0; n * dk];
    let mut kn = vec![0.0; n * dk];
    let mut qinv = vec![1.0; n];
    let mut kinv = vec![1.0; n];
    for t in 0..n {
        qinv[t] = normalize(cfg, row(x.q, t, dk), row_mut(&mut qn, t, dk));
        kinv[t] = normalize(cfg, row(x.k, t, dk), row_mut(&mut kn, t, dk));
    }
    let (mut knt, mut vt) = (vec![0.0; n * dk], vec![0.0; n * dv]);
    let mut dqn = vec![0.0; n * dk];
    let mut dkn = vec![0.0; n * dk];
    let mut s = vec![0.0; c * c];
    let mut dp = vec![0.0; c * c];
    let mut pt = vec![0.0; c * c];
    let mut kt_blk = vec![0.0; dk * c];
    let mut vt_blk = vec![0.0; dv * c];
    let (mut lse, mut dsum) = (vec![0.0f32; c], vec![0.0f32; c]);
    transpose(&kn, n, dk, &mut knt);
    transpose(x.v, n, dv, &mut vt);
    for r0 in (0..n).step_by(c) {
        let rows = c.min(n - r0);
        let keys = if cfg.causal { r0 + rows } else { n };
        let q_blk = &qn[r0 * dk..(r0 + rows) * dk];
        // Sweep 1: each row's log-sum-exp (online max and sum over the key tiles).
        let (mut m, mut l) = (vec![f32::NEG_INFINITY; rows], vec![0.0f32; rows]);
        for c0 in (0..keys).step_by(c) {
            let cols = c.min(keys - c0);
            scores(
                isa,
                cfg,
                q_blk,
                &knt,
                n,
                c0,
                rows,
                cols,
                &mut kt_blk,
                &mut s,
            );
            for i in 0..rows {
                let live = live_cols(cfg, r0 + i, c0, cols);
                let srow = &s[i * cols..i * cols + live];
                let mx = srow.iter().fold(m[i], |a, &b| a.max(b));
                let sum: f32 = srow.iter().map(|&v| exp(v - mx)).sum();
                l[i] = l[i] * exp(m[i] - mx) + sum;
                m[i] = mx;
            }
        }
        for i in 0..rows {
            lse[i] = m[i] + l[i].ln();
            dsum[i] = dot(row(x.d_o, r0 + i, dv), row(x.o, r0 + i, dv));
        }
        // Sweep 2: the gradients.
        let do_blk = &x.d_o[r0 * dv..(r0 + rows) * dv];
        for c0 in (0..keys).step_by(c) {
            let cols = c.min(keys - c0);
            scores(
                isa,
                cfg,
                q_blk,
                &knt,
                n,
                c0,
                rows,
                cols,
                &mut kt_blk,
                &mut s,
            );
            // dP = dO V^T.
            for (dst, src) in vt_blk.chunks_exact_mut(cols).zip(vt.chunks_exact(n)) {
                dst.copy_from_slice(&src[c0..c0 + cols]);
            }
            matmul(isa, &mut dp, do_blk, &vt_blk, rows, dv, cols, false);
            for i in 0..rows {
                let live = live_cols(cfg, r0 + i, c0, cols);
                for j in 0..cols {
                    let k = i * cols + j;
                    let p = if j < live { exp(s[k] - lse[i]) } else { 0.0 };
                    s[k] = p;
                    dp[k] = p * (dp[k] - dsum[i]) * cfg.scale;
                }
            }
            // dV += P^T dO; dK += dS^T Q; dQ += dS K.
            transpose(&s[..rows * cols], rows, cols, &mut pt);
            matmul(
                isa,
                &mut out.dv[c0 * dv..(c0 + cols) * dv],
                &pt,
                do_blk,
                cols,
                rows,
                dv,
                true,
            );
            transpose(&dp[..rows * cols], rows, cols, &mut pt);
            matmul(
                isa,
                &mut dkn[c0 * dk..(c0 + cols) * dk],
                &pt,
                q_blk,
                cols,
                rows,
                dk,
                true,
            );
            matmul(
                isa,
                &mut dqn[r0 * dk..(r0 + rows) * dk],
                &dp,
                &kn[c0 * dk..(c0 + cols) * dk],
                rows,
                cols,
                dk,
                true,
            );
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

/// Keys of tile `c0..c0 + cols` that query `t` sees.
#[inline(always)]
fn live_cols(cfg: &Config, t: usize, c0: usize, cols: usize) -> usize {
    if cfg.causal {
        (t + 1).saturating_sub(c0).min(cols)
    } else {
        cols
    }
}

/// s (rows x cols) = scale Q_blk K[c0..c0 + cols]^T, from K^T (dk x n).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn scores<I: Isa>(
    isa: I,
    cfg: &Config,
    q_blk: &[f32],
    knt: &[f32],
    n: usize,
    c0: usize,
    rows: usize,
    cols: usize,
    kt_blk: &mut [f32],
    s: &mut [f32],
) {
    let dk = cfg.dk;
    for (dst, src) in kt_blk.chunks_exact_mut(cols).zip(knt.chunks_exact(n)) {
        dst.copy_from_slice(&src[c0..c0 + cols]);
    }
    matmul(isa, s, q_blk, kt_blk, rows, dk, cols, false);
    s[..rows * cols].iter_mut().for_each(|v| *v *= cfg.scale);
}
