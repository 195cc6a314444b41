//! `update = momentum(mu = ..)` (Momentum Transformer, Nguyen et al. 2022): the additive update
//! as a gradient step with heavy-ball momentum,
//! `m_t = mu m_{t-1} + k~_t v_t^T`, `S_t = S_{t-1} + m_t`, `o_t = S_t^T q~_t`.
//!
//! Chunkwise: unrolled, `S_t = S_0 + w_t m_0 + sum_{s<=t} c_{t-s} k~_s v_s^T` with
//! `c_j = 1 + mu + .. + mu^j` and `w_t = mu + .. + mu^t`. Within a chunk the scores `Q K^T` are
//! weighted by the fixed lower-triangular Toeplitz matrix `c_{t-s}`; across chunks the state is
//! the pair `(S, m)`. The normaliser rides along as the last column of `v` (ones), `S` (`z`)
//! and `m` (`n`), so one set of products computes both (see `features::augment`).
//!
//! The backward runs the chunks in reverse with the adjoints `(dS, dm)`, recomputing each
//! chunk's scores from the chunk-start states saved by a forward pass.

use crate::cpu::grad::gemm::{matmul, matmul_tri, matmul_tri_t, transpose, Tri};
use crate::cpu::isa::Isa;

/// The per-offset weights of one chunk length, in f64 then rounded once.
pub struct Weights {
    /// `c_j = sum_{i<=j} mu^i`, j = 0..=C.
    c: Vec<f32>,
    /// `mu^j`, j = 0..=C.
    p: Vec<f32>,
    /// `w_t = sum_{1<=i<=t+1} mu^i`, t = 0..C (the weight of the carried m at local row t).
    w: Vec<f32>,
}

impl Weights {
    /// The weights of chunk length `chunk` for coefficient `mu`.
    pub fn new(mu: f32, chunk: usize) -> Weights {
        let mu = f64::from(mu);
        let (mut c, mut p, mut w) = (Vec::new(), Vec::new(), Vec::new());
        let (mut cj, mut pj, mut wt) = (1.0f64, 1.0f64, 0.0f64);
        for _ in 0..=chunk {
            c.push(cj as f32);
            p.push(pj as f32);
            wt = mu * (1.0 + wt);
            w.push(wt as f32);
            cj = 1.0 + mu * cj;
            pj *= mu;
        }
        Weights { c, p, w }
    }
}

/// Sizes of one head's problem: tokens, features, augmented value columns, chunk.
#[derive(Clone, Copy)]
pub struct Dims {
    /// Tokens.
    pub n: usize,
    /// F.
    pub f: usize,
    /// DV (+ 1 with the normaliser).
    pub da: usize,
    /// Chunk length.
    pub chunk: usize,
}

/// Scratch of one chunk.
struct Scratch {
    kt: Vec<f32>,
    a: Vec<f32>,
    t: Vec<f32>,
    kw: Vec<f32>,
}

impl Scratch {
    fn new(d: Dims) -> Scratch {
        let c = d.chunk;
        Scratch {
            kt: vec![0.0; d.f * c],
            a: vec![0.0; c * c],
            t: vec![0.0; c * d.da],
            kw: vec![0.0; d.f * c],
        }
    }
}

/// `A = (Q K^T) ∘ c_{t-s}` (lower triangle, zero above) for a chunk of `r` rows; `kt` = K^T.
#[inline(always)]
fn scores<I: Isa>(isa: I, d: Dims, wt: &Weights, q: &[f32], s: &mut Scratch, r: usize) {
    matmul_tri(
        isa,
        &mut s.a[..r * r],
        q,
        &s.kt[..d.f * r],
        (r, d.f, r),
        false,
        Tri::LowerOut,
    );
    for t in 0..r {
        let row = &mut s.a[t * r..(t + 1) * r];
        for (j, x) in row.iter_mut().enumerate() {
            *x = if j <= t { *x * wt.c[t - j] } else { 0.0 };
        }
    }
}

/// `kw = K^T` with column `s` scaled by `coef[r - 1 - s]`.
#[inline(always)]
fn weighted_kt(kt: &[f32], f: usize, r: usize, coef: &[f32], kw: &mut [f32]) {
    for i in 0..f {
        for j in 0..r {
            kw[i * r + j] = kt[i * r + j] * coef[r - 1 - j];
        }
    }
}

/// One chunk's state update: `S += w_{r-1} M + K^T diag(c_{r-1-s}) V`,
/// `M = mu^r M + K^T diag(mu^{r-1-s}) V`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update_state<I: Isa>(
    isa: I,
    d: Dims,
    wt: &Weights,
    v: &[f32],
    r: usize,
    sc: &mut Scratch,
    s: &mut [f32],
    m: &mut [f32],
) {
    let wl = wt.w[r - 1];
    s.iter_mut().zip(m.iter()).for_each(|(s, m)| *s += wl * m);
    weighted_kt(&sc.kt, d.f, r, &wt.c, &mut sc.kw);
    matmul(isa, s, &sc.kw[..d.f * r], v, d.f, r, d.da, true);
    let pr = wt.p[r];
    m.iter_mut().for_each(|m| *m *= pr);
    weighted_kt(&sc.kt, d.f, r, &wt.p, &mut sc.kw);
    matmul(isa, m, &sc.kw[..d.f * r], v, d.f, r, d.da, true);
}

/// The forward of one head: `q`, `k` feature-mapped (n x F, q scaled), `v` augmented
/// (n x da); `s`, `m` (F x da) hold the initial state and receive the final one; `out`
/// (n x da) the augmented outputs. `chunk_states`, when not empty, receives `(S, M)` at the
/// start of every chunk (2 F da floats each), for the backward.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn forward_head<I: Isa>(
    isa: I,
    d: Dims,
    wt: &Weights,
    (q, k, v): (&[f32], &[f32], &[f32]),
    s: &mut [f32],
    m: &mut [f32],
    out: &mut [f32],
    chunk_states: &mut [f32],
) {
    let (f, da, c) = (d.f, d.da, d.chunk);
    let mut sc = Scratch::new(d);
    let state = f * da;
    for (ci, c0) in (0..d.n).step_by(c).enumerate() {
        let r = c.min(d.n - c0);
        if let Some(slot) = chunk_states.get_mut(2 * ci * state..2 * (ci + 1) * state) {
            slot[..state].copy_from_slice(s);
            slot[state..].copy_from_slice(m);
        }
        let (qc, kc, vc) = (
            &q[c0 * f..(c0 + r) * f],
            &k[c0 * f..(c0 + r) * f],
            &v[c0 * da..(c0 + r) * da],
        );
        transpose(kc, r, f, &mut sc.kt[..f * r]);
        scores(isa, d, wt, qc, &mut sc, r);
        let oc = &mut out[c0 * da..(c0 + r) * da];
        matmul_tri(isa, oc, &sc.a[..r * r], vc, (r, r, da), false, Tri::LowerA);
        matmul(isa, oc, qc, s, r, f, da, true);
        matmul(isa, &mut sc.t[..r * da], qc, m, r, f, da, false);
        for t in 0..r {
            let wtt = wt.w[t];
            let (o, x) = (&mut oc[t * da..(t + 1) * da], &sc.t[t * da..(t + 1) * da]);
            o.iter_mut().zip(x).for_each(|(o, x)| *o += wtt * x);
        }
        update_state(isa, d, wt, vc, r, &mut sc, s, m);
    }
}

/// Gradients of one head, written (not accumulated): `dq`, `dk` (n x F), `dv` (n x da); `ds`,
/// `dm` (F x da) hold dL/dS_N, dL/dm_N on entry and dL/dS_0, dL/dm_0 on exit.
pub struct HeadGrads<'a> {
    /// dL/dq~.
    pub dq: &'a mut [f32],
    /// dL/dk~.
    pub dk: &'a mut [f32],
    /// dL/dv (augmented).
    pub dv: &'a mut [f32],
    /// dL/dS.
    pub ds: &'a mut [f32],
    /// dL/dm.
    pub dm: &'a mut [f32],
}

/// The backward of one head, from the chunk-start states of [`forward_head`] and dL/d(out)
/// (`d_o`, n x da, augmented).
#[inline(always)]
pub fn backward_head<I: Isa>(
    isa: I,
    d: Dims,
    wt: &Weights,
    (q, k, v): (&[f32], &[f32], &[f32]),
    chunk_states: &[f32],
    d_o: &[f32],
    g: HeadGrads<'_>,
) {
    let (f, da, c) = (d.f, d.da, d.chunk);
    let state = f * da;
    let mut sc = Scratch::new(d);
    let (mut st, mut dp, mut vt) = (vec![0.0; da * f], vec![0.0; c * c], vec![0.0; da * c]);
    let mut dwq = vec![0.0; c * da];
    let chunks: Vec<usize> = (0..d.n).step_by(c).collect();
    for (ci, &c0) in chunks.iter().enumerate().rev() {
        let r = c.min(d.n - c0);
        let Some(states) = chunk_states.get(2 * ci * state..2 * (ci + 1) * state) else {
            return;
        };
        let (sp, mp) = states.split_at(state);
        let (qc, kc) = (&q[c0 * f..(c0 + r) * f], &k[c0 * f..(c0 + r) * f]);
        let (vc, doc) = (&v[c0 * da..(c0 + r) * da], &d_o[c0 * da..(c0 + r) * da]);
        transpose(kc, r, f, &mut sc.kt[..f * r]);
        scores(isa, d, wt, qc, &mut sc, r);
        // dP = (dO V^T) ∘ c_{t-s}
        transpose(vc, r, da, &mut vt[..da * r]);
        matmul_tri(
            isa,
            &mut dp[..r * r],
            doc,
            &vt[..da * r],
            (r, da, r),
            false,
            Tri::LowerOut,
        );
        for t in 0..r {
            for j in 0..r {
                let x = &mut dp[t * r + j];
                *x = if j <= t { *x * wt.c[t - j] } else { 0.0 };
            }
        }
        // dQ = dP K + dO S_p^T + diag(w) dO M_p^T
        let dq = &mut g.dq[c0 * f..(c0 + r) * f];
        matmul_tri(isa, dq, &dp[..r * r], kc, (r, r, f), false, Tri::LowerA);
        transpose(sp, f, da, &mut st);
        matmul(isa, dq, doc, &st, r, da, f, true);
        for t in 0..r {
            let (x, y) = (&mut dwq[t * da..(t + 1) * da], &doc[t * da..(t + 1) * da]);
            x.iter_mut().zip(y).for_each(|(x, y)| *x = wt.w[t] * y);
        }
        transpose(mp, f, da, &mut st);
        matmul(isa, dq, &dwq[..r * da], &st, r, da, f, true);
        // dK = dP^T Q + diag(c_end) V dS^T + diag(p_end) V dM^T
        let dk = &mut g.dk[c0 * f..(c0 + r) * f];
        matmul_tri_t(isa, dk, &dp[..r * r], qc, (r, r, f), false, Tri::UpperA);
        // dV = A^T dO + diag(c_end) K dS + diag(p_end) K dM
        let dvc = &mut g.dv[c0 * da..(c0 + r) * da];
        matmul_tri_t(
            isa,
            dvc,
            &sc.a[..r * r],
            doc,
            (r, r, da),
            false,
            Tri::UpperA,
        );
        state_terms(
            isa,
            d,
            wt,
            r,
            (kc, vc),
            (&*g.ds, &*g.dm),
            (dk, dvc),
            &mut sc,
            &mut st,
        );
        // Adjoints of the chunk-start state.
        let wl = wt.w[r - 1];
        let pr = wt.p[r];
        g.dm.iter_mut()
            .zip(g.ds.iter())
            .for_each(|(m, s)| *m = pr * *m + wl * s);
        matmul_tri_t(isa, g.dm, qc, &dwq[..r * da], (f, r, da), true, Tri::Full);
        matmul_tri_t(isa, g.ds, qc, doc, (f, r, da), true, Tri::Full);
    }
}

/// The terms of dK and dV through the chunk's contribution to the end-of-chunk state:
/// `dK += diag(c_end) V dS^T + diag(p_end) V dM^T`, `dV += diag(c_end) K dS + diag(p_end) K dM`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn state_terms<I: Isa>(
    isa: I,
    d: Dims,
    wt: &Weights,
    r: usize,
    (kc, vc): (&[f32], &[f32]),
    (ds, dm): (&[f32], &[f32]),
    (dk, dv): (&mut [f32], &mut [f32]),
    sc: &mut Scratch,
    st: &mut [f32],
) {
    let (f, da) = (d.f, d.da);
    for (adj, coef) in [(ds, &wt.c), (dm, &wt.p)] {
        // Rows of V and K scaled by coef[r - 1 - s].
        let vw = &mut sc.t[..r * da];
        for s in 0..r {
            let x = coef[r - 1 - s];
            for j in 0..da {
                vw[s * da + j] = vc[s * da + j] * x;
            }
        }
        transpose(adj, f, da, st);
        matmul(isa, dk, vw, st, r, da, f, true);
        let kw = &mut sc.kw[..r * f];
        for s in 0..r {
            let x = coef[r - 1 - s];
            for i in 0..f {
                kw[s * f + i] = kc[s * f + i] * x;
            }
        }
        matmul(isa, dv, kw, adj, r, f, da, true);
    }
}

/// One token of the recurrence on one head: `m = mu m + k v^T`, `S += m`, `out = S^T q`
/// (augmented: `v`, `out` have da values; `s`, `m` are F x da).
pub fn step_head(
    mu: f32,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &mut [f32],
    m: &mut [f32],
    out: &mut [f32],
) {
    let da = v.len();
    out.fill(0.0);
    for (i, (&ki, &qi)) in k.iter().zip(q).enumerate() {
        let (sr, mr) = (&mut s[i * da..(i + 1) * da], &mut m[i * da..(i + 1) * da]);
        for j in 0..da {
            let mj = mu * mr[j] + ki * v[j];
            mr[j] = mj;
            sr[j] += mj;
            out[j] += qi * sr[j];
        }
    }
}
