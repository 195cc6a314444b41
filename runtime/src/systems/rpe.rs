//! `rpe = toeplitz`: kernelized attention with relative positional encoding (Luo et al. 2021,
//! "Stable, fast and accurate"): `o_t = sum_s exp(b_{s-t}) (q~_t . k~_s) v_s`, divided by the same
//! sum without `v` under `normalize = sum`; `b[h, (s - t) + N - 1]`, causal specs use the
//! offsets `s - t <= 0`.
//!
//! Per head, the Toeplitz matrix `T_ts = exp(b_{s-t})` is applied to each of the F x DV
//! sequences `k~_f v_j` by FFT convolution (length L >= 2N, a power of two), and
//! `o_j = sum_f q~_f (T (k~_f v_j))`: O(F DV N log N), never an N x N matrix. Two real sequences
//! ride in one complex FFT (the kernel is real), and the FFTs are in f64: a causal normaliser
//! divides by sums that grow from one term to N, which f32 FFT rounding (relative to the
//! largest value) would swamp for the first tokens.

use rustfft::num_complex::Complex64;
use rustfft::{Fft, FftPlanner};
use std::sync::Arc;

/// The FFT plans and the kernel's spectrum for one head.
pub struct Toeplitz {
    /// Tokens.
    pub n: usize,
    /// FFT length.
    len: usize,
    fwd: Arc<dyn Fft<f64>>,
    inv: Arc<dyn Fft<f64>>,
    /// FFT of `h_d = exp(b[n - 1 - d])` at index `d mod L`, d = t - s.
    spectrum: Vec<Complex64>,
    /// `exp(b)`, the weights by offset index (2n - 1).
    pub weights: Vec<f64>,
}

/// The FFT plans of one call (shared by the heads).
pub struct Plans {
    len: usize,
    fwd: Arc<dyn Fft<f64>>,
    inv: Arc<dyn Fft<f64>>,
}

impl Plans {
    /// Plans for sequences of `n` tokens.
    pub fn new(n: usize) -> Plans {
        let len = (2 * n).next_power_of_two();
        let mut planner = FftPlanner::<f64>::new();
        Plans {
            len,
            fwd: planner.plan_fft_forward(len),
            inv: planner.plan_fft_inverse(len),
        }
    }
}

impl Toeplitz {
    /// The operator of one head's log-weights `b` (2n - 1 values).
    pub fn new(plans: &Plans, n: usize, b: &[f32], causal: bool) -> Toeplitz {
        let len = plans.len;
        let weights: Vec<f64> = b.iter().map(|&x| f64::from(x).exp()).collect();
        let mut h = vec![Complex64::new(0.0, 0.0); len];
        for (r, &a) in weights.iter().enumerate() {
            // r = (s - t) + n - 1, so d = t - s = n - 1 - r.
            let d = n as isize - 1 - r as isize;
            if causal && d < 0 {
                continue;
            }
            h[d.rem_euclid(len as isize) as usize] = Complex64::new(a, 0.0);
        }
        plans.fwd.process(&mut h);
        Toeplitz {
            n,
            len,
            fwd: plans.fwd.clone(),
            inv: plans.inv.clone(),
            spectrum: h,
            weights,
        }
    }

    /// `(T x1, T x2)` for two real sequences (or `T^T` with `transpose`), through `buf`.
    fn apply_pair(&self, buf: &mut [Complex64], transpose: bool) {
        self.fwd.process(buf);
        for (x, h) in buf.iter_mut().zip(&self.spectrum) {
            *x *= if transpose { h.conj() } else { *h };
        }
        self.inv.process(buf);
        let norm = 1.0 / self.len as f64;
        buf.iter_mut().for_each(|x| *x *= norm);
    }
}

/// Columns of a head's mapped inputs (F or da sequences of N values).
pub type Cols<'a> = &'a [Vec<f64>];

/// Fills `buf` with `a_t * (b1_t + i b2_t)` for t < n, zeros after.
fn load_pair(buf: &mut [Complex64], a: &[f64], b1: &[f64], b2: Option<&[f64]>) {
    buf.iter_mut().for_each(|x| *x = Complex64::new(0.0, 0.0));
    for t in 0..a.len() {
        let im = b2.map_or(0.0, |b| a[t] * b[t]);
        buf[t] = Complex64::new(a[t] * b1[t], im);
    }
}

/// Columns of a row-major (n x cols) f32 matrix as f64 vectors.
pub fn columns(m: &[f32], cols: usize) -> Vec<Vec<f64>> {
    let n = m.len() / cols.max(1);
    (0..cols)
        .map(|c| (0..n).map(|t| f64::from(m[t * cols + c])).collect())
        .collect()
}

/// The forward of one head over the features `fs`: adds `sum_f q~_f ∘ T (k~_f ∘ v_j)` to `oa`
/// (n x da) for every column j. `qc`, `kc` are the columns of q~ (scaled), k~; `vc` those of
/// the augmented v.
pub fn forward_features(
    op: &Toeplitz,
    (qc, kc, vc): (Cols<'_>, Cols<'_>, Cols<'_>),
    fs: std::ops::Range<usize>,
    oa: &mut [f64],
) {
    let (n, da) = (op.n, vc.len());
    let mut buf = vec![Complex64::new(0.0, 0.0); op.len];
    for (qf, kf) in qc[fs.clone()].iter().zip(&kc[fs]) {
        for j in (0..da).step_by(2) {
            let second = vc.get(j + 1).map(Vec::as_slice);
            load_pair(&mut buf, kf, &vc[j], second);
            op.apply_pair(&mut buf, false);
            for t in 0..n {
                oa[t * da + j] += qf[t] * buf[t].re;
                if second.is_some() {
                    oa[t * da + j + 1] += qf[t] * buf[t].im;
                }
            }
        }
    }
}

/// One head's gradients: of q~, k~ (n x F), the augmented v (n x da) and the log-weights b
/// (2n - 1), from the augmented outputs' gradient `doc` (its columns).
pub struct HeadGrads {
    /// dL/dq~.
    pub dq: Vec<f64>,
    /// dL/dk~.
    pub dk: Vec<f64>,
    /// dL/dv (augmented).
    pub dv: Vec<f64>,
    /// dL/db.
    pub db: Vec<f64>,
}

/// Partial sums of one head's backward over a range of features (see [`backward_features`]).
pub struct Partial {
    /// dL/dq~, dL/dk~ (n x F; only the range's columns written).
    pub dq: Vec<f64>,
    /// See `dq`.
    pub dk: Vec<f64>,
    /// dL/dv (augmented, n x da), summed over the range.
    pub dv: Vec<f64>,
    /// The db correlation's spectrum, summed over the range.
    pub corr: Vec<Complex64>,
}

impl Partial {
    /// Zeros for one head.
    pub fn zeros(op: &Toeplitz, f: usize, da: usize) -> Partial {
        Partial {
            dq: vec![0.0; op.n * f],
            dk: vec![0.0; op.n * f],
            dv: vec![0.0; op.n * da],
            corr: vec![Complex64::new(0.0, 0.0); op.len],
        }
    }

    /// The sum of two partials.
    pub fn sum(mut self, o: Partial) -> Partial {
        for (a, b) in [
            (&mut self.dq, &o.dq),
            (&mut self.dk, &o.dk),
            (&mut self.dv, &o.dv),
        ] {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
        self.corr.iter_mut().zip(&o.corr).for_each(|(a, b)| *a += b);
        self
    }
}

/// The backward of one head over the features `fs`. With `u = q~_f ∘ dO_j` and
/// `x = k~_f ∘ v_j`: `dq~_f += dO_j ∘ T x`, `dk~_f += v_j ∘ T^T u`, `dv_j += k~_f ∘ T^T u`, and
/// the spectrum of `sum_{f,j} sum_t u_t x_{t+r}` (the db correlation), transformed back once
/// by [`finish`].
pub fn backward_features(
    op: &Toeplitz,
    (qc, kc, vc): (Cols<'_>, Cols<'_>, Cols<'_>),
    doc: &[Vec<f64>],
    fs: std::ops::Range<usize>,
    mut g: Partial,
) -> Partial {
    let (n, f, da, len) = (op.n, qc.len(), vc.len(), op.len);
    let zero = Complex64::new(0.0, 0.0);
    let (mut xb, mut ub) = (vec![zero; len], vec![zero; len]);
    let corr = &mut g.corr;
    for fi in fs {
        let (qf, kf) = (&qc[fi], &kc[fi]);
        for j in (0..da).step_by(2) {
            let (v2, d2) = (
                vc.get(j + 1).map(Vec::as_slice),
                doc.get(j + 1).map(Vec::as_slice),
            );
            load_pair(&mut xb, kf, &vc[j], v2);
            load_pair(&mut ub, qf, &doc[j], d2);
            op.fwd.process(&mut xb);
            op.fwd.process(&mut ub);
            // Re(sum_t conj(u_t) x_{t+r}) = c(u1, x1) + c(u2, x2): the db correlation.
            for ((c, x), u) in corr.iter_mut().zip(&xb).zip(&ub) {
                *c += u.conj() * x;
            }
            for ((x, u), h) in xb.iter_mut().zip(ub.iter_mut()).zip(&op.spectrum) {
                *x *= h;
                *u *= h.conj();
            }
            op.inv.process(&mut xb);
            op.inv.process(&mut ub);
            let norm = 1.0 / len as f64;
            for t in 0..n {
                let (y, r) = (xb[t] * norm, ub[t] * norm);
                g.dq[t * f + fi] += doc[j][t] * y.re + d2.map_or(0.0, |d| d[t] * y.im);
                g.dk[t * f + fi] += vc[j][t] * r.re + v2.map_or(0.0, |v| v[t] * r.im);
                g.dv[t * da + j] += kf[t] * r.re;
                if v2.is_some() {
                    g.dv[t * da + j + 1] += kf[t] * r.im;
                }
            }
        }
    }
    let _ = da;
    g
}

/// One head's gradients from the sum of its partials: `db_r = exp(b_r) c_r`.
pub fn finish(op: &Toeplitz, mut p: Partial, causal: bool) -> HeadGrads {
    let (n, len) = (op.n, op.len);
    op.inv.process(&mut p.corr);
    let norm = 1.0 / len as f64;
    let mut g = HeadGrads {
        dq: p.dq,
        dk: p.dk,
        dv: p.dv,
        db: vec![0.0; 2 * n - 1],
    };
    for (ri, db) in g.db.iter_mut().enumerate() {
        // r = s - t = ri - (n - 1).
        let r = ri as isize - (n as isize - 1);
        if causal && r > 0 {
            continue;
        }
        let c = p.corr[r.rem_euclid(len as isize) as usize].re * norm;
        *db = op.weights[ri] * c;
    }
    g
}
