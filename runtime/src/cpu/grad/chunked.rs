//! The chunkwise backward of additive and gated linear attention (both masks, with or without
//! the normaliser, any elementwise or expanding feature map): per chunk, matrix products of
//! C x C and C x F tiles (the runtime-sized products of `gemm.rs`), with the state carried by a reverse scan.
//!
//! A forward scan saves each chunk's incoming state S (and z). Then, chunk by chunk from the
//! end, from S, z and the gradient of the outgoing state (dS', dz'), with G the cumulative
//! log-decay within the chunk, Γ_ts = exp(G_t - G_s), Qd = diag(e^G) Q~, Kd = diag(e^(G_L - G)) K~,
//! P = Q~ K~^T, A = tril(P ⊙ Γ) and r = 1 / (q~ . z_t + eps):
//!
//! ```text
//! dN = dO ⊙ r;  dden_t = -r_t (dO_t · O_t)           (normalised; else dN = dO, dden = 0)
//! dA = tril(dN V^T)
//! dG_t += rowsum(dA ⊙ A)_t - colsum(dA ⊙ A)_t + dN_t · (Qd S)_t
//! dP = dA ⊙ Γ + dden 1^T (lower)
//! dQ~ = dP K~ + diag(e^G) dN S^T + dden z^T
//! dK~ = dP^T Q~ + diag(e^(G_L - G)) V dS'^T + 1 dz'^T
//! dG_s -= Kd_s · (V dS'^T)_s;  dG_L += sum_s Kd_s · (V dS'^T)_s + <dS', e^(G_L) S>
//! dV = A^T dN + Kd dS'
//! dS = e^(G_L) dS' + Qd^T dN;  dz = dz' + Q~^T dden      (the carry of the reverse scan)
//! dg = reverse cumulative sum of dG within the chunk
//! ```
//!
//! (tests/grad_chunked.rs checks this algorithm in f64 against the token-by-token oracle.)
//! With `mask = none` every output reads S_N: dS_N += Q~^T dN over the sequence first, then
//! dK~ = V dS_N^T + 1 dz_N^T and dV = K~ dS_N, chunk by chunk.

use super::gemm::{matmul, matmul_tri, matmul_tri_t, transpose, Tri};
use super::maps::{backprop, features};
use super::vecops::{at, dot, row, row_mut};
use super::{Config, HeadGrads, HeadInputs};
use crate::cpu::dispatch::{dispatch, Job};
use crate::cpu::isa::{CpuIsa, Isa};
use crate::cpu::tile::exp;
use crate::error::Result;
use rayon::prelude::*;

/// Scratch of one chunk.
pub(super) struct Chunk {
    /// Tokens in the chunk.
    pub(super) len: usize,
    /// Whether the update is gated (else every decay is 1).
    pub(super) gated: bool,
    /// Queries and keys after `qk_norm` (L x DK), with their l2 factors (L), and the
    /// gradient scratch of one such row (DK).
    pub(super) qx: Vec<f32>,
    pub(super) kx: Vec<f32>,
    pub(super) qinv: Vec<f32>,
    pub(super) kinv: Vec<f32>,
    pub(super) dxn: Vec<f32>,
    /// Scaled query features, key features (L x F), the keys' transpose (F x L) and an
    /// L x F scratch (`qft`).
    pub(super) qf: Vec<f32>,
    pub(super) kf: Vec<f32>,
    pub(super) qft: Vec<f32>,
    pub(super) kft: Vec<f32>,
    /// Cumulative log-decay within the chunk, e^G, e^(G_L - G) (L each).
    pub(super) gcum: Vec<f32>,
    pub(super) eg: Vec<f32>,
    pub(super) kdec: Vec<f32>,
    /// L x L tiles.
    pub(super) p: Vec<f32>,
    pub(super) a: Vec<f32>,
    pub(super) da: Vec<f32>,
    /// L x DV tiles.
    pub(super) dn: Vec<f32>,
    pub(super) qds: Vec<f32>,
    /// DV x L (V^T), L x F (products), DV x F (S^T, dS'^T).
    pub(super) vt: Vec<f32>,
    pub(super) lf: Vec<f32>,
    pub(super) lf2: Vec<f32>,
    pub(super) dfs: Vec<f32>,
    /// The normaliser's r and dden (L).
    pub(super) r: Vec<f32>,
    pub(super) dden: Vec<f32>,
    /// dG (L).
    pub(super) dgl: Vec<f32>,
}

impl Chunk {
    pub(super) fn new(cfg: &Config) -> Chunk {
        let (c, f, dv) = (cfg.chunk, cfg.f, cfg.dv);
        let z = |n: usize| vec![0.0f32; n];
        Chunk {
            len: 0,
            gated: cfg.update.gated(),
            qx: z(c * cfg.dk),
            kx: z(c * cfg.dk),
            qinv: z(c),
            kinv: z(c),
            dxn: z(cfg.dk),
            qf: z(c * f),
            kf: z(c * f),
            qft: z(c * f),
            kft: z(c * f),
            gcum: z(c),
            eg: z(c),
            kdec: z(c),
            p: z(c * c),
            a: z(c * c),
            da: z(c * c),
            dn: z(c * dv),
            qds: z(c * dv),
            vt: z(c * dv),
            lf: z(c * f),
            lf2: z(c * f),
            dfs: z(f * dv),
            r: z(c),
            dden: z(c),
            dgl: z(c),
        }
    }

    /// Features (and transposes) and gates of tokens t0..t0+len.
    #[inline(always)]
    pub(super) fn load(
        &mut self,
        cfg: &Config,
        x: &HeadInputs<'_>,
        t0: usize,
        len: usize,
        queries: bool,
    ) {
        let (dk, f) = (cfg.dk, cfg.f);
        self.len = len;
        for i in 0..len {
            let (xn, feat) = (row_mut(&mut self.kx, i, dk), row_mut(&mut self.kf, i, f));
            self.kinv[i] = features(cfg, row(x.k, t0 + i, dk), x.proj, 1.0, xn, feat);
            if queries {
                let (xn, feat) = (row_mut(&mut self.qx, i, dk), row_mut(&mut self.qf, i, f));
                self.qinv[i] = features(cfg, row(x.q, t0 + i, dk), x.proj, cfg.scale, xn, feat);
            }
        }
        transpose(&self.kf[..len * f], len, f, &mut self.kft);
        let mut g = 0.0;
        for i in 0..len {
            if cfg.update.gated() {
                g += at(x.g, t0 + i, 0.0);
            }
            self.gcum[i] = g;
        }
        for i in 0..len {
            self.eg[i] = exp(self.gcum[i]);
            self.kdec[i] = exp(g - self.gcum[i]);
        }
    }

    /// e^(G_L), the chunk's total decay.
    pub(super) fn decay(&self) -> f32 {
        self.len.checked_sub(1).map_or(1.0, |l| exp(self.gcum[l]))
    }
}

/// `xs[s] *= Γ_ts = exp(G_t - G_s)` for s < xs.len(), with `gcum` the chunk's cumulative
/// log-decay (`None` without gates: nothing to do): row t of a causal chunk's decay, as one
/// vectorisable loop.
#[inline(always)]
pub(super) fn decay_row(gcum: Option<&[f32]>, t: usize, xs: &mut [f32]) {
    let Some(gcum) = gcum else { return };
    let gt = gcum[t];
    for (x, &gs) in xs.iter_mut().zip(gcum) {
        *x *= exp(gt - gs);
    }
}

/// Keeps the first `keep` entries of row `t` of the `len x len` tile `m`, zeroing the rest.
#[inline(always)]
pub(super) fn lower_row(m: &mut [f32], t: usize, len: usize, keep: usize) -> &mut [f32] {
    let r = row_mut(m, t, len);
    let keep = keep.min(r.len());
    r[keep..].fill(0.0);
    &mut r[..keep]
}

/// S' = e^(G_L) S + Kd^T V, z' = z + sum K~ (the chunk already loaded).
#[inline(always)]
pub(super) fn advance<I: Isa>(
    isa: I,
    cfg: &Config,
    ch: &mut Chunk,
    v: &[f32],
    s: &mut [f32],
    z: &mut [f32],
) {
    let (f, dv, len) = (cfg.f, cfg.dv, ch.len);
    let total = ch.decay();
    if total != 1.0 {
        s.iter_mut().for_each(|e| *e *= total);
    }
    // Kd^T (F x L): kft scaled by column.
    let kdt = &mut ch.lf2[..f * len];
    for (dst, src) in kdt
        .chunks_exact_mut(len.max(1))
        .zip(ch.kft.chunks_exact(len.max(1)))
    {
        for ((d, &k), &w) in dst.iter_mut().zip(src).zip(&ch.kdec) {
            *d = k * w;
        }
    }
    matmul(isa, s, kdt, v, f, len, dv, true);
    if !z.is_empty() {
        for krow in ch.kf.chunks_exact(f).take(len) {
            for (zi, &k) in z.iter_mut().zip(krow) {
                *zi += k;
            }
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
    let zlen = if cfg.normalized { f } else { 0 };
    let mut ch = Chunk::new(cfg);
    let span = |ci: usize| (ci * c, ((ci + 1) * c).min(n) - ci * c);

    // 1. The forward scan: each chunk's incoming state.
    let mut starts_s = vec![0.0; nc * p];
    let mut starts_z = vec![0.0; nc * zlen];
    let mut s = x.s0.to_vec();
    let mut z = if cfg.normalized {
        x.z0.to_vec()
    } else {
        Vec::new()
    };
    z.resize(zlen, 0.0);
    for ci in 0..nc {
        row_mut(&mut starts_s, ci, p).copy_from_slice(&s);
        row_mut(&mut starts_z, ci, zlen).copy_from_slice(&z);
        let (t0, len) = span(ci);
        ch.load(cfg, x, t0, len, false);
        advance(
            isa,
            cfg,
            &mut ch,
            &x.v[t0 * dv..(t0 + len) * dv],
            &mut s,
            &mut z,
        );
    }

    let (mut ds, mut dz) = final_state_grads(cfg, x);
    if cfg.causal {
        for ci in (0..nc).rev() {
            let (t0, len) = span(ci);
            ch.load(cfg, x, t0, len, true);
            let (s0, z0) = (row(&starts_s, ci, p), row(&starts_z, ci, zlen));
            causal_chunk(isa, cfg, x, &mut ch, t0, s0, z0, &mut ds, &mut dz, out);
        }
    } else {
        // S_N, z_N are in (s, z): the outputs' terms over the whole sequence first.
        for ci in 0..nc {
            let (t0, len) = span(ci);
            ch.load(cfg, x, t0, len, true);
            full_queries(isa, cfg, x, &mut ch, t0, &s, &z, &mut ds, &mut dz, out);
        }
        for ci in 0..nc {
            let (t0, len) = span(ci);
            ch.load(cfg, x, t0, len, false);
            keys_values(isa, cfg, x, &mut ch, t0, &ds, &dz, out);
        }
    }
    out.ds0.copy_from_slice(&ds);
    if cfg.normalized {
        out.dz0.copy_from_slice(&dz);
    }
}

/// The reverse scan's starting carry: dL/dS_N and dL/dz_N (zeros where nothing consumed the final
/// state; dz empty without the normaliser).
pub(super) fn final_state_grads(cfg: &Config, x: &HeadInputs<'_>) -> (Vec<f32>, Vec<f32>) {
    let given = |g: &[f32], len: usize| {
        if g.is_empty() {
            vec![0.0; len]
        } else {
            g.to_vec()
        }
    };
    let zlen = if cfg.normalized { cfg.f } else { 0 };
    let dz = if cfg.normalized {
        given(x.d_z, zlen)
    } else {
        Vec::new()
    };
    (given(x.d_s, cfg.f * cfg.dv), dz)
}

/// dN and dden of the chunk's rows from the numerator N (in `ch.qds` on entry when normalised):
/// dN = dO r, dden = -r^2 (dO . N). Without the normaliser dN = dO.
#[inline(always)]
pub(super) fn output_terms(cfg: &Config, ch: &mut Chunk, d_o: &[f32]) {
    let (dv, len) = (cfg.dv, ch.len);
    ch.dn[..len * dv].copy_from_slice(&d_o[..len * dv]);
    if !cfg.normalized {
        ch.dden[..len].fill(0.0);
        return;
    }
    for i in 0..len {
        let r = ch.r[i];
        let num = row(&ch.qds, i, dv);
        ch.dden[i] = -r * r * dot(row(d_o, i, dv), num);
        row_mut(&mut ch.dn, i, dv).iter_mut().for_each(|e| *e *= r);
    }
}

/// The loaded chunk's forward terms that the backward reads: A = tril(P ⊙ Γ) with P = Q~ K~^T,
/// Qd = diag(e^G) Q~ (in `lf`), and, with the normaliser, r and the numerator N = A V + Qd S (in
/// `qds`); with gates and no normaliser, Qd S (in `qds`, for dG).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_terms<I: Isa>(
    isa: I,
    cfg: &Config,
    ch: &mut Chunk,
    v: &[f32],
    s0: &[f32],
    z0: &[f32],
) {
    let (f, dv, len) = (cfg.f, cfg.dv, ch.len);
    // Causal: only P's lower triangle is read.
    let dims = (len, f, len);
    matmul_tri(isa, &mut ch.p, &ch.qf, &ch.kft, dims, false, Tri::LowerOut);
    ch.a[..len * len].copy_from_slice(&ch.p[..len * len]);
    for t in 0..len {
        let arow = lower_row(&mut ch.a, t, len, t + 1);
        decay_row(ch.gated.then_some(&ch.gcum), t, arow);
    }
    scale_queries(cfg, ch);
    if cfg.update.gated() || cfg.normalized {
        matmul(isa, &mut ch.qds, &ch.lf, s0, len, f, dv, false);
    }
    if cfg.normalized {
        // den_t = q~_t . z + sum_{s<=t} P_ts + eps.
        for t in 0..len {
            let lower: f32 = ch.p[t * len..t * len + t + 1].iter().sum();
            ch.r[t] = 1.0 / (dot(row(&ch.qf, t, f), z0) + lower + cfg.sum_eps);
        }
        matmul(isa, &mut ch.qds, &ch.a, v, len, len, dv, true);
    }
}

/// Qd = diag(e^G) Q~ into `ch.lf`.
#[inline(always)]
fn scale_queries(cfg: &Config, ch: &mut Chunk) {
    let f = cfg.f;
    for (dst, (src, &w)) in ch
        .lf
        .chunks_exact_mut(f)
        .zip(ch.qf.chunks_exact(f).zip(&ch.eg))
        .take(ch.len)
    {
        for (d, &q) in dst.iter_mut().zip(src) {
            *d = q * w;
        }
    }
}

/// `dQ~ += dden z^T` (in `ch.lf2`): the normaliser's term of the queries' gradient.
#[inline(always)]
fn add_dden_z(cfg: &Config, ch: &mut Chunk, z: &[f32]) {
    if !cfg.normalized {
        return;
    }
    for t in 0..ch.len {
        let dd = ch.dden[t];
        for (d, &zi) in row_mut(&mut ch.lf2, t, cfg.f).iter_mut().zip(z) {
            *d += dd * zi;
        }
    }
}

/// `dz += Q~^T dden` over the loaded chunk (the normaliser's carry).
#[inline(always)]
fn add_dden_q(cfg: &Config, ch: &Chunk, dz: &mut [f32]) {
    if !cfg.normalized {
        return;
    }
    for t in 0..ch.len {
        let dd = ch.dden[t];
        for (zi, &q) in dz.iter_mut().zip(row(&ch.qf, t, cfg.f)) {
            *zi += dd * q;
        }
    }
}

/// Rows `t0..t0 + ch.len` of dq (`keys`: dk) from the features' gradient dQ~ (dK~) in `ch.lf2`,
/// back through the feature map and `qk_norm`.
#[inline(always)]
pub(super) fn features_backprop(
    cfg: &Config,
    x: &HeadInputs<'_>,
    ch: &mut Chunk,
    t0: usize,
    out: &mut HeadGrads<'_>,
    keys: bool,
) {
    let (xn, inv, dst, factor) = if keys {
        (&ch.kx, &ch.kinv, &mut *out.dk, 1.0)
    } else {
        (&ch.qx, &ch.qinv, &mut *out.dq, cfg.scale)
    };
    let (dk, f) = (cfg.dk, cfg.f);
    for (t, &inv) in inv.iter().enumerate().take(ch.len) {
        let dfeat = row_mut(&mut ch.lf2, t, f);
        let dx = row_mut(dst, t0 + t, dk);
        let xn = row(xn, t, dk);
        backprop(
            cfg,
            xn,
            inv,
            x.proj,
            factor,
            dfeat,
            &mut ch.dxn,
            dx,
            out.dproj,
        );
    }
}

/// One chunk of the causal reverse scan: the chunk's gradients, and the carry (ds, dz) moved from
/// its end to its start.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn causal_chunk<I: Isa>(
    isa: I,
    cfg: &Config,
    x: &HeadInputs<'_>,
    ch: &mut Chunk,
    t0: usize,
    s0: &[f32],
    z0: &[f32],
    ds: &mut [f32],
    dz: &mut [f32],
    out: &mut HeadGrads<'_>,
) {
    let (f, dv, len) = (cfg.f, cfg.dv, ch.len);
    let v = &x.v[t0 * dv..(t0 + len) * dv];
    let d_o = &x.d_o[t0 * dv..(t0 + len) * dv];
    forward_terms(isa, cfg, ch, v, s0, z0);
    output_terms(cfg, ch, d_o);
    if cfg.normalized && cfg.update.gated() {
        // dG needs dN . (Qd S): recompute Qd S (qds held N).
        matmul(isa, &mut ch.qds, &ch.lf, s0, len, f, dv, false);
    }
    score_grads(isa, cfg, ch, v);
    query_grads(isa, cfg, x, ch, t0, s0, z0, out);
    scores_values(isa, cfg, ch, &mut out.dv[t0 * dv..(t0 + len) * dv]);
    key_terms(isa, cfg, ch, v, ds, dz, true);
    state_values(
        isa,
        cfg,
        ch,
        ds,
        &mut out.dv[t0 * dv..(t0 + len) * dv],
        true,
    );
    features_backprop(cfg, x, ch, t0, out, true);
    finish_gates(cfg, ch, t0, ds, s0, out);
    carry(isa, cfg, ch, ds, dz);
}

/// dA = tril(dN V^T) and dP = dA ⊙ Γ + dden (lower, in `p`) of the loaded
/// chunk whose values are `v`; dG's score terms into `ch.dgl` (reset here):
/// rowsum(dA ⊙ A) - colsum(dA ⊙ A) + dN ⊙ (Qd S).
#[inline(always)]
pub(super) fn score_grads<I: Isa>(isa: I, cfg: &Config, ch: &mut Chunk, v: &[f32]) {
    let (dv, len) = (cfg.dv, ch.len);
    let gated = cfg.update.gated();
    transpose(v, len, dv, &mut ch.vt);
    let dims = (len, dv, len);
    matmul_tri(isa, &mut ch.da, &ch.dn, &ch.vt, dims, false, Tri::LowerOut);
    ch.dgl[..len].fill(0.0);
    let gcum = gated.then_some(&ch.gcum[..]);
    for t in 0..len {
        let darow = lower_row(&mut ch.da, t, len, t + 1);
        if gated {
            // dG_t += Σ_s (dA ⊙ A)_ts; dG_s -= (dA ⊙ A)_ts.
            let arow = row(&ch.a, t, len);
            let mut sum = 0.0;
            for ((d, &da), &a) in ch.dgl.iter_mut().zip(&*darow).zip(arow) {
                let w = da * a;
                *d -= w;
                sum += w;
            }
            ch.dgl[t] += sum + dot(row(&ch.dn, t, dv), row(&ch.qds, t, dv));
        }
        // dP = dA ⊙ Γ + dden (lower).
        let prow = lower_row(&mut ch.p, t, len, t + 1);
        prow.copy_from_slice(darow);
        decay_row(gcum, t, prow);
        let dd = ch.dden[t];
        if dd != 0.0 {
            prow.iter_mut().for_each(|e| *e += dd);
        }
    }
}

/// dQ~ = dP K~ + diag(e^G) dN S^T + dden z^T, then through the feature map into dq.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn query_grads<I: Isa>(
    isa: I,
    cfg: &Config,
    x: &HeadInputs<'_>,
    ch: &mut Chunk,
    t0: usize,
    s0: &[f32],
    z0: &[f32],
    out: &mut HeadGrads<'_>,
) {
    let (f, dv, len) = (cfg.f, cfg.dv, ch.len);
    let dims = (len, len, f);
    matmul_tri(isa, &mut ch.lf2, &ch.p, &ch.kf, dims, false, Tri::LowerA);
    transpose(s0, f, dv, &mut ch.dfs);
    // diag(e^G) dN into vt (V^T is no longer needed).
    for t in 0..len {
        let w = ch.eg[t];
        for (d, &e) in row_mut(&mut ch.vt, t, dv)
            .iter_mut()
            .zip(row(&ch.dn, t, dv))
        {
            *d = e * w;
        }
    }
    matmul(isa, &mut ch.lf2, &ch.vt, &ch.dfs, len, dv, f, true);
    add_dden_z(cfg, ch, z0);
    features_backprop(cfg, x, ch, t0, out, false);
}

/// `dv = A^T dN` (overwritten): the values' gradient through the scores.
#[inline(always)]
pub(super) fn scores_values<I: Isa>(isa: I, cfg: &Config, ch: &mut Chunk, dv: &mut [f32]) {
    let dims = (ch.len, ch.len, cfg.dv);
    matmul_tri_t(isa, dv, &ch.a, &ch.dn, dims, false, Tri::UpperA);
}

/// The gate terms of the outgoing state, <dS', e^(G_L) S>, then dg = the reverse cumulative
/// sum of dG within the chunk (gated updates only).
#[inline(always)]
pub(super) fn finish_gates(
    cfg: &Config,
    ch: &mut Chunk,
    t0: usize,
    ds: &[f32],
    s0: &[f32],
    out: &mut HeadGrads<'_>,
) {
    let len = ch.len;
    if !cfg.update.gated() || len == 0 {
        return;
    }
    ch.dgl[len - 1] += ch.decay() * dot(ds, s0);
    let mut acc = 0.0;
    for t in (0..len).rev() {
        acc += ch.dgl[t];
        if let Some(g) = out.dg.get_mut(t0 + t) {
            *g = acc;
        }
    }
}

/// The carry: dS = e^(G_L) dS' + Qd^T dN; dz = dz' + Q~^T dden.
#[inline(always)]
pub(super) fn carry<I: Isa>(isa: I, cfg: &Config, ch: &mut Chunk, ds: &mut [f32], dz: &mut [f32]) {
    let (f, dv, len) = (cfg.f, cfg.dv, ch.len);
    let total = ch.decay();
    if total != 1.0 {
        ds.iter_mut().for_each(|e| *e *= total);
    }
    let dims = (f, len, dv);
    matmul_tri_t(isa, ds, &ch.lf, &ch.dn, dims, true, Tri::Full);
    add_dden_q(cfg, ch, dz);
}

/// dK~ = dP^T Q~ (causal, `with_scores`) + diag(e^(G_L - G)) V dS'^T + 1 dz'^T for the loaded
/// chunk whose values are `v`, into `ch.lf2`; the gate terms of V dS'^T into `ch.dgl`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn key_terms<I: Isa>(
    isa: I,
    cfg: &Config,
    ch: &mut Chunk,
    v: &[f32],
    ds: &[f32],
    dz: &[f32],
    with_scores: bool,
) {
    let (f, dv, len) = (cfg.f, cfg.dv, ch.len);
    // W = V dS'^T (L x F).
    transpose(ds, f, dv, &mut ch.dfs);
    matmul(isa, &mut ch.lf2, v, &ch.dfs, len, dv, f, false);
    if cfg.update.gated() {
        let mut total = 0.0;
        for s in 0..len {
            let w = ch.kdec[s] * dot(row(&ch.kf, s, f), row(&ch.lf2, s, f));
            ch.dgl[s] -= w;
            total += w;
        }
        if len > 0 {
            ch.dgl[len - 1] += total;
        }
    }
    for s in 0..len {
        let w = ch.kdec[s];
        let dkrow = row_mut(&mut ch.lf2, s, f);
        for (d, &zi) in dkrow
            .iter_mut()
            .zip(dz.iter().chain(std::iter::repeat(&0.0)))
        {
            *d = *d * w + zi;
        }
    }
    if with_scores {
        let dims = (len, len, f);
        matmul_tri_t(isa, &mut ch.lf2, &ch.p, &ch.qf, dims, true, Tri::UpperA);
    }
}

/// `dv (+)= Kd dS'`: the values' gradient through the outgoing state.
#[inline(always)]
pub(super) fn state_values<I: Isa>(
    isa: I,
    cfg: &Config,
    ch: &mut Chunk,
    ds: &[f32],
    dv: &mut [f32],
    accumulate: bool,
) {
    let (f, len) = (cfg.f, ch.len);
    for (dst, (src, &w)) in ch
        .qft
        .chunks_exact_mut(f)
        .zip(ch.kf.chunks_exact(f).zip(&ch.kdec))
        .take(len)
    {
        for (d, &k) in dst.iter_mut().zip(src) {
            *d = k * w;
        }
    }
    matmul(isa, dv, &ch.qft, ds, len, f, cfg.dv, accumulate);
}

/// `mask = none`: dK~ and dV of the loaded chunk from dS_N (every output reads S_N, so no
/// scores), then through the feature map into dk.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn keys_values<I: Isa>(
    isa: I,
    cfg: &Config,
    x: &HeadInputs<'_>,
    ch: &mut Chunk,
    t0: usize,
    ds: &[f32],
    dz: &[f32],
    out: &mut HeadGrads<'_>,
) {
    let (dv, len) = (cfg.dv, ch.len);
    let v = &x.v[t0 * dv..(t0 + len) * dv];
    key_terms(isa, cfg, ch, v, ds, dz, false);
    state_values(
        isa,
        cfg,
        ch,
        ds,
        &mut out.dv[t0 * dv..(t0 + len) * dv],
        false,
    );
    features_backprop(cfg, x, ch, t0, out, true);
}

/// `mask = none`: the loaded chunk's outputs read (S_N, z_N): dq, and dS_N += Q~^T dN,
/// dz_N += Q~^T dden.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn full_queries<I: Isa>(
    isa: I,
    cfg: &Config,
    x: &HeadInputs<'_>,
    ch: &mut Chunk,
    t0: usize,
    s: &[f32],
    z: &[f32],
    ds: &mut [f32],
    dz: &mut [f32],
    out: &mut HeadGrads<'_>,
) {
    let (f, dv, len) = (cfg.f, cfg.dv, ch.len);
    let d_o = &x.d_o[t0 * dv..(t0 + len) * dv];
    if cfg.normalized {
        matmul(isa, &mut ch.qds, &ch.qf, s, len, f, dv, false);
        for t in 0..len {
            ch.r[t] = 1.0 / (dot(row(&ch.qf, t, f), z) + cfg.sum_eps);
        }
    }
    output_terms(cfg, ch, d_o);
    // dQ~ = dN S^T + dden z^T.
    transpose(s, f, dv, &mut ch.dfs);
    matmul(isa, &mut ch.lf2, &ch.dn, &ch.dfs, len, dv, f, false);
    add_dden_z(cfg, ch, z);
    add_dden_q(cfg, ch, dz);
    features_backprop(cfg, x, ch, t0, out, false);
    matmul_tri_t(isa, ds, &ch.qf, &ch.dn, (f, len, dv), true, Tri::Full);
}

// ---------------------------------------------------------------------------------------------
// The chunk-parallel schedule (causal), for calls with fewer (batch, head) problems than threads:
// the forward's three phases, reversed. Per run of chunks in parallel, each chunk's own state
// contribution; a scan over chunk states; per run in parallel, each chunk's carry term
// Qd^T dN (and Q~^T dden); the reverse scan over chunk states giving every chunk's dS' (and dz');
// then per run in parallel, each chunk's gradients from (S, z, dS', dz').

/// Rows `t0..t0 + len` of a head's inputs, as a head of `len` tokens.
fn sub_inputs<'a>(cfg: &Config, x: &HeadInputs<'a>, t0: usize, len: usize) -> HeadInputs<'a> {
    let (dk, dv) = (cfg.dk, cfg.dv);
    let part = |v: &'a [f32], d: usize| v.get(t0 * d..(t0 + len) * d).unwrap_or(&[]);
    HeadInputs {
        n: len,
        q: part(x.q, dk),
        k: part(x.k, dk),
        v: part(x.v, dv),
        beta: part(x.beta, 1),
        g: part(x.g, 1),
        proj: x.proj,
        s0: &[],
        z0: &[],
        d_o: part(x.d_o, dv),
        o: &[],
        d_s: &[],
        d_z: &[],
    }
}

/// What one phase computes for one chunk.
#[derive(Clone, Copy)]
enum ChunkPhase {
    /// Its own state contribution Kd^T V (and sum K~) into `s`, `z`; its decay into `decay`.
    States,
    /// Its carry term Qd^T dN into `s` (Q~^T dden into `z`), from its incoming state `s0`, `z0`.
    Carry,
    /// Its gradients, from `s0`, `z0` and the gradient of its outgoing state in `s`, `z`.
    Grads,
}

/// One chunk's slots: the state buffers a phase reads and writes.
struct Slots<'a> {
    s0: &'a [f32],
    z0: &'a [f32],
    s: &'a mut [f32],
    z: &'a mut [f32],
    decay: &'a mut f32,
}

/// A run of consecutive chunks of one head for one phase, as an ISA job.
struct ChunkRun<'a, 'b> {
    cfg: &'a Config,
    phase: ChunkPhase,
    /// The run's rows of the head's inputs.
    x: HeadInputs<'a>,
    /// The run's rows of the gradients (`Grads` only).
    out: HeadGrads<'b>,
    slots: Vec<Slots<'b>>,
}

impl Job for ChunkRun<'_, '_> {
    #[inline(always)]
    fn run<I: Isa>(mut self, isa: I) -> Result<()> {
        let (cfg, c, dv) = (self.cfg, self.cfg.chunk.max(1), self.cfg.dv);
        let mut ch = Chunk::new(cfg);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let (t0, len) = (i * c, c.min(self.x.n - i * c));
            let queries = !matches!(self.phase, ChunkPhase::States);
            ch.load(cfg, &self.x, t0, len, queries);
            match self.phase {
                ChunkPhase::States => {
                    slot.s.fill(0.0);
                    slot.z.fill(0.0);
                    let v = &self.x.v[t0 * dv..(t0 + len) * dv];
                    advance(isa, cfg, &mut ch, v, slot.s, slot.z);
                    *slot.decay = ch.decay();
                }
                ChunkPhase::Carry => carry_term(isa, cfg, &self.x, &mut ch, t0, slot),
                ChunkPhase::Grads => {
                    let (s0, z0) = (slot.s0, slot.z0);
                    causal_chunk(
                        isa,
                        cfg,
                        &self.x,
                        &mut ch,
                        t0,
                        s0,
                        z0,
                        slot.s,
                        slot.z,
                        &mut self.out,
                    );
                }
            }
        }
        Ok(())
    }
}

/// The chunk's carry term: Qd^T dN into `slot.s`, Q~^T dden into `slot.z` (the chunk loaded).
#[inline(always)]
fn carry_term<I: Isa>(
    isa: I,
    cfg: &Config,
    x: &HeadInputs<'_>,
    ch: &mut Chunk,
    t0: usize,
    slot: &mut Slots<'_>,
) {
    let (f, dv, len) = (cfg.f, cfg.dv, ch.len);
    let d_o = &x.d_o[t0 * dv..(t0 + len) * dv];
    if cfg.normalized {
        // dN and dden need r and the numerator, as in `causal_chunk`.
        let v = &x.v[t0 * dv..(t0 + len) * dv];
        forward_terms(isa, cfg, ch, v, slot.s0, slot.z0);
    } else {
        scale_queries(cfg, ch);
    }
    output_terms(cfg, ch, d_o);
    matmul_tri_t(isa, slot.s, &ch.lf, &ch.dn, (f, len, dv), false, Tri::Full);
    slot.z.fill(0.0);
    add_dden_q(cfg, ch, slot.z);
}

/// Splits `v` into `parts` slices of `len` (empty slices when `v` is empty).
fn slices_mut(v: &mut [f32], len: usize, parts: usize) -> Vec<&mut [f32]> {
    if v.is_empty() || len == 0 {
        return (0..parts).map(|_| <&mut [f32]>::default()).collect();
    }
    v.chunks_mut(len).collect()
}

/// A gradient's rows split per run (`grads`), or empty slices.
fn run_rows(v: &mut [f32], grads: bool, len: usize, runs: usize) -> Vec<&mut [f32]> {
    if grads && !v.is_empty() {
        v.chunks_mut(len.max(1)).collect()
    } else {
        (0..runs).map(|_| <&mut [f32]>::default()).collect()
    }
}

/// Runs `phase` over every chunk of the head, runs of chunks in parallel.
#[allow(clippy::too_many_arguments)]
fn phase_runs(
    isa: CpuIsa,
    cfg: &Config,
    x: &HeadInputs<'_>,
    out: &mut HeadGrads<'_>,
    phase: ChunkPhase,
    starts: (&[f32], &[f32]),
    slots: (&mut [f32], &mut [f32]),
    decays: &mut [f32],
) -> Result<Vec<f32>> {
    let (c, n, p, dk, dv) = (cfg.chunk.max(1), x.n, cfg.f * cfg.dv, cfg.dk, cfg.dv);
    let zlen = if cfg.normalized { cfg.f } else { 0 };
    let nc = n.div_ceil(c);
    let per_run = nc.div_ceil(4 * rayon::current_num_threads().max(1)).max(1);
    let grads = matches!(phase, ChunkPhase::Grads);
    let runs_n = nc.div_ceil(per_run);
    let (dq, dk_, dvv, dg) = (
        run_rows(out.dq, grads, per_run * c * dk, runs_n),
        run_rows(out.dk, grads, per_run * c * dk, runs_n),
        run_rows(out.dv, grads, per_run * c * dv, runs_n),
        run_rows(out.dg, grads, per_run * c, runs_n),
    );
    let (ss, zs) = (slices_mut(slots.0, p, nc), slices_mut(slots.1, zlen, nc));
    let mut chunk_slots: Vec<Slots<'_>> = ss
        .into_iter()
        .zip(zs)
        .zip(decays.iter_mut())
        .enumerate()
        .map(|(ci, ((s, z), decay))| Slots {
            s0: row(starts.0, ci, p),
            z0: row(starts.1, ci, zlen),
            s,
            z,
            decay,
        })
        .collect();
    let mut runs = Vec::new();
    while !chunk_slots.is_empty() {
        let rest = chunk_slots.split_off(per_run.min(chunk_slots.len()));
        runs.push(std::mem::replace(&mut chunk_slots, rest));
    }
    let proj_len = out.dproj.len();
    let dprojs: Vec<Result<Vec<f32>>> = runs
        .into_par_iter()
        .zip(dq)
        .zip(dk_)
        .zip(dvv)
        .zip(dg)
        .enumerate()
        .map(|(r, ((((slots, dq), dk), dv), dg))| {
            let t0 = r * per_run * c;
            let len = (per_run * c).min(n - t0);
            let mut dproj = vec![0.0; if grads { proj_len } else { 0 }];
            let job = ChunkRun {
                cfg,
                phase,
                x: sub_inputs(cfg, x, t0, len),
                out: HeadGrads {
                    dq,
                    dk,
                    dv,
                    dbeta: &mut [],
                    dg,
                    dproj: &mut dproj,
                    ds0: &mut [],
                    dz0: &mut [],
                },
                slots,
            };
            dispatch(isa, job)?;
            Ok(dproj)
        })
        .collect();
    let mut dproj = vec![0.0; proj_len];
    for d in dprojs {
        for (a, b) in dproj.iter_mut().zip(d?) {
            *a += b;
        }
    }
    Ok(dproj)
}

/// The chunk-parallel backward of one (batch, head) with a causal mask.
pub fn head_by_chunks(
    isa: CpuIsa,
    cfg: &Config,
    x: &HeadInputs<'_>,
    out: &mut HeadGrads<'_>,
) -> Result<()> {
    let (c, n, p) = (cfg.chunk.max(1), x.n, cfg.f * cfg.dv);
    let zlen = if cfg.normalized { cfg.f } else { 0 };
    let nc = n.div_ceil(c);
    let (mut slot_s, mut slot_z) = (vec![0.0; nc * p], vec![0.0; nc * zlen]);
    let (mut starts_s, mut starts_z) = (vec![0.0; nc * p], vec![0.0; nc * zlen]);
    let mut decays = vec![1.0; nc];
    // Each chunk's contribution, then the scan: starts[c] is chunk c's incoming state.
    let none = (&[][..], &[][..]);
    phase_runs(
        isa,
        cfg,
        x,
        out,
        ChunkPhase::States,
        none,
        (&mut slot_s, &mut slot_z),
        &mut decays,
    )?;
    let mut s = x.s0.to_vec();
    let mut z = if cfg.normalized {
        x.z0.to_vec()
    } else {
        Vec::new()
    };
    z.resize(zlen, 0.0);
    for (ci, &d) in decays.iter().enumerate() {
        row_mut(&mut starts_s, ci, p).copy_from_slice(&s);
        row_mut(&mut starts_z, ci, zlen).copy_from_slice(&z);
        for (e, &a) in s.iter_mut().zip(row(&slot_s, ci, p)) {
            *e = d * *e + a;
        }
        for (e, &a) in z.iter_mut().zip(row(&slot_z, ci, zlen)) {
            *e += a;
        }
    }
    // Each chunk's carry term, then the reverse scan: slot[c] becomes dS' of chunk c.
    let starts = (&starts_s[..], &starts_z[..]);
    phase_runs(
        isa,
        cfg,
        x,
        out,
        ChunkPhase::Carry,
        starts,
        (&mut slot_s, &mut slot_z),
        &mut decays,
    )?;
    let (mut ds, mut dz) = final_state_grads(cfg, x);
    for ci in (0..nc).rev() {
        let (term_s, term_z) = (row_mut(&mut slot_s, ci, p), row_mut(&mut slot_z, ci, zlen));
        let d = decays[ci];
        for (e, t) in ds.iter_mut().zip(term_s.iter_mut()) {
            let incoming = d * *e + *t;
            *t = *e;
            *e = incoming;
        }
        for (e, t) in dz.iter_mut().zip(term_z.iter_mut()) {
            let incoming = *e + *t;
            *t = *e;
            *e = incoming;
        }
    }
    let dproj = phase_runs(
        isa,
        cfg,
        x,
        out,
        ChunkPhase::Grads,
        starts,
        (&mut slot_s, &mut slot_z),
        &mut decays,
    )?;
    for (a, b) in out.dproj.iter_mut().zip(dproj) {
        *a += b;
    }
    out.ds0.copy_from_slice(&ds);
    if cfg.normalized {
        out.dz0.copy_from_slice(&dz);
    }
    Ok(())
}
