//! The input side shared by the systems' kernels: `qk_norm`, the feature map and the query
//! scale, row by row, with their vector-Jacobian products (the backward's [`maps`], so the
//! systems compute exactly what the generated kernels compute).

use crate::cpu::grad::maps;
use crate::cpu::grad::vecops::{row, row_mut};
use crate::cpu::grad::Config;

/// `out (n x F) = factor * phi(norm(x))` for `n` rows of `x (n x DK)`.
pub fn map_rows(cfg: &Config, x: &[f32], factor: f32, out: &mut [f32]) {
    let (dk, f) = (cfg.dk, cfg.f);
    let mut xn = vec![0.0; dk];
    for (t, o) in out.chunks_exact_mut(f).enumerate() {
        maps::normalize(cfg, row(x, t, dk), &mut xn);
        maps::phi(cfg, &xn, &[], o);
        if factor != 1.0 {
            o.iter_mut().for_each(|v| *v *= factor);
        }
    }
}

/// `dx (n x DK) = J^T dout` for [`map_rows`] with the same `factor` (overwrites `dx`).
pub fn map_rows_vjp(cfg: &Config, x: &[f32], factor: f32, dout: &[f32], dx: &mut [f32]) {
    let (dk, f) = (cfg.dk, cfg.f);
    let (mut xn, mut dxn, mut g) = (vec![0.0; dk], vec![0.0; dk], vec![0.0; f]);
    for (t, d) in dx.chunks_exact_mut(dk).enumerate() {
        let inv = maps::normalize(cfg, row(x, t, dk), &mut xn);
        g.iter_mut()
            .zip(row(dout, t, f))
            .for_each(|(g, &d)| *g = d * factor);
        dxn.fill(0.0);
        maps::phi_vjp(cfg, &xn, &[], &g, &mut dxn, &mut []);
        maps::normalize_vjp(cfg, &xn, inv, &dxn, d);
    }
}

/// `v` (n x DV) with a column of ones appended when `normalized` (n x (DV + 1)): the systems
/// carry the normaliser `z` as the state's last column, so one pass computes numerator and
/// denominator together.
pub fn augment(v: &[f32], dv: usize, normalized: bool) -> Vec<f32> {
    if !normalized {
        return v.to_vec();
    }
    let mut out = Vec::with_capacity(v.len() / dv.max(1) * (dv + 1));
    for r in v.chunks_exact(dv) {
        out.extend_from_slice(r);
        out.push(1.0);
    }
    out
}

/// `[S | z]` (F x (DV + 1)) from `S` (F x DV) and `z` (F), or `S` alone.
pub fn join_state(s: &[f32], z: &[f32], dv: usize, normalized: bool) -> Vec<f32> {
    if !normalized {
        return s.to_vec();
    }
    let mut out = Vec::with_capacity(s.len() + z.len());
    for (r, zi) in s.chunks_exact(dv).zip(z) {
        out.extend_from_slice(r);
        out.push(*zi);
    }
    out
}

/// Splits `[S | z]` back into `S` and `z` (empty without the normaliser), appending to both.
pub fn split_state(a: &[f32], dv: usize, normalized: bool, s: &mut Vec<f32>, z: &mut Vec<f32>) {
    if !normalized {
        s.extend_from_slice(a);
        return;
    }
    for r in a.chunks_exact(dv + 1) {
        s.extend_from_slice(&r[..dv]);
        z.push(r[dv]);
    }
}

/// The outputs from the augmented rows (n x (DV + 1)): `o = num / (den + eps)` with the
/// normaliser, the rows themselves without. Written to `out` (n x DV).
pub fn outputs(oa: &[f32], dv: usize, normalized: bool, eps: f32, out: &mut [f32]) {
    if !normalized {
        out.copy_from_slice(&oa[..out.len()]);
        return;
    }
    for (t, o) in out.chunks_exact_mut(dv).enumerate() {
        let r = row(oa, t, dv + 1);
        let den = r[dv] + eps;
        o.iter_mut().zip(r).for_each(|(o, x)| *o = x / den);
    }
}

/// The gradient of the augmented rows from dL/do: with the normaliser
/// `d num = do / (den + eps)`, `d den = -(do . o) / (den + eps)`; else `do` itself.
pub fn output_grads(oa: &[f32], d_o: &[f32], dv: usize, normalized: bool, eps: f32) -> Vec<f32> {
    if !normalized {
        return d_o.to_vec();
    }
    let n = d_o.len() / dv.max(1);
    let mut out = vec![0.0; n * (dv + 1)];
    for t in 0..n {
        let r = row(oa, t, dv + 1);
        let den = r[dv] + eps;
        let g = row(d_o, t, dv);
        let dr = row_mut(&mut out, t, dv + 1);
        let mut dot = 0.0;
        for j in 0..dv {
            dr[j] = g[j] / den;
            dot += g[j] * r[j] / den;
        }
        dr[dv] = -dot / den;
    }
    out
}
