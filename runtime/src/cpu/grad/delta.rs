//! The chunkwise backward of the delta rules (`delta`, `gated_delta`) on one (batch, head), in
//! the WY form of flash-linear-attention's chunk kernels.
//!
//! Within a chunk, with S the incoming state, G the cumulative log-decay (0 for `delta`),
//! γ = e^G, Γ_ts = e^(G_t - G_s) and K~ the key features, the token recurrence
//! u_t = β_t (v_t - e^(g_t) S_{t-1}^T k~_t), S_t = e^(g_t) S_{t-1} + k~_t u_t^T is the system
//!
//! ```text
//! W = V - diag(γ) K~ S                       (the values less what the incoming state predicts)
//! (I + L) U = diag(β) W,  L = strict_tril(diag(β) (K~ K~^T ⊙ Γ))
//! O = diag(γ) Q~ S + tril(Q~ K~^T ⊙ Γ) U,  S' = γ_L S + Kd^T U
//! ```
//!
//! so the chunk is gated linear attention with values U, and the backward is that of
//! `chunked.rs` (dQ~, dK~'s score and state terms, dU = A^T dO + Kd dS', dG's terms) followed
//! by the solve's:
//!
//! ```text
//! dR = (I + L)^-T dU                         (back substitution; no inverse is formed)
//! dV = dW = diag(β) dR;  dβ_t = dR_t · W_t + Σ_s dL_ts (K~ K~^T ⊙ Γ)_ts
//! dL = -strict_tril(dR U^T);  D = dL ⊙ diag(β) Γ:  dK~ += D K~ + D^T K~
//! dK~ -= diag(γ) dW S^T;  dG_t -= γ_t (K~ S)_t · dW_t;  dG += rowsum(dL ⊙ L) - colsum(dL ⊙ L)
//! dS = γ_L dS' + Qd^T dO - (diag(γ) K~)^T dW (the carry of the reverse scan)
//! ```
//!
//! One state per chunk is saved by a forward scan; U, W and L are recomputed per chunk from it
//! (the products K~ S and K~ K~^T are needed by the backward anyway), so nothing is held per
//! token. Delta rules are causal and never normalised (the spec's rules).

use super::chunked::{
    advance, carry, decay_row, features_backprop, final_state_grads, finish_gates, forward_terms,
    key_terms, lower_row, output_terms, query_grads, score_grads, scores_values, state_values,
    Chunk,
};
use super::gemm::{matmul, matmul_tri, matmul_tri_t, row_combination, transpose, Tri};
use super::vecops::{at, dot, row, row_mut};
use super::{Config, HeadGrads, HeadInputs};
use crate::cpu::isa::Isa;

/// The delta rule's tiles of one chunk, beside the linear ones of [`Chunk`].
struct Tiles {
    /// K~ S, W = V - diag(γ) K~ S, U and then dU / dR (L x DV each).
    ks: Vec<f32>,
    w: Vec<f32>,
    u: Vec<f32>,
    du: Vec<f32>,
    /// E = K~ K~^T ⊙ Γ and -L = -diag(β) E (strictly lower, L x L), -L^T; dL, then D.
    e: Vec<f32>,
    l: Vec<f32>,
    lt: Vec<f32>,
    dl: Vec<f32>,
    /// An L x F scratch.
    lf: Vec<f32>,
}

impl Tiles {
    fn new(cfg: &Config) -> Tiles {
        let (c, f, dv) = (cfg.chunk, cfg.f, cfg.dv);
        let z = |n: usize| vec![0.0f32; n];
        Tiles {
            ks: z(c * dv),
            w: z(c * dv),
            u: z(c * dv),
            du: z(c * dv),
            e: z(c * c),
            l: z(c * c),
            lt: z(c * c),
            dl: z(c * c),
            lf: z(c * f),
        }
    }
}

/// The backward of one (batch, head).
#[inline(always)]
pub fn head<I: Isa>(isa: I, cfg: &Config, x: &HeadInputs<'_>, out: &mut HeadGrads<'_>) {
    let (f, dv, n) = (cfg.f, cfg.dv, x.n);
    let c = cfg.chunk.max(1);
    let nc = n.div_ceil(c);
    let p = f * dv;
    let mut ch = Chunk::new(cfg);
    let mut tiles = Tiles::new(cfg);
    let span = |ci: usize| (ci * c, ((ci + 1) * c).min(n) - ci * c);

    // 1. The forward scan: each chunk's incoming state.
    let mut starts = vec![0.0; nc * p];
    let mut s = x.s0.to_vec();
    for ci in 0..nc {
        row_mut(&mut starts, ci, p).copy_from_slice(&s);
        let (t0, len) = span(ci);
        ch.load(cfg, x, t0, len, false);
        solve_values(isa, cfg, x, &mut ch, &mut tiles, t0, &s);
        advance(isa, cfg, &mut ch, &tiles.u, &mut s, &mut []);
    }

    // 2. The reverse scan, carrying dS from dS_N.
    let (mut ds, _) = final_state_grads(cfg, x);
    for ci in (0..nc).rev() {
        let (t0, len) = span(ci);
        ch.load(cfg, x, t0, len, true);
        let s0 = row(&starts, ci, p);
        solve_values(isa, cfg, x, &mut ch, &mut tiles, t0, s0);
        chunk_grads(isa, cfg, x, &mut ch, &mut tiles, t0, s0, &mut ds, out);
    }
    out.ds0.copy_from_slice(&ds);
}

/// K~ S, W, E, L and U of the loaded chunk (tokens `t0..`) from its incoming state `s0`.
#[inline(always)]
fn solve_values<I: Isa>(
    isa: I,
    cfg: &Config,
    x: &HeadInputs<'_>,
    ch: &mut Chunk,
    tl: &mut Tiles,
    t0: usize,
    s0: &[f32],
) {
    let (f, dv, len) = (cfg.f, cfg.dv, ch.len);
    matmul(isa, &mut tl.ks, &ch.kf, s0, len, f, dv, false);
    for t in 0..len {
        let (g, v) = (ch.eg[t], row(x.v, t0 + t, dv));
        for ((w, &vi), &k) in row_mut(&mut tl.w, t, dv)
            .iter_mut()
            .zip(v)
            .zip(row(&tl.ks, t, dv))
        {
            *w = vi - g * k;
        }
    }
    let dims = (len, f, len);
    matmul_tri(isa, &mut tl.e, &ch.kf, &ch.kft, dims, false, Tri::LowerOut);
    let gcum = ch.gated.then_some(&ch.gcum[..]);
    for t in 0..len {
        let beta = at(x.beta, t0 + t, 1.0);
        let erow = lower_row(&mut tl.e, t, len, t);
        decay_row(gcum, t, erow);
        let lrow = lower_row(&mut tl.l, t, len, t);
        for (l, &e) in lrow.iter_mut().zip(&*erow) {
            *l = -beta * e;
        }
    }
    // (I + L) U = diag(β) W by forward substitution, row by row.
    for t in 0..len {
        let beta = at(x.beta, t0 + t, 1.0);
        let (done, rest) = tl.u.split_at_mut(t * dv);
        let ut = &mut rest[..dv];
        for (u, &w) in ut.iter_mut().zip(row(&tl.w, t, dv)) {
            *u = beta * w;
        }
        row_combination(isa, ut, done, &tl.l[t * len..t * len + t]);
    }
}

/// dR = (I + L)^-T dU in place in `du`, by back substitution from the last row:
/// dR_s = dU_s - Σ_{t>s} L_ts dR_t, with the column of -L as row s of `lt` (its transpose).
#[inline(always)]
fn back_substitute<I: Isa>(isa: I, tl: &mut Tiles, len: usize, dv: usize) {
    transpose(&tl.l[..len * len], len, len, &mut tl.lt);
    for s in (0..len.saturating_sub(1)).rev() {
        let (head, done) = tl.du.split_at_mut((s + 1) * dv);
        let coefs = &tl.lt[s * len + s + 1..(s + 1) * len];
        row_combination(isa, &mut head[s * dv..], done, coefs);
    }
}

/// The loaded chunk's gradients (tiles solved), and the carry `ds` moved from its end to its
/// start.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn chunk_grads<I: Isa>(
    isa: I,
    cfg: &Config,
    x: &HeadInputs<'_>,
    ch: &mut Chunk,
    tl: &mut Tiles,
    t0: usize,
    s0: &[f32],
    ds: &mut [f32],
    out: &mut HeadGrads<'_>,
) {
    let (dv, len) = (cfg.dv, ch.len);
    let d_o = &x.d_o[t0 * dv..(t0 + len) * dv];
    // Gated linear attention with values U.
    forward_terms(isa, cfg, ch, &tl.u, s0, &[]);
    output_terms(cfg, ch, d_o);
    score_grads(isa, cfg, ch, &tl.u);
    query_grads(isa, cfg, x, ch, t0, s0, &[], out);
    scores_values(isa, cfg, ch, &mut tl.du);
    key_terms(isa, cfg, ch, &tl.u, ds, &[], true);
    state_values(isa, cfg, ch, ds, &mut tl.du, true);
    // The solve's terms.
    back_substitute(isa, tl, len, dv);
    solve_grads(isa, cfg, x, ch, tl, t0, s0, out);
    features_backprop(cfg, x, ch, t0, out, true);
    finish_gates(cfg, ch, t0, ds, s0, out);
    carry(isa, cfg, ch, ds, &mut []);
    // dS -= (diag(γ) K~)^T dW.
    for (dst, src) in ch
        .qft
        .chunks_exact_mut(len.max(1))
        .zip(ch.kft.chunks_exact(len.max(1)))
    {
        for ((d, &k), &g) in dst.iter_mut().zip(src).zip(&ch.eg) {
            *d = -g * k;
        }
    }
    matmul(isa, ds, &ch.qft, &tl.du, cfg.f, len, dv, true);
}

/// From dR (in `tl.du`): dv, dβ, dK~'s terms of L and W (into `ch.lf2`) and dG's (into
/// `ch.dgl`); `tl.du` ends as dW = diag(β) dR.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn solve_grads<I: Isa>(
    isa: I,
    cfg: &Config,
    x: &HeadInputs<'_>,
    ch: &mut Chunk,
    tl: &mut Tiles,
    t0: usize,
    s0: &[f32],
    out: &mut HeadGrads<'_>,
) {
    let (f, dv, len) = (cfg.f, cfg.dv, ch.len);
    let gated = cfg.update.gated();
    // dL = -strict_tril(dR U^T).
    transpose(&tl.u[..len * dv], len, dv, &mut ch.vt);
    matmul_tri(
        isa,
        &mut tl.dl,
        &tl.du,
        &ch.vt,
        (len, dv, len),
        false,
        Tri::LowerOut,
    );
    let gcum = gated.then_some(&ch.gcum[..]);
    for t in 0..len {
        let beta = at(x.beta, t0 + t, 1.0);
        let mut dbeta = dot(row(&tl.du, t, dv), row(&tl.w, t, dv));
        let dlrow = lower_row(&mut tl.dl, t, len, t);
        // dL = -(dR U^T); dβ_t += Σ_s dL_ts E_ts; dG += rowsum(dL ⊙ L) - colsum(dL ⊙ L).
        let mut dg = 0.0;
        for (((d, &e), &nl), dgs) in dlrow
            .iter_mut()
            .zip(row(&tl.e, t, len))
            .zip(row(&tl.l, t, len))
            .zip(ch.dgl.iter_mut())
        {
            *d = -*d;
            dbeta += *d * e;
            let w = -*d * nl;
            dg += w;
            *dgs -= w;
        }
        if gated {
            ch.dgl[t] += dg;
        }
        // D = dL ⊙ diag(β) Γ.
        decay_row(gcum, t, dlrow);
        dlrow.iter_mut().for_each(|d| *d *= beta);
        if let Some(b) = out.dbeta.get_mut(t0 + t) {
            *b = dbeta;
        }
        // dW = diag(β) dR: the values' gradient.
        let dw = row_mut(&mut tl.du, t, dv);
        dw.iter_mut().for_each(|e| *e *= beta);
        row_mut(out.dv, t0 + t, dv).copy_from_slice(dw);
        if gated {
            ch.dgl[t] -= ch.eg[t] * dot(row(&tl.ks, t, dv), dw);
        }
    }
    // dK~ += D K~ + D^T K~.
    let dims = (len, len, f);
    matmul_tri(isa, &mut ch.lf2, &tl.dl, &ch.kf, dims, true, Tri::LowerA);
    matmul_tri_t(isa, &mut ch.lf2, &tl.dl, &ch.kf, dims, true, Tri::UpperA);
    // dK~ -= diag(γ) dW S^T.
    transpose(s0, f, dv, &mut ch.dfs);
    matmul(isa, &mut tl.lf, &tl.du, &ch.dfs, len, dv, f, false);
    for t in 0..len {
        let g = ch.eg[t];
        for (d, &e) in row_mut(&mut ch.lf2, t, f).iter_mut().zip(row(&tl.lf, t, f)) {
            *d -= g * e;
        }
    }
}
