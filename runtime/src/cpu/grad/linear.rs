//! The backward pass of the delta rules on one (batch, head): the exact reverse of the
//! recurrence P = a_t S_{t-1}, u_t = beta_t (v_t - P^T k~_t), S_t = P + k~_t u_t^T (a_t = 1 for
//! `delta`, e^{g_t} for `gated_delta`), o_t = S_t^T q~_t. (Additive and gated updates run the
//! chunkwise backward of `chunked.rs`; delta rules are causal and never normalised.)
//!
//! Memory is decided from the sizes: the state at the start of every chunk is saved by one
//! forward scan; a chunk's per-token states are then recomputed into a block buffer of at most
//! `BackwardPlan::block` tokens (the plan's choice from the sizes), in sub-blocks when F x DV is
//! too large for a whole chunk, whose starting states a second scan of the chunk saves. The
//! reverse scan carries dS from the end of the sequence to its start, token by token: each
//! token's local terms (output, key, value, gate, beta) read dS there, so dg is the reverse
//! cumulative sum of the gate terms that the chunkwise form would take within a chunk.

use super::maps::{normalize, normalize_vjp, phi, phi_vjp};
use super::vecops::{at, axpy, dot, row, row_mut, rows, rows_mut, scale};
use super::{Config, HeadGrads, HeadInputs};

/// Per-token scratch: one token's normalised row, its features and their gradients.
pub(super) struct Token {
    /// The row after `qk_norm`.
    pub(super) xn: Vec<f32>,
    /// Its features.
    pub(super) feat: Vec<f32>,
    /// The features' gradient.
    pub(super) dfeat: Vec<f32>,
    /// The normalised row's gradient.
    dxn: Vec<f32>,
}

impl Token {
    pub(super) fn new(cfg: &Config) -> Token {
        Token {
            xn: vec![0.0; cfg.dk],
            feat: vec![0.0; cfg.f],
            dfeat: vec![0.0; cfg.f],
            dxn: vec![0.0; cfg.dk],
        }
    }

    /// Features of raw row `x` (normalised, mapped, times `factor`); returns the l2 factor.
    #[inline(always)]
    pub(super) fn features(&mut self, cfg: &Config, x: &[f32], proj: &[f32], factor: f32) -> f32 {
        let inv = normalize(cfg, x, &mut self.xn);
        phi(cfg, &self.xn, proj, &mut self.feat);
        if factor != 1.0 {
            scale(&mut self.feat, factor);
        }
        inv
    }

    /// dx of the features' gradient `self.dfeat` (times `factor`), into `dx`; d proj into `dproj`.
    #[inline(always)]
    pub(super) fn backprop(
        &mut self,
        cfg: &Config,
        inv: f32,
        proj: &[f32],
        factor: f32,
        dx: &mut [f32],
        dproj: &mut [f32],
    ) {
        if factor != 1.0 {
            scale(&mut self.dfeat, factor);
        }
        self.dxn.iter_mut().for_each(|v| *v = 0.0);
        phi_vjp(cfg, &self.xn, proj, &self.dfeat, &mut self.dxn, dproj);
        normalize_vjp(cfg, &self.xn, inv, &self.dxn, dx);
    }
}

/// Decay and write strength of token t.
#[inline(always)]
fn gates(cfg: &Config, x: &HeadInputs<'_>, t: usize) -> (f32, f32) {
    let a = if cfg.update.gated() {
        crate::cpu::tile::exp(at(x.g, t, 0.0))
    } else {
        1.0
    };
    (a, at(x.beta, t, 1.0))
}

/// One token of the forward recurrence on `s`: `kf` the key's features, `v` the value; writes
/// the residual v - P^T k~ into `resid`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn advance(
    cfg: &Config,
    s: &mut [f32],
    kf: &[f32],
    v: &[f32],
    a: f32,
    beta: f32,
    resid: &mut [f32],
) {
    let dv = cfg.dv;
    // P = a S; r = v - P^T k~; S = P + k~ (beta r)^T.
    resid.copy_from_slice(v);
    for (srow, &ki) in rows_mut(s, dv).zip(kf) {
        if a != 1.0 {
            scale(srow, a);
        }
        axpy(resid, -ki, srow);
    }
    for (srow, &ki) in rows_mut(s, dv).zip(kf) {
        axpy(srow, beta * ki, resid);
    }
}

/// The output's vector-Jacobian product at one token, o = S^T q~: adds to dS and d q~ (`dq`).
#[inline(always)]
fn output_vjp(cfg: &Config, s: &[f32], qf: &[f32], d_o: &[f32], ds: &mut [f32], dq: &mut [f32]) {
    let dv = cfg.dv;
    for (((srow, dsrow), &qi), dqi) in rows(s, dv).zip(rows_mut(ds, dv)).zip(qf).zip(dq.iter_mut())
    {
        axpy(dsrow, qi, d_o);
        *dqi += dot(srow, d_o);
    }
}

/// Gradient terms of one token's scalars.
struct Scalars {
    dg: f32,
    dbeta: f32,
}

/// The update's vector-Jacobian product at one token, from dS_t to dS_{t-1} in place (`ds`):
/// adds to d k~ (`dk`) and dv, returns the token's dg and dbeta terms. `sp` is S_{t-1}.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update_vjp(
    cfg: &Config,
    sp: &[f32],
    kf: &[f32],
    a: f32,
    beta: f32,
    resid: &[f32],
    ds: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    du: &mut [f32],
) -> Scalars {
    let n = cfg.dv;
    // u = beta r, r = v - P^T k~, P = a S_{t-1}, S_t = P + k~ u^T.
    du.iter_mut().for_each(|v| *v = 0.0);
    for ((dsrow, &ki), dki) in rows(ds, n).zip(kf).zip(dk.iter_mut()) {
        axpy(du, ki, dsrow);
        *dki += beta * dot(dsrow, resid);
    }
    let dbeta = dot(du, resid);
    // d pred = -beta du; dv += beta du; dP = dS + k~ dpred^T; d k~ += P dpred.
    axpy(dv, beta, du);
    scale(du, -beta);
    let dpred = &*du;
    let mut dg = 0.0;
    for (((dsrow, sprow), &ki), dki) in rows_mut(ds, n).zip(rows(sp, n)).zip(kf).zip(dk.iter_mut())
    {
        *dki += a * dot(sprow, dpred);
        axpy(dsrow, ki, dpred);
        if cfg.update.gated() {
            dg += dot(dsrow, sprow);
            scale(dsrow, a);
        }
    }
    Scalars { dg: dg * a, dbeta }
}

/// Buffers of one block of recomputed tokens.
struct Block {
    /// States S_{t0-1} .. S_{t0+len-1}: len + 1 of them, F x DV each.
    s: Vec<f32>,
    /// The keys' features, len x F.
    kf: Vec<f32>,
    /// The residuals, len x DV.
    resid: Vec<f32>,
}

/// The backward of one (batch, head).
#[inline(always)]
pub fn head(cfg: &Config, x: &HeadInputs<'_>, out: &mut HeadGrads<'_>) {
    let (dk, dv, f, n) = (cfg.dk, cfg.dv, cfg.f, x.n);
    let p = f * dv;
    let chunk = cfg.chunk.max(1);
    let nc = n.div_ceil(chunk);
    let mut tok = Token::new(cfg);
    let mut resid = vec![0.0; dv];

    // 1. The forward scan, saving each chunk's incoming state.
    let mut starts = vec![0.0; nc * p];
    let mut s = x.s0.to_vec();
    for c in 0..nc {
        row_mut(&mut starts, c, p).copy_from_slice(&s);
        for t in c * chunk..((c + 1) * chunk).min(n) {
            advance_token(cfg, x, t, &mut tok, &mut s, &mut resid);
        }
    }

    // 2. The reverse scan from dS_N, block by block.
    let mut ds = if x.d_s.is_empty() {
        vec![0.0; p]
    } else {
        x.d_s.to_vec()
    };
    let len = cfg.plan.block.clamp(1, chunk);
    let mut block = Block {
        s: vec![0.0; (len + 1) * p],
        kf: vec![0.0; len * f],
        resid: vec![0.0; len * dv],
    };
    let subs = chunk.div_ceil(len);
    let mut sub_s = vec![0.0; if subs > 1 { subs * p } else { 0 }];
    let mut du = vec![0.0; dv];
    for c in (0..nc).rev() {
        let (c0, c1) = (c * chunk, ((c + 1) * chunk).min(n));
        // The sub-blocks' incoming states (a second scan of the chunk when it does not fit).
        let nsub = (c1 - c0).div_ceil(len);
        if nsub > 1 {
            s.copy_from_slice(row(&starts, c, p));
            for b in 0..nsub {
                row_mut(&mut sub_s, b, p).copy_from_slice(&s);
                for t in c0 + b * len..(c0 + (b + 1) * len).min(c1) {
                    advance_token(cfg, x, t, &mut tok, &mut s, &mut resid);
                }
            }
        }
        for b in (0..nsub).rev() {
            let (t0, t1) = (c0 + b * len, (c0 + (b + 1) * len).min(c1));
            let start = if nsub > 1 {
                row(&sub_s, b, p)
            } else {
                row(&starts, c, p)
            };
            recompute(cfg, x, t0, t1, start, &mut block, &mut tok);
            for t in (t0..t1).rev() {
                let i = t - t0;
                let (sp, st) = (row(&block.s, i, p), row(&block.s, i + 1, p));
                let inv = tok.features(cfg, row(x.q, t, dk), x.proj, cfg.scale);
                tok.dfeat.iter_mut().for_each(|v| *v = 0.0);
                output_vjp(
                    cfg,
                    st,
                    &tok.feat,
                    row(x.d_o, t, dv),
                    &mut ds,
                    &mut tok.dfeat,
                );
                let dq = row_mut(out.dq, t, dk);
                tok.backprop(cfg, inv, x.proj, cfg.scale, dq, out.dproj);
                tok.dfeat.iter_mut().for_each(|v| *v = 0.0);
                let (a, beta) = gates(cfg, x, t);
                let terms = update_vjp(
                    cfg,
                    sp,
                    row(&block.kf, i, f),
                    a,
                    beta,
                    row(&block.resid, i, dv),
                    &mut ds,
                    &mut tok.dfeat,
                    row_mut(out.dv, t, dv),
                    &mut du,
                );
                if let Some(g) = out.dg.get_mut(t) {
                    *g = terms.dg;
                }
                if let Some(bt) = out.dbeta.get_mut(t) {
                    *bt = terms.dbeta;
                }
                let inv = normalize(cfg, row(x.k, t, dk), &mut tok.xn);
                tok.backprop(cfg, inv, x.proj, 1.0, row_mut(out.dk, t, dk), out.dproj);
            }
        }
    }
    out.ds0.copy_from_slice(&ds);
}

/// Token t of the forward recurrence on `s` (its key's features into `tok`).
#[inline(always)]
fn advance_token(
    cfg: &Config,
    x: &HeadInputs<'_>,
    t: usize,
    tok: &mut Token,
    s: &mut [f32],
    resid: &mut [f32],
) {
    let (dk, dv) = (cfg.dk, cfg.dv);
    tok.features(cfg, row(x.k, t, dk), x.proj, 1.0);
    let (a, beta) = gates(cfg, x, t);
    advance(cfg, s, &tok.feat, row(x.v, t, dv), a, beta, resid);
}

/// Recomputes tokens t0..t1 from the state `s0` into `block`.
#[inline(always)]
fn recompute(
    cfg: &Config,
    x: &HeadInputs<'_>,
    t0: usize,
    t1: usize,
    s0: &[f32],
    block: &mut Block,
    tok: &mut Token,
) {
    let (dk, dv, f) = (cfg.dk, cfg.dv, cfg.f);
    let p = f * dv;
    row_mut(&mut block.s, 0, p).copy_from_slice(s0);
    for t in t0..t1 {
        let i = t - t0;
        tok.features(cfg, row(x.k, t, dk), x.proj, 1.0);
        row_mut(&mut block.kf, i, f).copy_from_slice(&tok.feat);
        let (a, beta) = gates(cfg, x, t);
        let (before, after) = block.s.split_at_mut((i + 1) * p);
        let next = &mut after[..p];
        next.copy_from_slice(&before[i * p..]);
        let r = row_mut(&mut block.resid, i, dv);
        advance(cfg, next, &tok.feat, row(x.v, t, dv), a, beta, r);
    }
}
