//! The backward pass of linear attention on one (batch, head): the exact reverse of the
//! recurrence S_t = a_t S_{t-1} + k~_t u_t^T (u_t = v_t, or beta_t (v_t - a_t S_{t-1}^T k~_t)
//! for delta rules), o_t = S_t^T q~_t (/ (q~_t . z_t + eps)).
//!
//! Memory is decided from the sizes: the state at the start of every chunk is saved by one
//! forward scan; a chunk's per-token states are then recomputed into a block buffer of at most
//! `BackwardPlan::block` tokens (the plan's choice from the sizes), in sub-blocks when F x DV is too large for a whole chunk (taylor2),
//! whose starting states a second scan of the chunk saves. The reverse scan carries dS (and dz)
//! from the end of the sequence to its start, token by token: each token's local terms (output,
//! key, value, gate, beta) read dS there, so dg is the reverse cumulative sum of the gate terms
//! that the chunkwise form would take within a chunk.

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

/// One token of the forward recurrence on (s, z): `kf` the key's features, `v` the value.
/// Delta rules write the residual v - P^T k~ into `resid`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn advance(
    cfg: &Config,
    s: &mut [f32],
    z: &mut [f32],
    kf: &[f32],
    v: &[f32],
    a: f32,
    beta: f32,
    resid: &mut [f32],
) {
    let dv = cfg.dv;
    if cfg.update.delta() {
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
    } else {
        for (srow, &ki) in rows_mut(s, dv).zip(kf) {
            if a != 1.0 {
                scale(srow, a);
            }
            axpy(srow, ki, v);
        }
    }
    if !z.is_empty() {
        for (zi, &ki) in z.iter_mut().zip(kf) {
            *zi += ki;
        }
    }
}

/// The output's vector-Jacobian product at one token: o = S^T q~ / den (den = q~ . z + eps with
/// the normaliser, else 1). Adds to dS, dz and d q~ (`dq`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn output_vjp(
    cfg: &Config,
    s: &[f32],
    z: &[f32],
    qf: &[f32],
    d_o: &[f32],
    ds: &mut [f32],
    dz: &mut [f32],
    dq: &mut [f32],
    num: &mut [f32],
) {
    let dv = cfg.dv;
    let den = if cfg.normalized {
        dot(qf, z) + cfg.sum_eps
    } else {
        1.0
    };
    let inv = 1.0 / den;
    num.iter_mut().for_each(|v| *v = 0.0);
    for (((srow, dsrow), &qi), dqi) in rows(s, dv).zip(rows_mut(ds, dv)).zip(qf).zip(dq.iter_mut())
    {
        axpy(dsrow, qi * inv, d_o);
        *dqi += dot(srow, d_o) * inv;
        if cfg.normalized {
            axpy(num, qi, srow);
        }
    }
    if cfg.normalized {
        let dden = -dot(d_o, num) * inv * inv;
        axpy(dq, dden, z);
        axpy(dz, dden, qf);
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
    if !cfg.update.delta() {
        // S_t = a S_{t-1} + k~ v^T.
        let mut da = 0.0;
        for (((dsrow, sprow), &ki), dki) in
            rows_mut(ds, n).zip(rows(sp, n)).zip(kf).zip(dk.iter_mut())
        {
            *dki += dot(dsrow, dv_of(resid, n));
            axpy(dv, ki, dsrow);
            if cfg.update.gated() {
                da += dot(dsrow, sprow);
                scale(dsrow, a);
            }
        }
        return Scalars {
            dg: da * a,
            dbeta: 0.0,
        };
    }
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

/// For additive and gated updates the residual buffer holds v itself.
#[inline(always)]
fn dv_of(resid: &[f32], n: usize) -> &[f32] {
    resid.get(..n).unwrap_or(resid)
}

/// Buffers of one block of recomputed tokens.
struct Block {
    /// States S_{t0-1} .. S_{t0+len-1}: len + 1 of them, F x DV each.
    s: Vec<f32>,
    /// As `s`, for z (F each), or empty.
    z: Vec<f32>,
    /// The keys' features, len x F.
    kf: Vec<f32>,
    /// The residuals (delta rules) or values, len x DV.
    resid: Vec<f32>,
}

/// The backward of one (batch, head).
#[inline(always)]
pub fn head(cfg: &Config, x: &HeadInputs<'_>, out: &mut HeadGrads<'_>) {
    let (dk, dv, f, n) = (cfg.dk, cfg.dv, cfg.f, x.n);
    let p = f * dv;
    let chunk = cfg.chunk.max(1);
    let nc = n.div_ceil(chunk);
    let normalized = cfg.normalized;
    let zlen = if normalized { f } else { 0 };
    let mut tok = Token::new(cfg);
    let mut resid = vec![0.0; dv];

    // 1. The forward scan, saving each chunk's incoming state.
    let mut starts_s = vec![0.0; nc * p];
    let mut starts_z = vec![0.0; nc * zlen];
    let mut s = x.s0.to_vec();
    let mut z = if normalized {
        x.z0.to_vec()
    } else {
        Vec::new()
    };
    z.resize(zlen, 0.0);
    for c in 0..nc {
        row_mut(&mut starts_s, c, p).copy_from_slice(&s);
        row_mut(&mut starts_z, c, zlen).copy_from_slice(&z);
        for t in c * chunk..((c + 1) * chunk).min(n) {
            tok.features(cfg, row(x.k, t, dk), x.proj, 1.0);
            let (a, beta) = gates(cfg, x, t);
            advance(
                cfg,
                &mut s,
                &mut z,
                &tok.feat,
                row(x.v, t, dv),
                a,
                beta,
                &mut resid,
            );
        }
    }

    // 2. dS_N, dz_N; with `mask = none` every output reads S_N, z_N.
    let mut ds = if x.d_s.is_empty() {
        vec![0.0; p]
    } else {
        x.d_s.to_vec()
    };
    let mut dz = if x.d_z.is_empty() || !normalized {
        vec![0.0; zlen]
    } else {
        x.d_z.to_vec()
    };
    let mut num = vec![0.0; dv];
    if !cfg.causal {
        for t in 0..n {
            let inv = tok.features(cfg, row(x.q, t, dk), x.proj, cfg.scale);
            tok.dfeat.iter_mut().for_each(|v| *v = 0.0);
            let d_o = row(x.d_o, t, dv);
            output_vjp(
                cfg,
                &s,
                &z,
                &tok.feat,
                d_o,
                &mut ds,
                &mut dz,
                &mut tok.dfeat,
                &mut num,
            );
            tok.backprop(
                cfg,
                inv,
                x.proj,
                cfg.scale,
                row_mut(out.dq, t, dk),
                out.dproj,
            );
        }
    }

    // 3. The reverse scan, block by block.
    let len = cfg.plan.block.clamp(1, chunk);
    let mut block = Block {
        s: vec![0.0; (len + 1) * p],
        z: vec![0.0; (len + 1) * zlen],
        kf: vec![0.0; len * f],
        resid: vec![0.0; len * dv],
    };
    let subs = chunk.div_ceil(len);
    let mut sub_s = vec![0.0; if subs > 1 { subs * p } else { 0 }];
    let mut sub_z = vec![0.0; if subs > 1 { subs * zlen } else { 0 }];
    let mut du = vec![0.0; dv];
    for c in (0..nc).rev() {
        let (c0, c1) = (c * chunk, ((c + 1) * chunk).min(n));
        // The sub-blocks' incoming states (a second scan of the chunk when it does not fit).
        let nsub = (c1 - c0).div_ceil(len);
        if nsub > 1 {
            s.copy_from_slice(row(&starts_s, c, p));
            z.copy_from_slice(row(&starts_z, c, zlen));
            for b in 0..nsub {
                row_mut(&mut sub_s, b, p).copy_from_slice(&s);
                row_mut(&mut sub_z, b, zlen).copy_from_slice(&z);
                for t in c0 + b * len..(c0 + (b + 1) * len).min(c1) {
                    tok.features(cfg, row(x.k, t, dk), x.proj, 1.0);
                    let (a, beta) = gates(cfg, x, t);
                    advance(
                        cfg,
                        &mut s,
                        &mut z,
                        &tok.feat,
                        row(x.v, t, dv),
                        a,
                        beta,
                        &mut resid,
                    );
                }
            }
        }
        for b in (0..nsub).rev() {
            let (t0, t1) = (c0 + b * len, (c0 + (b + 1) * len).min(c1));
            let (start_s, start_z) = if nsub > 1 {
                (row(&sub_s, b, p), row(&sub_z, b, zlen))
            } else {
                (row(&starts_s, c, p), row(&starts_z, c, zlen))
            };
            recompute(cfg, x, t0, t1, start_s, start_z, &mut block, &mut tok);
            for t in (t0..t1).rev() {
                let i = t - t0;
                let (sp, st) = (row(&block.s, i, p), row(&block.s, i + 1, p));
                if cfg.causal {
                    let inv = tok.features(cfg, row(x.q, t, dk), x.proj, cfg.scale);
                    tok.dfeat.iter_mut().for_each(|v| *v = 0.0);
                    let zt = row(&block.z, i + 1, zlen);
                    output_vjp(
                        cfg,
                        st,
                        zt,
                        &tok.feat,
                        row(x.d_o, t, dv),
                        &mut ds,
                        &mut dz,
                        &mut tok.dfeat,
                        &mut num,
                    );
                    tok.backprop(
                        cfg,
                        inv,
                        x.proj,
                        cfg.scale,
                        row_mut(out.dq, t, dk),
                        out.dproj,
                    );
                }
                // z_t = z_{t-1} + k~_t: d k~ starts from dz.
                tok.dfeat.iter_mut().for_each(|v| *v = 0.0);
                if normalized {
                    tok.dfeat.copy_from_slice(&dz);
                }
                let (a, beta) = gates(cfg, x, t);
                let kf = row(&block.kf, i, f);
                let r = if cfg.update.delta() {
                    row(&block.resid, i, dv)
                } else {
                    row(x.v, t, dv)
                };
                let terms = update_vjp(
                    cfg,
                    sp,
                    kf,
                    a,
                    beta,
                    r,
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
    if normalized {
        out.dz0.copy_from_slice(&dz);
    }
}

/// Recomputes tokens t0..t1 from the state (s0, z0) into `block`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn recompute(
    cfg: &Config,
    x: &HeadInputs<'_>,
    t0: usize,
    t1: usize,
    s0: &[f32],
    z0: &[f32],
    block: &mut Block,
    tok: &mut Token,
) {
    let (dk, dv, f) = (cfg.dk, cfg.dv, cfg.f);
    let p = f * dv;
    let zlen = z0.len();
    row_mut(&mut block.s, 0, p).copy_from_slice(s0);
    row_mut(&mut block.z, 0, zlen).copy_from_slice(z0);
    for t in t0..t1 {
        let i = t - t0;
        tok.features(cfg, row(x.k, t, dk), x.proj, 1.0);
        row_mut(&mut block.kf, i, f).copy_from_slice(&tok.feat);
        let (a, beta) = gates(cfg, x, t);
        let (before, after) = block.s.split_at_mut((i + 1) * p);
        let next = &mut after[..p];
        next.copy_from_slice(&before[i * p..]);
        let (zb, za) = block.z.split_at_mut((i + 1) * zlen);
        let znext = &mut za[..zlen];
        znext.copy_from_slice(&zb[i * zlen..]);
        let r = row_mut(&mut block.resid, i, dv);
        advance(cfg, next, znext, &tok.feat, row(x.v, t, dv), a, beta, r);
    }
}
