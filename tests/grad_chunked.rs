//! The chunkwise backward of causal additive and gated linear attention (with and without the
//! normaliser), written in f64 exactly as the backward program of the kernel plan is to compute
//! it, checked against the token-by-token gradient oracle (tests/common/grad.rs): max |diff| /
//! max |oracle| <= 1e-9 per gradient, several chunk sizes and tails.
//!
//! This pins the math of the training issue's backward program before it is lowered to tile ops:
//! per chunk, from its incoming state (S, z) and the gradient of its outgoing state (dS', dz'),
//! with Γ_ts = exp(G_t - G_s), Qd = diag(e^G) Q, Kd = diag(e^(G_L - G)) K, r = 1 / (den + eps):
//!
//! ```text
//! dN = dO ⊙ r;  dden_t = -r_t (dO_t · O_t)           (normalised; else dN = dO, dden = 0)
//! dA = tril(dN V^T)
//! dG_t += rowsum(dA ⊙ A)_t - colsum(dA ⊙ A)_t + dN_t · (Qd S)_t
//! dP = dA ⊙ Γ + dden 1^T (lower)
//! dQ = dP K + diag(e^G) dN S^T + dden z^T
//! dK = dP^T Q + diag(e^(G_L - G)) V dS'^T + 1 dz'^T
//! dG_s -= Kd_s · (V dS'^T)_s;  dG_L += sum_s Kd_s · (V dS'^T)_s + <dS', e^(G_L) S>
//! dV = A^T dN + Kd dS'
//! dS = e^(G_L) dS' + Qd^T dN;  dz = dz' + Q^T dden          (the reverse scan's carry)
//! dg = reverse cumsum of dG within the chunk
//! dq = scale phi'(q) ⊙ dQ;  dk = phi'(k) ⊙ dK
//! ```

mod common;
#[path = "common/grad.rs"]
mod grad;

use attnc::spec::{FeatureMap, Normalize, Spec, Update};
use common::Inputs;
use grad::{backward64, rel_err, Cotangents, Grads, Inputs64, SUM_EPS};

const TOL: f64 = 1e-9;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// phi and phi' of the maps this prototype covers.
fn phi(map: &FeatureMap, x: f64) -> (f64, f64) {
    match map {
        FeatureMap::EluPlusOne if x > 0.0 => (x + 1.0, 1.0),
        FeatureMap::EluPlusOne => (x.exp(), x.exp()),
        _ => (x, 1.0),
    }
}

/// One (batch, head): rows of q, k (dk), v (dv), g; the initial state; the cotangents.
struct Head<'a> {
    q: &'a [f64],
    k: &'a [f64],
    v: &'a [f64],
    g: &'a [f64],
    s0: &'a [f64],
    z0: &'a [f64],
    d_o: &'a [f64],
    d_s: &'a [f64],
    d_z: &'a [f64],
}

/// The gradients of one head, by the chunkwise algorithm.
#[allow(clippy::needless_range_loop)]
fn head_backward(spec: &Spec, x: &Head, n: usize, chunk: usize, grads: &mut [Vec<f64>; 6]) {
    let (f, dv) = (spec.feature_dim(), spec.value_dim);
    let (gated, norm) = (spec.has_gate(), spec.normalize == Normalize::Sum);
    let scale = spec.scale_value() as f64;
    let map = &spec.feature_map;
    // Features, their derivatives, and the cumulative gates within each chunk.
    let feat = |src: &[f64], t: usize, s: f64| -> (Vec<f64>, Vec<f64>) {
        src[t * f..(t + 1) * f]
            .iter()
            .map(|&u| {
                let (p, d) = phi(map, u);
                (s * p, d)
            })
            .unzip()
    };
    let qs: Vec<_> = (0..n).map(|t| feat(x.q, t, scale)).collect();
    let ks: Vec<_> = (0..n).map(|t| feat(x.k, t, 1.0)).collect();
    let vrow = |t: usize| &x.v[t * dv..(t + 1) * dv];
    let chunks: Vec<(usize, usize)> = (0..n)
        .step_by(chunk)
        .map(|c0| (c0, (n - c0).min(chunk)))
        .collect();
    let gcum = |c0: usize, l: usize| -> Vec<f64> {
        let mut acc = 0.0;
        (0..l)
            .map(|i| {
                acc += if gated { x.g[c0 + i] } else { 0.0 };
                acc
            })
            .collect()
    };
    // Forward: every chunk's incoming state and the outputs.
    let mut s = x.s0.to_vec();
    // Without the normaliser z stays zero and unread.
    let mut z = if norm { x.z0.to_vec() } else { vec![0.0; f] };
    let mut states = Vec::new();
    let mut out = vec![0.0; n * dv];
    for &(c0, l) in &chunks {
        states.push((s.clone(), z.clone()));
        let gc = gcum(c0, l);
        let gl = gc[l - 1];
        for i in 0..l {
            let t = c0 + i;
            let qd: Vec<f64> = qs[t].0.iter().map(|v| v * gc[i].exp()).collect();
            let mut num = vec![0.0; dv];
            for (fi, qv) in qd.iter().enumerate() {
                for j in 0..dv {
                    num[j] += qv * s[fi * dv + j];
                }
            }
            let mut den = dot(&qs[t].0, &z);
            for jj in 0..=i {
                let p = dot(&qs[t].0, &ks[c0 + jj].0);
                den += p;
                let a = p * (gc[i] - gc[jj]).exp();
                for j in 0..dv {
                    num[j] += a * vrow(c0 + jj)[j];
                }
            }
            let r = if norm { 1.0 / (den + SUM_EPS) } else { 1.0 };
            for j in 0..dv {
                out[t * dv + j] = num[j] * r;
            }
        }
        for fi in 0..f {
            for j in 0..dv {
                let mut add = 0.0;
                for i in 0..l {
                    add += ks[c0 + i].0[fi] * (gl - gc[i]).exp() * vrow(c0 + i)[j];
                }
                s[fi * dv + j] = gl.exp() * s[fi * dv + j] + add;
            }
            z[fi] += (0..l).map(|i| ks[c0 + i].0[fi]).sum::<f64>();
        }
    }
    // Backward: chunks in reverse, carrying dS, dz.
    let mut ds = if x.d_s.is_empty() {
        vec![0.0; f * dv]
    } else {
        x.d_s.to_vec()
    };
    let mut dz = if x.d_z.is_empty() {
        vec![0.0; f]
    } else {
        x.d_z.to_vec()
    };
    for (ci, &(c0, l)) in chunks.iter().enumerate().rev() {
        let (si, zi) = &states[ci];
        let gc = gcum(c0, l);
        let gl = gc[l - 1];
        let q = |i: usize| &qs[c0 + i].0;
        let k = |i: usize| &ks[c0 + i].0;
        let mut dq = vec![vec![0.0; f]; l];
        let mut dk = vec![vec![0.0; f]; l];
        let mut dvv = vec![vec![0.0; dv]; l];
        let mut dg = vec![0.0; l];
        let mut dn = vec![vec![0.0; dv]; l];
        let mut dden = vec![0.0; l];
        for i in 0..l {
            let t = c0 + i;
            let d_o = &x.d_o[t * dv..(t + 1) * dv];
            let mut den = dot(q(i), zi);
            for jj in 0..=i {
                den += dot(q(i), k(jj));
            }
            let r = if norm { 1.0 / (den + SUM_EPS) } else { 1.0 };
            dn[i] = d_o.iter().map(|v| v * r).collect();
            if norm {
                dden[i] = -r * dot(d_o, &out[t * dv..(t + 1) * dv]);
            }
        }
        for i in 0..l {
            // Qd S, for dG; diag(e^G) dN S^T and dden z^T, for dQ.
            let e = gc[i].exp();
            for fi in 0..f {
                let srow = &si[fi * dv..(fi + 1) * dv];
                dg[i] += e * q(i)[fi] * dot(srow, &dn[i]);
                dq[i][fi] += e * dot(srow, &dn[i]) + dden[i] * zi[fi];
            }
            for jj in 0..=i {
                let gamma = (gc[i] - gc[jj]).exp();
                let a = dot(q(i), k(jj)) * gamma;
                let da = dot(&dn[i], vrow(c0 + jj));
                dg[i] += da * a;
                dg[jj] -= da * a;
                let dp = da * gamma + dden[i];
                for fi in 0..f {
                    dq[i][fi] += dp * k(jj)[fi];
                    dk[jj][fi] += dp * q(i)[fi];
                }
                for j in 0..dv {
                    dvv[jj][j] += a * dn[i][j];
                }
            }
        }
        let mut dgl = 0.0;
        for i in 0..l {
            let kd = (gl - gc[i]).exp();
            for fi in 0..f {
                let dsv = dot(&ds[fi * dv..(fi + 1) * dv], vrow(c0 + i));
                dk[i][fi] += kd * dsv + dz[fi];
                dg[i] -= kd * k(i)[fi] * dsv;
                dgl += kd * k(i)[fi] * dsv;
                for j in 0..dv {
                    dvv[i][j] += kd * k(i)[fi] * ds[fi * dv + j];
                }
            }
        }
        dgl += gl.exp() * dot(&ds, si);
        dg[l - 1] += dgl;
        // The carry for the previous chunk.
        let mut ds_in: Vec<f64> = ds.iter().map(|v| v * gl.exp()).collect();
        for i in 0..l {
            let e = gc[i].exp();
            for fi in 0..f {
                for j in 0..dv {
                    ds_in[fi * dv + j] += e * q(i)[fi] * dn[i][j];
                }
                dz[fi] += q(i)[fi] * dden[i];
            }
        }
        ds = ds_in;
        // Through the gates' cumulative sums and the feature maps.
        let mut acc = 0.0;
        for i in (0..l).rev() {
            acc += dg[i];
            let t = c0 + i;
            grads[4][t] = acc;
            for fi in 0..f {
                grads[0][t * f + fi] = scale * qs[t].1[fi] * dq[i][fi];
                grads[1][t * f + fi] = ks[t].1[fi] * dk[i][fi];
            }
            grads[2][t * dv..(t + 1) * dv].copy_from_slice(&dvv[i]);
        }
    }
    grads[3] = ds;
    grads[5] = dz;
}

/// Every gradient of every head, in the oracle's layout.
fn chunked_backward(spec: &Spec, x: &Inputs64, s0: &[f64], z0: &[f64], ct: &Cotangents) -> Grads {
    let (n, dk, dv, f) = (x.n, x.dk, x.dv, spec.feature_dim());
    let mut g = Grads::default();
    for bh in 0..x.b * x.h {
        let slice = |v: &[f64], len: usize| -> Vec<f64> {
            if v.is_empty() {
                Vec::new()
            } else {
                v[bh * len..(bh + 1) * len].to_vec()
            }
        };
        let (q, k, v) = (
            slice(&x.q, n * dk),
            slice(&x.k, n * dk),
            slice(&x.v, n * dv),
        );
        let gates = slice(&x.g, n);
        let (s0, z0) = (slice(s0, f * dv), slice(z0, f));
        let (d_o, d_s, d_z) = (
            slice(&ct.d_o, n * dv),
            slice(&ct.d_s, f * dv),
            slice(&ct.d_z, f),
        );
        let head = Head {
            q: &q,
            k: &k,
            v: &v,
            g: &gates,
            s0: &s0,
            z0: &z0,
            d_o: &d_o,
            d_s: &d_s,
            d_z: &d_z,
        };
        let mut out = [
            vec![0.0; n * dk],
            vec![0.0; n * dk],
            vec![0.0; n * dv],
            Vec::new(),
            vec![0.0; n],
            Vec::new(),
        ];
        head_backward(spec, &head, n, spec.chunk, &mut out);
        let [gq, gk, gv, gs, gg, gz] = out;
        g.q.extend(gq);
        g.k.extend(gk);
        g.v.extend(gv);
        g.s0.extend(gs);
        if spec.has_gate() {
            g.g.extend(gg);
        }
        if spec.normalize == Normalize::Sum {
            g.z0.extend(gz);
        }
    }
    g
}

#[test]
fn chunkwise_backward_matches_the_oracle() {
    let mut checked = 0;
    for update in [Update::Additive, Update::Gated] {
        for (map, normalize) in [
            (FeatureMap::Identity, Normalize::None),
            (FeatureMap::EluPlusOne, Normalize::None),
            (FeatureMap::EluPlusOne, Normalize::Sum),
        ] {
            for (chunk, n) in [(4, 1), (4, 3), (4, 5), (4, 19), (8, 8), (16, 37)] {
                let mut spec = Spec::with_head_dim(4);
                spec.update = update;
                spec.feature_map = map.clone();
                spec.normalize = normalize;
                spec.chunk = chunk;
                let (b, h, d) = (1, 2, 4);
                let seed = 1000 + checked as u64;
                let x = Inputs::random(b, h, n, d, d, seed);
                let x64 = Inputs64::from(&x);
                let mut rng = common::Rng::new(seed + 1);
                let s0: Vec<f64> = rng
                    .normals(b * h * d * d)
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let z0: Vec<f64> = (0..b * h * d).map(|_| 1.0 + rng.uniform() as f64).collect();
                let z0 = if normalize == Normalize::Sum {
                    z0
                } else {
                    Vec::new()
                };
                let ct = Cotangents::random(&spec, b, h, n, d, seed + 2);
                let z0_arg = (!z0.is_empty()).then_some(&z0[..]);
                let want = backward64(&spec, &x64, Some(&s0), z0_arg, &ct);
                let got = chunked_backward(&spec, &x64, &s0, &z0, &ct);
                let named: Vec<_> = got.named().into_iter().collect();
                assert_eq!(
                    named.len(),
                    want.named().len(),
                    "{spec}: the same gradients"
                );
                for ((name, g), (wname, w)) in named.into_iter().zip(want.named()) {
                    assert_eq!(name, wname);
                    let e = rel_err(g, w);
                    assert!(e <= TOL, "{spec} n = {n}: d{name} rel err {e:.2e}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 36);
}
