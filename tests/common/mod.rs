//! The oracle: the recurrence of the README's Meaning, token by token, in f64, written as plainly as possible.
#![allow(dead_code)]

use attnc::spec::{FeatureMap, Mask, Normalize, QkNorm, Spec, Update};

/// Heads-first inputs of one problem: q, k (B, H, N, DK); v (B, H, N, DV); beta, g (B, H, N);
/// proj, FAVOR+'s projection (F, DK), empty for other feature maps (see [`Inputs::for_spec`]).
#[derive(Clone, Debug)]
pub struct Inputs {
    pub b: usize,
    pub h: usize,
    pub n: usize,
    pub dk: usize,
    pub dv: usize,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub beta: Vec<f32>,
    pub g: Vec<f32>,
    pub proj: Vec<f32>,
}

/// A small deterministic generator (xorshift), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.normal()).collect()
    }
}

impl Inputs {
    /// Random inputs: q, k, v standard normal, beta in (0, 1), g = log(sigmoid) in about (-3, 0).
    pub fn random(b: usize, h: usize, n: usize, dk: usize, dv: usize, seed: u64) -> Inputs {
        let mut rng = Rng::new(seed);
        let q = rng.normals(b * h * n * dk);
        let k = rng.normals(b * h * n * dk);
        let v = rng.normals(b * h * n * dv);
        let beta = (0..b * h * n)
            .map(|_| 0.05 + 0.95 * rng.uniform())
            .collect();
        let g = (0..b * h * n)
            .map(|_| {
                let x = 2.0 * rng.normal() + 2.0;
                -(1.0 + (-x).exp()).ln()
            })
            .collect();
        Inputs {
            b,
            h,
            n,
            dk,
            dv,
            q,
            k,
            v,
            beta,
            g,
            proj: Vec::new(),
        }
    }

    /// For `feature_map = favor`: adds a projection sampled with attnc's helper from `seed`
    /// (keep the seed fixed per spec: a state is only meaningful with the projection it was
    /// built with). Other specs are left as they are.
    pub fn for_spec(mut self, spec: &Spec, seed: u64) -> Inputs {
        if let FeatureMap::Favor { features } = spec.feature_map {
            self.proj = attnc::favor::orthogonal_gaussian_vec(features, self.dk, seed);
        }
        self
    }
}

/// The reference's result, heads first.
#[derive(Clone, Debug)]
pub struct Reference {
    pub o: Vec<f64>,
    pub s: Vec<f64>,
    pub z: Vec<f64>,
}

/// phi of one row; `proj` is FAVOR+'s projection (F x DK), read only by favor.
fn phi(spec: &Spec, x: &[f32], proj: &[f32]) -> Vec<f64> {
    match &spec.feature_map {
        FeatureMap::Identity
        | FeatureMap::EluPlusOne
        | FeatureMap::Relu
        | FeatureMap::SquaredRelu
        | FeatureMap::Sigmoid
        | FeatureMap::Closure(_) => x
            .iter()
            .map(|&v| spec.feature_map.eval_elementwise(v).unwrap() as f64)
            .collect(),
        FeatureMap::Taylor2 => {
            let d = x.len() as f64;
            let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let mut out = vec![1.0];
            out.extend(x.iter().map(|v| v / d.powf(0.25)));
            out.extend(x.iter().map(|v| v * v / (d.sqrt() * 2f64.sqrt())));
            for i in 0..x.len() {
                for j in i + 1..x.len() {
                    out.push(x[i] * x[j] / d.sqrt());
                }
            }
            out
        }
        FeatureMap::Dpfp { nu } => {
            let r: Vec<f64> = x
                .iter()
                .map(|&v| (v as f64).max(0.0))
                .chain(x.iter().map(|&v| (-v as f64).max(0.0)))
                .collect();
            let n = r.len();
            let mut out = Vec::with_capacity(n * nu);
            for j in 1..=*nu {
                for i in 0..n {
                    out.push(r[i] * r[(i + n - j % n) % n]);
                }
            }
            out
        }
        // FAVOR+ with the stabiliser c = 0: exp(w_i . x' - |x'|^2 / 2) / sqrt(m).
        FeatureMap::Favor { features: m } => {
            let d = x.len();
            assert_eq!(
                proj.len(),
                m * d,
                "favor needs its projection: build the inputs with Inputs::for_spec"
            );
            let xs: Vec<f64> = x
                .iter()
                .map(|&v| v as f64 / (d as f64).powf(0.25))
                .collect();
            let half_sq = xs.iter().map(|v| v * v).sum::<f64>() / 2.0;
            (0..*m)
                .map(|i| {
                    let w = &proj[i * d..(i + 1) * d];
                    let dot: f64 = w.iter().zip(&xs).map(|(w, x)| *w as f64 * x).sum();
                    (dot - half_sq).exp() / (*m as f64).sqrt()
                })
                .collect()
        }
        other => panic!("the reference does not know {other} yet"),
    }
}

/// phi of one row after `qk_norm` (unscaled), for the systems' oracles.
pub fn phi_row(spec: &Spec, x: &[f32], proj: &[f32]) -> Vec<f64> {
    let row = if spec.qk_norm == QkNorm::L2 {
        l2(x)
    } else {
        x.to_vec()
    };
    phi(spec, &row, proj)
}

fn l2(x: &[f32]) -> Vec<f32> {
    let n: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let inv = 1.0 / (n + 1e-6).sqrt();
    x.iter().map(|&v| (v as f64 * inv) as f32).collect()
}

/// Runs the README's recurrence token by token from state (s0, z0) (zeros when None).
pub fn reference(spec: &Spec, x: &Inputs, s0: Option<&[f32]>, z0: Option<&[f32]>) -> Reference {
    let (b, h, n, dk, dv) = (x.b, x.h, x.n, x.dk, x.dv);
    let f = spec.feature_dim();
    let scale = spec.scale_value() as f64;
    let mut o = vec![0.0f64; b * h * n * dv];
    let mut s_all = vec![0.0f64; b * h * f * dv];
    let mut z_all = vec![0.0f64; b * h * f];
    for bh in 0..b * h {
        let mut s: Vec<f64> = match s0 {
            Some(s0) => s0[bh * f * dv..(bh + 1) * f * dv]
                .iter()
                .map(|&v| v as f64)
                .collect(),
            None => vec![0.0; f * dv],
        };
        let mut z: Vec<f64> = match z0 {
            Some(z0) => z0[bh * f..(bh + 1) * f].iter().map(|&v| v as f64).collect(),
            None => vec![0.0; f],
        };
        let feat = |src: &[f32], t: usize| {
            let row = &src[(bh * n + t) * dk..(bh * n + t + 1) * dk];
            let row = if spec.qk_norm == QkNorm::L2 {
                l2(row)
            } else {
                row.to_vec()
            };
            phi(spec, &row, &x.proj)
        };
        let mut qs = Vec::with_capacity(n);
        for t in 0..n {
            let kt = feat(&x.k, t);
            let vt: Vec<f64> = x.v[(bh * n + t) * dv..(bh * n + t + 1) * dv]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let g = if spec.has_gate() {
                x.g[bh * n + t] as f64
            } else {
                0.0
            };
            let beta = if spec.has_beta() {
                x.beta[bh * n + t] as f64
            } else {
                1.0
            };
            let decay = g.exp();
            match spec.update {
                Update::Additive | Update::Gated => {
                    for i in 0..f {
                        for j in 0..dv {
                            s[i * dv + j] = decay * s[i * dv + j] + kt[i] * vt[j];
                        }
                    }
                }
                Update::Delta | Update::GatedDelta => {
                    for v in s.iter_mut() {
                        *v *= decay;
                    }
                    let mut u = vec![0.0; dv];
                    for j in 0..dv {
                        let pred: f64 = (0..f).map(|i| s[i * dv + j] * kt[i]).sum();
                        u[j] = beta * (vt[j] - pred);
                    }
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
            let qt: Vec<f64> = feat(&x.q, t).iter().map(|v| v * scale).collect();
            if spec.mask == Mask::Causal {
                write_output(
                    spec,
                    &qt,
                    &s,
                    &z,
                    &mut o[(bh * n + t) * dv..(bh * n + t + 1) * dv],
                );
            } else {
                qs.push(qt);
            }
        }
        for (t, qt) in qs.iter().enumerate() {
            write_output(
                spec,
                qt,
                &s,
                &z,
                &mut o[(bh * n + t) * dv..(bh * n + t + 1) * dv],
            );
        }
        s_all[bh * f * dv..(bh + 1) * f * dv].copy_from_slice(&s);
        z_all[bh * f..(bh + 1) * f].copy_from_slice(&z);
    }
    Reference {
        o,
        s: s_all,
        z: z_all,
    }
}

fn write_output(spec: &Spec, q: &[f64], s: &[f64], z: &[f64], out: &mut [f64]) {
    let dv = out.len();
    let den = if spec.normalize == Normalize::Sum {
        q.iter().zip(z).map(|(a, b)| a * b).sum::<f64>() + 1e-6
    } else {
        1.0
    };
    for (j, o) in out.iter_mut().enumerate() {
        let num: f64 = q.iter().enumerate().map(|(i, qi)| qi * s[i * dv + j]).sum();
        *o = num / den;
    }
}

/// o_t = sum_{s in window(t)} softmax_s(scale q_t . k_s) v_s, computed directly.
pub fn quadratic_softmax(spec: &Spec, x: &Inputs) -> Vec<f64> {
    let (n, dk, dv) = (x.n, x.dk, x.dv);
    let scale = spec.scale_value() as f64;
    let row = |src: &[f32], bh: usize, t: usize, d: usize, norm: bool| -> Vec<f64> {
        let r: Vec<f64> = src[(bh * n + t) * d..(bh * n + t + 1) * d]
            .iter()
            .map(|&v| v as f64)
            .collect();
        if norm && spec.qk_norm == QkNorm::L2 {
            let norm = (r.iter().map(|v| v * v).sum::<f64>() + 1e-6).sqrt();
            r.iter().map(|v| v / norm).collect()
        } else {
            r
        }
    };
    let mut out = vec![0.0; x.b * x.h * n * dv];
    for bh in 0..x.b * x.h {
        for t in 0..n {
            let q = row(&x.q, bh, t, dk, true);
            let last = if spec.mask == Mask::Causal { t } else { n - 1 };
            let logits: Vec<f64> = (0..=last)
                .map(|s| {
                    scale
                        * q.iter()
                            .zip(row(&x.k, bh, s, dk, true))
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
            let total: f64 = w.iter().sum();
            for (s, ws) in w.iter().enumerate() {
                let v = row(&x.v, bh, s, dv, false);
                for j in 0..dv {
                    out[(bh * n + t) * dv + j] += ws / total * v[j];
                }
            }
        }
    }
    out
}

/// max |got - want| / max |want| (the README's accuracy measure).
pub fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    if got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    diff / scale
}

/// (B, H, N, D) -> (B, N, H, D).
pub fn to_bnhd(x: &[f32], b: usize, h: usize, n: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for hi in 0..h {
            for t in 0..n {
                let src = ((bi * h + hi) * n + t) * d;
                let dst = ((bi * n + t) * h + hi) * d;
                out[dst..dst + d].copy_from_slice(&x[src..src + d]);
            }
        }
    }
    out
}

/// (B, N, H, D) -> (B, H, N, D).
pub fn from_bnhd(x: &[f32], b: usize, h: usize, n: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for hi in 0..h {
            for t in 0..n {
                let dst = ((bi * h + hi) * n + t) * d;
                let src = ((bi * n + t) * h + hi) * d;
                out[dst..dst + d].copy_from_slice(&x[src..src + d]);
            }
        }
    }
    out
}
pub mod cuda_emu;
pub mod systems;
