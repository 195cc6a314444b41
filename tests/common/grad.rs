//! The gradient oracle: the exact reverse-mode derivative of the recurrence in the README's Meaning (the forward
//! oracle of `tests/common/mod.rs`), in f64, token by token, written as plainly as possible. Every
//! state is stored (O(N F DV) memory per head), then the recurrence is walked backwards.
//!
//! The loss whose gradient this is: L = <o, dO> + <S_N, dS> + <z_N, dz> (the last only with
//! `normalize = sum`; there is no state with `feature_map = softmax`). [`Grads`] holds dL/d(input)
//! for every input: q, k, v, beta, g, proj, and the initial state s0, z0.
//!
//! Conventions at kinks (PyTorch's): relu'(0) = 0, elu+1'(0) = e^0 = 1 (the x <= 0 branch),
//! |x|'(0) = 0, max/min split the gradient evenly on ties (the README's Training section). Closures are
//! differentiated exactly, with dual numbers over their [`Expr`] in f64.
//!
//! The forward here ([`forward64`]) is f64 throughout, inputs included ([`Inputs64`]), so that
//! finite differences of [`loss64`] are exact perturbations; `reference` in mod.rs rounds the
//! l2-normalised rows and elementwise feature maps to f32, so the two agree to about 1e-7
//! relative (tests/grad_oracle.rs checks it).
//!
//! Include it in a test crate root that also declares `mod common;`:
//! `mod common; #[path = "common/grad.rs"] mod grad;` (it reads `crate::common::{Inputs, Rng}`).
#![allow(dead_code)]

use attnc::spec::{
    BinOp, BinaryFn, CmpOp, Cond, Expr, FeatureMap, Mask, Normalize, QkNorm, Spec, UnaryFn, Update,
};

/// The eps of `qk_norm = l2`: x / sqrt(|x|^2 + L2_EPS) (as mod.rs's `l2`).
pub const L2_EPS: f64 = 1e-6;
/// The eps of `normalize = sum`: o / (q~ . z + SUM_EPS).
pub const SUM_EPS: f64 = 1e-6;

/// [`crate::common::Inputs`] in f64 (same shapes, heads first): q, k (B, H, N, DK); v (B, H, N,
/// DV); beta, g (B, H, N); proj (F, DK) for favor, else empty.
#[derive(Clone, Debug)]
pub struct Inputs64 {
    pub b: usize,
    pub h: usize,
    pub n: usize,
    pub dk: usize,
    pub dv: usize,
    pub q: Vec<f64>,
    pub k: Vec<f64>,
    pub v: Vec<f64>,
    pub beta: Vec<f64>,
    pub g: Vec<f64>,
    pub proj: Vec<f64>,
}

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

impl From<&crate::common::Inputs> for Inputs64 {
    fn from(x: &crate::common::Inputs) -> Inputs64 {
        Inputs64 {
            b: x.b,
            h: x.h,
            n: x.n,
            dk: x.dk,
            dv: x.dv,
            q: to64(&x.q),
            k: to64(&x.k),
            v: to64(&x.v),
            beta: to64(&x.beta),
            g: to64(&x.g),
            proj: to64(&x.proj),
        }
    }
}

/// The cotangents of the outputs: d_o (B, H, N, DV); d_s (B, H, F, DV), the final state's (empty
/// means zero; must be empty for softmax); d_z (B, H, F), the final normaliser's (empty means
/// zero; must be empty unless `normalize = sum`).
#[derive(Clone, Debug)]
pub struct Cotangents {
    pub d_o: Vec<f64>,
    pub d_s: Vec<f64>,
    pub d_z: Vec<f64>,
}

impl Cotangents {
    /// Standard normal cotangents for every output `spec` has (d_s unless softmax, d_z with
    /// `normalize = sum`).
    pub fn random(spec: &Spec, b: usize, h: usize, n: usize, dv: usize, seed: u64) -> Cotangents {
        let mut rng = crate::common::Rng::new(seed);
        let f = spec.feature_dim();
        let d_o = to64(&rng.normals(b * h * n * dv));
        let d_s = if is_softmax(spec) {
            Vec::new()
        } else {
            to64(&rng.normals(b * h * f * dv))
        };
        let d_z = if has_z(spec) {
            to64(&rng.normals(b * h * f))
        } else {
            Vec::new()
        };
        Cotangents { d_o, d_s, d_z }
    }
}

/// dL/d(input), each shaped as its input; empty where the spec has no such input (beta without a
/// delta update, g without a gate, proj without favor, s0 with softmax, z0 unless
/// `normalize = sum`). s0 (B, H, F, DV) and z0 (B, H, F) are the initial state's gradients
/// (returned also when the initial state was None, i.e. zero).
#[derive(Clone, Debug, Default)]
pub struct Grads {
    pub q: Vec<f64>,
    pub k: Vec<f64>,
    pub v: Vec<f64>,
    pub beta: Vec<f64>,
    pub g: Vec<f64>,
    pub proj: Vec<f64>,
    pub s0: Vec<f64>,
    pub z0: Vec<f64>,
}

impl Grads {
    /// (name, gradient) of every non-empty gradient.
    pub fn named(&self) -> Vec<(&'static str, &[f64])> {
        [
            ("q", &self.q[..]),
            ("k", &self.k[..]),
            ("v", &self.v[..]),
            ("beta", &self.beta[..]),
            ("g", &self.g[..]),
            ("proj", &self.proj[..]),
            ("s0", &self.s0[..]),
            ("z0", &self.z0[..]),
        ]
        .into_iter()
        .filter(|(_, g)| !g.is_empty())
        .collect()
    }
}

/// The forward's outputs in f64: o (B, H, N, DV); s (B, H, F, DV) and z (B, H, F) the final state
/// (empty with softmax; z is the running key sum whatever `normalize` is, as in mod.rs).
#[derive(Clone, Debug)]
pub struct Forward64 {
    pub o: Vec<f64>,
    pub s: Vec<f64>,
    pub z: Vec<f64>,
}

fn is_softmax(spec: &Spec) -> bool {
    spec.feature_map == FeatureMap::Softmax
}

fn has_z(spec: &Spec) -> bool {
    !is_softmax(spec) && spec.normalize == Normalize::Sum
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ---------------------------------------------------------------------------------------------
// qk_norm.

fn l2n(x: &[f64]) -> Vec<f64> {
    let r = (dot(x, x) + L2_EPS).sqrt();
    x.iter().map(|v| v / r).collect()
}

/// dx of y = x / sqrt(|x|^2 + eps): (dy - y (y . dy)) / r.
fn l2n_vjp(x: &[f64], dy: &[f64]) -> Vec<f64> {
    let r = (dot(x, x) + L2_EPS).sqrt();
    let y: Vec<f64> = x.iter().map(|v| v / r).collect();
    let ydy = dot(&y, dy);
    dy.iter()
        .zip(&y)
        .map(|(d, yi)| (d - yi * ydy) / r)
        .collect()
}

fn qk_normed(spec: &Spec, x: &[f64]) -> Vec<f64> {
    match spec.qk_norm {
        QkNorm::L2 => l2n(x),
        QkNorm::None => x.to_vec(),
    }
}

fn qk_norm_vjp(spec: &Spec, x: &[f64], dy: &[f64]) -> Vec<f64> {
    match spec.qk_norm {
        QkNorm::L2 => l2n_vjp(x, dy),
        QkNorm::None => dy.to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Closures: an f64 dual-number evaluation of the expression tree (value, d/dx).

fn expr_dual(e: &Expr, x: f64) -> (f64, f64) {
    #[allow(unreachable_patterns)]
    match e {
        Expr::Var => (x, 1.0),
        Expr::Lit(v) => (*v as f64, 0.0),
        Expr::Neg(a) => {
            let (a, da) = expr_dual(a, x);
            (-a, -da)
        }
        Expr::Binary(op, a, b) => {
            let ((a, da), (b, db)) = (expr_dual(a, x), expr_dual(b, x));
            match op {
                BinOp::Add => (a + b, da + db),
                BinOp::Sub => (a - b, da - db),
                BinOp::Mul => (a * b, da * b + a * db),
                BinOp::Div => (a / b, (da * b - a * db) / (b * b)),
            }
        }
        Expr::Unary(f, a) => {
            let (a, da) = expr_dual(a, x);
            match f {
                UnaryFn::Exp => (a.exp(), a.exp() * da),
                UnaryFn::Ln => (a.ln(), da / a),
                UnaryFn::Sqrt => (a.sqrt(), da / (2.0 * a.sqrt())),
                UnaryFn::Abs => {
                    let s = if a > 0.0 {
                        1.0
                    } else if a < 0.0 {
                        -1.0
                    } else {
                        0.0
                    };
                    (a.abs(), s * da)
                }
                UnaryFn::Tanh => {
                    let t = a.tanh();
                    (t, (1.0 - t * t) * da)
                }
            }
        }
        Expr::Binary2(f, a, b) => {
            let ((a, da), (b, db)) = (expr_dual(a, x), expr_dual(b, x));
            match f {
                // At a tie the gradient splits evenly (PyTorch's maximum/minimum).
                BinaryFn::Max | BinaryFn::Min if a == b => (a, 0.5 * (da + db)),
                BinaryFn::Max => {
                    if a > b || b.is_nan() {
                        (a, da)
                    } else {
                        (b, db)
                    }
                }
                BinaryFn::Min => {
                    if a < b || b.is_nan() {
                        (a, da)
                    } else {
                        (b, db)
                    }
                }
                BinaryFn::Powf => {
                    let p = a.powf(b);
                    let mut d = if da != 0.0 {
                        b * a.powf(b - 1.0) * da
                    } else {
                        0.0
                    };
                    if db != 0.0 {
                        d += p * a.ln() * db;
                    }
                    (p, d)
                }
            }
        }
        Expr::Powi(a, n) => {
            let (a, da) = expr_dual(a, x);
            let d = if *n == 0 {
                0.0
            } else {
                *n as f64 * a.powi(n - 1) * da
            };
            (a.powi(*n), d)
        }
        Expr::If {
            cond,
            then,
            otherwise,
        } => {
            if cond_eval(cond, x) {
                expr_dual(then, x)
            } else {
                expr_dual(otherwise, x)
            }
        }
        // A variant added after this oracle: f32 evaluation, central difference.
        other => {
            let h = 1e-3f64;
            let f = |v: f64| other.eval(v as f32) as f64;
            (f(x), (f(x + h) - f(x - h)) / (2.0 * h))
        }
    }
}

fn cond_eval(c: &Cond, x: f64) -> bool {
    let (a, b) = (expr_dual(&c.lhs, x).0, expr_dual(&c.rhs, x).0);
    match c.op {
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
    }
}

// ---------------------------------------------------------------------------------------------
// Feature maps: phi and its vector-Jacobian product (dx, and d proj for favor).

/// (phi(x), phi'(x)) of an elementwise map, None for the others.
fn elementwise(fm: &FeatureMap, x: f64) -> Option<(f64, f64)> {
    Some(match fm {
        FeatureMap::Identity => (x, 1.0),
        FeatureMap::EluPlusOne => {
            if x > 0.0 {
                (x + 1.0, 1.0)
            } else {
                (x.exp(), x.exp())
            }
        }
        FeatureMap::Relu => {
            if x > 0.0 {
                (x, 1.0)
            } else {
                (0.0, 0.0)
            }
        }
        FeatureMap::SquaredRelu => {
            let r = x.max(0.0);
            (r * r, 2.0 * r)
        }
        FeatureMap::Sigmoid => {
            let s = 1.0 / (1.0 + (-x).exp());
            (s, s * (1.0 - s))
        }
        FeatureMap::Closure(c) => expr_dual(&c.body, x),
        _ => return None,
    })
}

/// phi of one (normalised) row; `proj` (F x DK) is read only by favor.
pub fn phi64(spec: &Spec, x: &[f64], proj: &[f64]) -> Vec<f64> {
    let fm = &spec.feature_map;
    if elementwise(fm, 0.0).is_some() {
        return x.iter().map(|&v| elementwise(fm, v).unwrap().0).collect();
    }
    match fm {
        FeatureMap::Taylor2 => {
            let d = x.len() as f64;
            let (c1, c2, c3) = taylor2_consts(d);
            let mut out = vec![1.0];
            out.extend(x.iter().map(|v| v * c1));
            out.extend(x.iter().map(|v| v * v * c2));
            for i in 0..x.len() {
                for j in i + 1..x.len() {
                    out.push(x[i] * x[j] * c3);
                }
            }
            out
        }
        FeatureMap::Dpfp { nu } => {
            let r = dpfp_r(x);
            let n = r.len();
            let mut out = Vec::with_capacity(n * nu);
            for j in 1..=*nu {
                for i in 0..n {
                    out.push(r[i] * r[(i + n - j % n) % n]);
                }
            }
            out
        }
        FeatureMap::Favor { features: m } => {
            let d = x.len();
            assert_eq!(proj.len(), m * d, "favor needs its projection (F x DK)");
            let xs: Vec<f64> = x.iter().map(|v| v / (d as f64).powf(0.25)).collect();
            let half_sq = dot(&xs, &xs) / 2.0;
            (0..*m)
                .map(|i| (dot(&proj[i * d..(i + 1) * d], &xs) - half_sq).exp() / (*m as f64).sqrt())
                .collect()
        }
        other => panic!("the gradient oracle does not know feature map {other} yet"),
    }
}

/// taylor2's factors: x_i / d^(1/4), x_i^2 / (sqrt(d) sqrt(2)), x_i x_j / sqrt(d).
fn taylor2_consts(d: f64) -> (f64, f64, f64) {
    (
        1.0 / d.powf(0.25),
        1.0 / (d.sqrt() * 2f64.sqrt()),
        1.0 / d.sqrt(),
    )
}

/// dpfp's [relu(x), relu(-x)].
fn dpfp_r(x: &[f64]) -> Vec<f64> {
    x.iter()
        .map(|&v| v.max(0.0))
        .chain(x.iter().map(|&v| (-v).max(0.0)))
        .collect()
}

/// Adds J_phi(x)^T dout to dx (and, for favor, d proj to `dproj`).
fn phi64_vjp(
    spec: &Spec,
    x: &[f64],
    proj: &[f64],
    dout: &[f64],
    dx: &mut [f64],
    dproj: &mut [f64],
) {
    let fm = &spec.feature_map;
    if elementwise(fm, 0.0).is_some() {
        for i in 0..x.len() {
            dx[i] += dout[i] * elementwise(fm, x[i]).unwrap().1;
        }
        return;
    }
    match fm {
        FeatureMap::Taylor2 => {
            let d = x.len();
            let (c1, c2, c3) = taylor2_consts(d as f64);
            for i in 0..d {
                dx[i] += dout[1 + i] * c1 + dout[1 + d + i] * 2.0 * x[i] * c2;
            }
            let mut p = 1 + 2 * d;
            for i in 0..d {
                for j in i + 1..d {
                    dx[i] += dout[p] * x[j] * c3;
                    dx[j] += dout[p] * x[i] * c3;
                    p += 1;
                }
            }
        }
        FeatureMap::Dpfp { nu } => {
            let d = x.len();
            let r = dpfp_r(x);
            let n = r.len();
            let mut dr = vec![0.0; n];
            for j in 1..=*nu {
                for i in 0..n {
                    let i2 = (i + n - j % n) % n;
                    let g = dout[(j - 1) * n + i];
                    dr[i] += g * r[i2];
                    dr[i2] += g * r[i];
                }
            }
            for i in 0..d {
                if x[i] > 0.0 {
                    dx[i] += dr[i];
                }
                if -x[i] > 0.0 {
                    dx[i] -= dr[d + i];
                }
            }
        }
        FeatureMap::Favor { features: m } => {
            let d = x.len();
            let c = 1.0 / (d as f64).powf(0.25);
            let xs: Vec<f64> = x.iter().map(|v| v * c).collect();
            let half_sq = dot(&xs, &xs) / 2.0;
            let mut dxs = vec![0.0; d];
            for i in 0..*m {
                let w = &proj[i * d..(i + 1) * d];
                let out = (dot(w, &xs) - half_sq).exp() / (*m as f64).sqrt();
                let gi = dout[i] * out;
                for a in 0..d {
                    dxs[a] += gi * (w[a] - xs[a]);
                    dproj[i * d + a] += gi * xs[a];
                }
            }
            for a in 0..d {
                dx[a] += dxs[a] * c;
            }
        }
        other => panic!("the gradient oracle does not know feature map {other} yet"),
    }
}

// ---------------------------------------------------------------------------------------------
// One head: the forward with its tape, and the backward.

/// Everything the backward reads, for one (batch, head).
struct Tape {
    /// Raw rows (f64) of q, k, v.
    q: Vec<Vec<f64>>,
    k: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    /// After qk_norm.
    qn: Vec<Vec<f64>>,
    kn: Vec<Vec<f64>>,
    /// scale * phi(qn), phi(kn) (linear); unused by softmax.
    qf: Vec<Vec<f64>>,
    kf: Vec<Vec<f64>>,
    /// States S_{-1} .. S_{N-1} (F x DV, row-major) and z_{-1} .. z_{N-1}: N + 1 each.
    s: Vec<Vec<f64>>,
    z: Vec<Vec<f64>>,
    /// exp(g_t) (1 without a gate), beta_t (1 without delta).
    decay: Vec<f64>,
    beta: Vec<f64>,
    /// The outputs o_t.
    o: Vec<Vec<f64>>,
}

fn rows(src: &[f64], bh: usize, n: usize, d: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|t| src[(bh * n + t) * d..(bh * n + t + 1) * d].to_vec())
        .collect()
}

/// o = S^T q / (q . z + eps) (no division without `normalize = sum`).
fn output(spec: &Spec, q: &[f64], s: &[f64], z: &[f64], dv: usize) -> Vec<f64> {
    let den = if spec.normalize == Normalize::Sum {
        dot(q, z) + SUM_EPS
    } else {
        1.0
    };
    (0..dv)
        .map(|j| {
            q.iter()
                .enumerate()
                .map(|(i, qi)| qi * s[i * dv + j])
                .sum::<f64>()
                / den
        })
        .collect()
}

/// Adds the output's contributions to dq, ds, dz.
#[allow(clippy::too_many_arguments)]
fn output_vjp(
    spec: &Spec,
    q: &[f64],
    s: &[f64],
    z: &[f64],
    d_o: &[f64],
    dq: &mut [f64],
    ds: &mut [f64],
    dz: &mut [f64],
) {
    let (f, dv) = (q.len(), d_o.len());
    let num: Vec<f64> = (0..dv)
        .map(|j| (0..f).map(|i| q[i] * s[i * dv + j]).sum())
        .collect();
    let den = if spec.normalize == Normalize::Sum {
        dot(q, z) + SUM_EPS
    } else {
        1.0
    };
    for i in 0..f {
        for j in 0..dv {
            let dnum = d_o[j] / den;
            ds[i * dv + j] += q[i] * dnum;
            dq[i] += s[i * dv + j] * dnum;
        }
    }
    if spec.normalize == Normalize::Sum {
        let dden = -dot(d_o, &num) / (den * den);
        for i in 0..f {
            dq[i] += dden * z[i];
            dz[i] += dden * q[i];
        }
    }
}

fn forward_head(
    spec: &Spec,
    x: &Inputs64,
    bh: usize,
    s0: Option<&[f64]>,
    z0: Option<&[f64]>,
) -> Tape {
    let (n, dk, dv) = (x.n, x.dk, x.dv);
    let f = spec.feature_dim();
    let scale = spec.scale_value() as f64;
    let q = rows(&x.q, bh, n, dk);
    let k = rows(&x.k, bh, n, dk);
    let v = rows(&x.v, bh, n, dv);
    let qn: Vec<Vec<f64>> = q.iter().map(|r| qk_normed(spec, r)).collect();
    let kn: Vec<Vec<f64>> = k.iter().map(|r| qk_normed(spec, r)).collect();
    let decay: Vec<f64> = (0..n)
        .map(|t| {
            if spec.has_gate() {
                x.g[bh * n + t].exp()
            } else {
                1.0
            }
        })
        .collect();
    let beta: Vec<f64> = (0..n)
        .map(|t| {
            if spec.has_beta() {
                x.beta[bh * n + t]
            } else {
                1.0
            }
        })
        .collect();
    let mut tape = Tape {
        q,
        k,
        v,
        qn,
        kn,
        qf: Vec::new(),
        kf: Vec::new(),
        s: Vec::new(),
        z: Vec::new(),
        decay,
        beta,
        o: Vec::new(),
    };
    if is_softmax(spec) {
        assert!(
            s0.is_none() && z0.is_none(),
            "softmax attention has no state"
        );
        for t in 0..n {
            let last = if spec.mask == Mask::Causal { t } else { n - 1 };
            let p = softmax_row(&tape, t, last, scale);
            let mut o = vec![0.0; dv];
            for (s, ps) in p.iter().enumerate() {
                for (oj, vj) in o.iter_mut().zip(&tape.v[s]) {
                    *oj += ps * vj;
                }
            }
            tape.o.push(o);
        }
        return tape;
    }
    tape.qf = tape
        .qn
        .iter()
        .map(|r| phi64(spec, r, &x.proj).iter().map(|v| v * scale).collect())
        .collect();
    tape.kf = tape.kn.iter().map(|r| phi64(spec, r, &x.proj)).collect();
    let mut s = match s0 {
        Some(s0) => s0[bh * f * dv..(bh + 1) * f * dv].to_vec(),
        None => vec![0.0; f * dv],
    };
    let mut z = match z0 {
        Some(z0) => z0[bh * f..(bh + 1) * f].to_vec(),
        None => vec![0.0; f],
    };
    tape.s.push(s.clone());
    tape.z.push(z.clone());
    for t in 0..n {
        let (kt, vt, a, beta) = (&tape.kf[t], &tape.v[t], tape.decay[t], tape.beta[t]);
        match spec.update {
            Update::Additive | Update::Gated => {
                for i in 0..f {
                    for j in 0..dv {
                        s[i * dv + j] = a * s[i * dv + j] + kt[i] * vt[j];
                    }
                }
            }
            Update::Delta | Update::GatedDelta => {
                for e in s.iter_mut() {
                    *e *= a;
                }
                let u: Vec<f64> = (0..dv)
                    .map(|j| beta * (vt[j] - (0..f).map(|i| s[i * dv + j] * kt[i]).sum::<f64>()))
                    .collect();
                for i in 0..f {
                    for j in 0..dv {
                        s[i * dv + j] += kt[i] * u[j];
                    }
                }
            }
        }
        for i in 0..f {
            z[i] += kt[i];
        }
        tape.s.push(s.clone());
        tape.z.push(z.clone());
    }
    for t in 0..n {
        let at = if spec.mask == Mask::Causal { t + 1 } else { n };
        let o = output(spec, &tape.qf[t], &tape.s[at], &tape.z[at], dv);
        tape.o.push(o);
    }
    tape
}

/// softmax_s(scale qn_t . kn_s) over s in 0..=last.
fn softmax_row(tape: &Tape, t: usize, last: usize, scale: f64) -> Vec<f64> {
    let logits: Vec<f64> = (0..=last)
        .map(|s| scale * dot(&tape.qn[t], &tape.kn[s]))
        .collect();
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|w| w / total).collect()
}

/// The gradients of one head, written into `out` at this head's offsets.
fn backward_head(
    spec: &Spec,
    x: &Inputs64,
    bh: usize,
    tape: &Tape,
    ct: &Cotangents,
    out: &mut Grads,
) {
    let (n, dk, dv) = (x.n, x.dk, x.dv);
    let f = spec.feature_dim();
    let scale = spec.scale_value() as f64;
    let d_o = rows(&ct.d_o, bh, n, dv);
    let mut dqn = vec![vec![0.0; dk]; n];
    let mut dkn = vec![vec![0.0; dk]; n];
    let mut dvv = vec![vec![0.0; dv]; n];
    if is_softmax(spec) {
        assert!(
            ct.d_s.is_empty() && ct.d_z.is_empty(),
            "softmax has no state"
        );
        for t in 0..n {
            let last = if spec.mask == Mask::Causal { t } else { n - 1 };
            let p = softmax_row(tape, t, last, scale);
            let dp: Vec<f64> = (0..=last).map(|s| dot(&d_o[t], &tape.v[s])).collect();
            let mean = dot(&p, &dp);
            for s in 0..=last {
                for j in 0..dv {
                    dvv[s][j] += p[s] * d_o[t][j];
                }
                let dl = p[s] * (dp[s] - mean) * scale;
                for a in 0..dk {
                    dqn[t][a] += dl * tape.kn[s][a];
                    dkn[s][a] += dl * tape.qn[t][a];
                }
            }
        }
    } else {
        let mut ds = if ct.d_s.is_empty() {
            vec![0.0; f * dv]
        } else {
            ct.d_s[bh * f * dv..(bh + 1) * f * dv].to_vec()
        };
        let mut dz = if ct.d_z.is_empty() {
            vec![0.0; f]
        } else {
            assert!(has_z(spec), "d_z is only meaningful with normalize = sum");
            ct.d_z[bh * f..(bh + 1) * f].to_vec()
        };
        let mut dqf = vec![vec![0.0; f]; n];
        let mut dkf = vec![vec![0.0; f]; n];
        if spec.mask == Mask::None {
            for t in 0..n {
                output_vjp(
                    spec,
                    &tape.qf[t],
                    &tape.s[n],
                    &tape.z[n],
                    &d_o[t],
                    &mut dqf[t],
                    &mut ds,
                    &mut dz,
                );
            }
        }
        for t in (0..n).rev() {
            // Here ds, dz = dL/dS_t, dL/dz_t through everything after token t.
            if spec.mask == Mask::Causal {
                output_vjp(
                    spec,
                    &tape.qf[t],
                    &tape.s[t + 1],
                    &tape.z[t + 1],
                    &d_o[t],
                    &mut dqf[t],
                    &mut ds,
                    &mut dz,
                );
            }
            // z_t = z_{t-1} + k~_t.
            for i in 0..f {
                dkf[t][i] += dz[i];
            }
            let (kt, vt, a, beta) = (&tape.kf[t], &tape.v[t], tape.decay[t], tape.beta[t]);
            let sp = &tape.s[t];
            match spec.update {
                Update::Additive | Update::Gated => {
                    // S_t = a S_{t-1} + k~ v^T.
                    let mut da = 0.0;
                    for i in 0..f {
                        for j in 0..dv {
                            let d = ds[i * dv + j];
                            dkf[t][i] += d * vt[j];
                            dvv[t][j] += d * kt[i];
                            da += d * sp[i * dv + j];
                            ds[i * dv + j] = a * d;
                        }
                    }
                    if spec.has_gate() {
                        out.g[bh * n + t] = da * a;
                    }
                }
                Update::Delta | Update::GatedDelta => {
                    // P = a S_{t-1}; u = beta (v - P^T k~); S_t = P + k~ u^T.
                    let p: Vec<f64> = sp.iter().map(|e| a * e).collect();
                    let pred: Vec<f64> = (0..dv)
                        .map(|j| (0..f).map(|i| p[i * dv + j] * kt[i]).sum())
                        .collect();
                    let u: Vec<f64> = (0..dv).map(|j| beta * (vt[j] - pred[j])).collect();
                    let du: Vec<f64> = (0..dv)
                        .map(|j| (0..f).map(|i| ds[i * dv + j] * kt[i]).sum())
                        .collect();
                    for i in 0..f {
                        dkf[t][i] += (0..dv).map(|j| ds[i * dv + j] * u[j]).sum::<f64>();
                    }
                    let mut dp = ds.clone();
                    if spec.has_beta() {
                        out.beta[bh * n + t] =
                            (0..dv).map(|j| du[j] * (vt[j] - pred[j])).sum::<f64>();
                    }
                    let dpred: Vec<f64> = du.iter().map(|d| -beta * d).collect();
                    for j in 0..dv {
                        dvv[t][j] += beta * du[j];
                    }
                    for i in 0..f {
                        for j in 0..dv {
                            dp[i * dv + j] += kt[i] * dpred[j];
                            dkf[t][i] += p[i * dv + j] * dpred[j];
                        }
                    }
                    if spec.has_gate() {
                        out.g[bh * n + t] = a * dot(&dp, sp);
                    }
                    for (d, e) in ds.iter_mut().zip(&dp) {
                        *d = a * e;
                    }
                }
            }
        }
        out.s0[bh * f * dv..(bh + 1) * f * dv].copy_from_slice(&ds);
        if has_z(spec) {
            out.z0[bh * f..(bh + 1) * f].copy_from_slice(&dz);
        }
        // Through the feature map (q~ = scale phi(qn), k~ = phi(kn)).
        for t in 0..n {
            let dphi_q: Vec<f64> = dqf[t].iter().map(|d| d * scale).collect();
            phi64_vjp(
                spec,
                &tape.qn[t],
                &x.proj,
                &dphi_q,
                &mut dqn[t],
                &mut out.proj,
            );
            phi64_vjp(
                spec,
                &tape.kn[t],
                &x.proj,
                &dkf[t],
                &mut dkn[t],
                &mut out.proj,
            );
        }
    }
    // Through qk_norm.
    for t in 0..n {
        let dq = qk_norm_vjp(spec, &tape.q[t], &dqn[t]);
        let dk_ = qk_norm_vjp(spec, &tape.k[t], &dkn[t]);
        out.q[(bh * n + t) * dk..(bh * n + t + 1) * dk].copy_from_slice(&dq);
        out.k[(bh * n + t) * dk..(bh * n + t + 1) * dk].copy_from_slice(&dk_);
        out.v[(bh * n + t) * dv..(bh * n + t + 1) * dv].copy_from_slice(&dvv[t]);
    }
}

// ---------------------------------------------------------------------------------------------
// The API.

/// The README's recurrence (Meaning) in f64 (softmax included), from state (s0, z0) (zeros when None; both
/// must be None for softmax).
pub fn forward64(spec: &Spec, x: &Inputs64, s0: Option<&[f64]>, z0: Option<&[f64]>) -> Forward64 {
    let (bhs, n, dv) = (x.b * x.h, x.n, x.dv);
    let f = spec.feature_dim();
    let softmax = is_softmax(spec);
    let mut out = Forward64 {
        o: vec![0.0; bhs * n * dv],
        s: if softmax {
            Vec::new()
        } else {
            vec![0.0; bhs * f * dv]
        },
        z: if softmax {
            Vec::new()
        } else {
            vec![0.0; bhs * f]
        },
    };
    for bh in 0..bhs {
        let tape = forward_head(spec, x, bh, s0, z0);
        for t in 0..n {
            out.o[(bh * n + t) * dv..(bh * n + t + 1) * dv].copy_from_slice(&tape.o[t]);
        }
        if !softmax {
            out.s[bh * f * dv..(bh + 1) * f * dv].copy_from_slice(&tape.s[n]);
            out.z[bh * f..(bh + 1) * f].copy_from_slice(&tape.z[n]);
        }
    }
    out
}

/// L = <o, dO> + <S_N, dS> + <z_N, dz> (empty cotangents count as zero), in f64.
pub fn loss64(
    spec: &Spec,
    x: &Inputs64,
    s0: Option<&[f64]>,
    z0: Option<&[f64]>,
    ct: &Cotangents,
) -> f64 {
    let fw = forward64(spec, x, s0, z0);
    let mut l = dot(&fw.o, &ct.d_o);
    if !ct.d_s.is_empty() {
        l += dot(&fw.s, &ct.d_s);
    }
    if !ct.d_z.is_empty() {
        assert!(has_z(spec), "d_z is only meaningful with normalize = sum");
        l += dot(&fw.z, &ct.d_z);
    }
    l
}

/// dL/d(input) for L of [`loss64`].
pub fn backward64(
    spec: &Spec,
    x: &Inputs64,
    s0: Option<&[f64]>,
    z0: Option<&[f64]>,
    ct: &Cotangents,
) -> Grads {
    let (bhs, n, dk, dv) = (x.b * x.h, x.n, x.dk, x.dv);
    let f = spec.feature_dim();
    assert_eq!(ct.d_o.len(), bhs * n * dv, "d_o is (B, H, N, DV)");
    assert!(
        ct.d_s.is_empty() || ct.d_s.len() == bhs * f * dv,
        "d_s is (B, H, F, DV)"
    );
    assert!(
        ct.d_z.is_empty() || ct.d_z.len() == bhs * f,
        "d_z is (B, H, F)"
    );
    let softmax = is_softmax(spec);
    let mut g = Grads {
        q: vec![0.0; bhs * n * dk],
        k: vec![0.0; bhs * n * dk],
        v: vec![0.0; bhs * n * dv],
        beta: if spec.has_beta() && !softmax {
            vec![0.0; bhs * n]
        } else {
            Vec::new()
        },
        g: if spec.has_gate() && !softmax {
            vec![0.0; bhs * n]
        } else {
            Vec::new()
        },
        proj: if matches!(spec.feature_map, FeatureMap::Favor { .. }) {
            vec![0.0; x.proj.len()]
        } else {
            Vec::new()
        },
        s0: if softmax {
            Vec::new()
        } else {
            vec![0.0; bhs * f * dv]
        },
        z0: if has_z(spec) {
            vec![0.0; bhs * f]
        } else {
            Vec::new()
        },
    };
    for bh in 0..bhs {
        let tape = forward_head(spec, x, bh, s0, z0);
        backward_head(spec, x, bh, &tape, ct, &mut g);
    }
    g
}

/// [`loss64`] from the f32 inputs of mod.rs.
pub fn loss(
    spec: &Spec,
    x: &crate::common::Inputs,
    s0: Option<&[f32]>,
    z0: Option<&[f32]>,
    ct: &Cotangents,
) -> f64 {
    let (s0, z0) = (s0.map(to64), z0.map(to64));
    loss64(spec, &x.into(), s0.as_deref(), z0.as_deref(), ct)
}

/// [`backward64`] from the f32 inputs of mod.rs.
pub fn backward(
    spec: &Spec,
    x: &crate::common::Inputs,
    s0: Option<&[f32]>,
    z0: Option<&[f32]>,
    ct: &Cotangents,
) -> Grads {
    let (s0, z0) = (s0.map(to64), z0.map(to64));
    backward64(spec, &x.into(), s0.as_deref(), z0.as_deref(), ct)
}

/// max |got - want| / max |want| (max |got - want| when want is all zero).
pub fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
    if got.iter().chain(want).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    if scale == 0.0 {
        diff
    } else {
        diff / scale
    }
}
