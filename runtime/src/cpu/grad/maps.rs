//! The input side of the backward pass: `qk_norm`, the feature map and its vector-Jacobian
//! product, token by token. Elementwise maps come from the generated kernel ([`Differentiable`]:
//! phi and its build-time symbolic derivative); taylor2, dpfp and FAVOR+ are written here, with
//! the same f32 formulas as the forward's tile primitives.

use super::vecops::{axpy, dot, row, scale};
use super::{Config, Map};
use crate::cpu::tile::exp;
use attnc_codegen::abi::BackwardPlan;

/// What a generated kernel tells the backward pass: its plan, and the elementwise feature map
/// with its derivative: `phi` as the forward kernel computes it, `dphi` differentiated
/// symbolically at build time (PyTorch's conventions at kinks). Maps that change the width
/// (taylor2, dpfp, FAVOR+) and softmax never call these.
pub trait Differentiable {
    /// How the spec's backward pass runs and what it saves, decided at build time.
    const BACKWARD: BackwardPlan;
    /// phi(x).
    fn phi(x: f32) -> f32;
    /// phi'(x).
    fn dphi(x: f32) -> f32;
    /// [`phi_rows::<Self>`](phi_rows), generated as a plain function of the spec's crate (the
    /// reason of [`crate::cpu::Kernel::run_all`]).
    fn phi_rows(x: &[f32], out: &mut [f32]);
    /// [`dphi_rows::<Self>`](dphi_rows), likewise.
    fn dphi_rows(x: &[f32], g: &[f32], dx: &mut [f32]);
}

/// [`Differentiable::phi`] over a row, for [`super::Config::phi_rows`]: the one piece of the
/// backward compiled per spec (the rest is compiled once, in this crate).
pub fn phi_rows<K: Differentiable>(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = K::phi(v);
    }
}

/// `dx += g * phi'(x)` over a row, for [`super::Config::dphi_rows`]; a zero incoming gradient
/// stays zero even where phi' is infinite.
pub fn dphi_rows<K: Differentiable>(x: &[f32], g: &[f32], dx: &mut [f32]) {
    // A select, not a branch, so that the loop vectorises.
    for ((d, &v), &gi) in dx.iter_mut().zip(x).zip(g) {
        let term = gi * K::dphi(v);
        *d += if gi != 0.0 { term } else { 0.0 };
    }
}

/// One token's row through `qk_norm`: `xn = x / sqrt(|x|^2 + eps)`; returns `1 / sqrt(..)`
/// (1 without `qk_norm`, when `xn` is a copy).
#[inline(always)]
pub fn normalize(cfg: &Config, x: &[f32], xn: &mut [f32]) -> f32 {
    xn.copy_from_slice(x);
    if !cfg.l2 {
        return 1.0;
    }
    let inv = 1.0 / (dot(x, x) + cfg.l2_eps).sqrt();
    xn.iter_mut().for_each(|v| *v *= inv);
    inv
}

/// `out = phi(xn)` (F values), `proj` the FAVOR+ projection (F x DK, row i = w_i).
#[inline(always)]
pub fn phi(cfg: &Config, xn: &[f32], proj: &[f32], out: &mut [f32]) {
    match cfg.map {
        Map::Elementwise => (cfg.phi_rows)(xn, out),
        Map::Taylor2 => taylor2(xn, out),
        Map::Dpfp(nu) => dpfp(xn, nu, out),
        Map::Favor => favor(cfg, xn, proj, out),
    }
}

/// Adds `J_phi(xn)^T dout` to `dxn` (and FAVOR+'s projection gradient to `dproj`).
#[inline(always)]
pub fn phi_vjp(
    cfg: &Config,
    xn: &[f32],
    proj: &[f32],
    dout: &[f32],
    dxn: &mut [f32],
    dproj: &mut [f32],
) {
    match cfg.map {
        Map::Elementwise => (cfg.dphi_rows)(xn, dout, dxn),
        Map::Taylor2 => taylor2_vjp(xn, dout, dxn),
        Map::Dpfp(nu) => dpfp_vjp(xn, nu, dout, dxn),
        Map::Favor => favor_vjp(cfg, xn, proj, dout, dxn, dproj),
    }
}

/// `dx = d xn / dx ^T dxn` for `qk_norm = l2` ((dxn - xn (xn . dxn)) / r, `inv` = 1 / r); a
/// copy without it.
#[inline(always)]
pub fn normalize_vjp(cfg: &Config, xn: &[f32], inv: f32, dxn: &[f32], dx: &mut [f32]) {
    if !cfg.l2 {
        dx.copy_from_slice(dxn);
        return;
    }
    let proj = dot(xn, dxn);
    for ((d, &g), &y) in dx.iter_mut().zip(dxn).zip(xn) {
        *d = (g - y * proj) * inv;
    }
}

/// taylor2's factors for width d: x_i / d^(1/4), x_i^2 / (sqrt(d) sqrt(2)), x_i x_j / sqrt(d)
/// (as the forward's tile primitive computes them).
fn taylor2_factors(d: usize) -> (f32, f32, f32) {
    let rd = (d as f32).sqrt();
    (1.0 / rd.sqrt(), 1.0 / (rd * 2f32.sqrt()), 1.0 / rd)
}

#[inline(always)]
fn taylor2(x: &[f32], out: &mut [f32]) {
    let d = x.len();
    let (c1, c2, c3) = taylor2_factors(d);
    let (head, rest) = out.split_at_mut((1 + 2 * d).min(out.len()));
    if let Some(one) = head.first_mut() {
        *one = 1.0;
    }
    for (i, &xi) in x.iter().enumerate() {
        if let Some(o) = head.get_mut(1 + i) {
            *o = xi * c1;
        }
        if let Some(o) = head.get_mut(1 + d + i) {
            *o = xi * xi * c2;
        }
    }
    let mut slots = rest.iter_mut();
    for (i, &xi) in x.iter().enumerate() {
        for (&xj, o) in x[i + 1..].iter().zip(slots.by_ref()) {
            *o = xi * xj * c3;
        }
    }
}

#[inline(always)]
fn taylor2_vjp(x: &[f32], dout: &[f32], dx: &mut [f32]) {
    let d = x.len();
    let (c1, c2, c3) = taylor2_factors(d);
    for (i, (&xi, g)) in x.iter().zip(dx.iter_mut()).enumerate() {
        let lin = dout.get(1 + i).copied().unwrap_or(0.0);
        let sq = dout.get(1 + d + i).copied().unwrap_or(0.0);
        *g += lin * c1 + sq * 2.0 * xi * c2;
    }
    let pairs = dout.get(1 + 2 * d..).unwrap_or(&[]);
    let mut p = 0;
    for i in 0..d {
        for j in i + 1..d {
            let g = pairs.get(p).copied().unwrap_or(0.0) * c3;
            dx[i] += g * x[j];
            dx[j] += g * x[i];
            p += 1;
        }
    }
}

/// dpfp's `r = [relu(x), relu(-x)]` at index i of 2d.
#[inline(always)]
fn dpfp_r(x: &[f32], i: usize) -> f32 {
    let d = x.len();
    if i < d {
        x[i].max(0.0)
    } else {
        (-x[i - d]).max(0.0)
    }
}

#[inline(always)]
fn dpfp(x: &[f32], nu: usize, out: &mut [f32]) {
    let two_d = 2 * x.len();
    for (idx, o) in out.iter_mut().enumerate().take(two_d * nu) {
        let (j, i) = (idx / two_d + 1, idx % two_d);
        *o = dpfp_r(x, i) * dpfp_r(x, (i + two_d - j % two_d) % two_d);
    }
}

#[inline(always)]
fn dpfp_vjp(x: &[f32], nu: usize, dout: &[f32], dx: &mut [f32]) {
    let d = x.len();
    let two_d = 2 * d;
    let mut dr = vec![0.0f32; two_d];
    for (idx, &g) in dout.iter().enumerate().take(two_d * nu) {
        let (j, i) = (idx / two_d + 1, idx % two_d);
        let i2 = (i + two_d - j % two_d) % two_d;
        dr[i] += g * dpfp_r(x, i2);
        dr[i2] += g * dpfp_r(x, i);
    }
    for (i, (g, &xi)) in dx.iter_mut().zip(x).enumerate() {
        // relu'(0) = 0 on both halves (PyTorch).
        if xi > 0.0 {
            *g += dr[i];
        } else if xi < 0.0 {
            *g -= dr[d + i];
        }
    }
}

/// `x' = s x` with `s = D^(-1/4)`, `out_i = exp(w_i . x' - |x'|^2 / 2) / sqrt(F)`, as the forward.
#[inline(always)]
fn favor(cfg: &Config, x: &[f32], proj: &[f32], out: &mut [f32]) {
    let d = x.len();
    let s = 1.0 / (d as f32).sqrt().sqrt();
    let half_sq = 0.5 * s * s * dot(x, x);
    let inv_sqrt_f = 1.0 / (cfg.f as f32).sqrt();
    for (i, o) in out.iter_mut().enumerate() {
        let wx = dot(row(proj, i, d), x);
        *o = exp(s.mul_add(wx, -half_sq)) * inv_sqrt_f;
    }
}

#[inline(always)]
fn favor_vjp(
    cfg: &Config,
    x: &[f32],
    proj: &[f32],
    dout: &[f32],
    dx: &mut [f32],
    dproj: &mut [f32],
) {
    let d = x.len();
    let s = 1.0 / (d as f32).sqrt().sqrt();
    let half_sq = 0.5 * s * s * dot(x, x);
    let inv_sqrt_f = 1.0 / (cfg.f as f32).sqrt();
    // d/dx' of (w_i . x' - |x'|^2/2) is w_i - x'; d/dw_i is x'.
    let mut dxs = vec![0.0f32; d];
    let mut gsum = 0.0f32;
    for (i, &g) in dout.iter().enumerate() {
        if g == 0.0 {
            continue;
        }
        let w = row(proj, i, d);
        let out = exp(s.mul_add(dot(w, x), -half_sq)) * inv_sqrt_f;
        let gi = g * out;
        axpy(&mut dxs, gi, w);
        gsum += gi;
        if let Some(dw) = dproj.get_mut(i * d..(i + 1) * d) {
            axpy(dw, gi * s, x);
        }
    }
    // dxs -= gsum x', and dx = s dxs.
    for ((g, &a), &xi) in dx.iter_mut().zip(&dxs).zip(x) {
        *g += s * (a - gsum * s * xi);
    }
}

/// One row's features: `xn = qk_norm(x)`, `feat = factor phi(xn)`; returns the l2 factor
/// (1 without `qk_norm`).
#[inline(always)]
pub(super) fn features(
    cfg: &Config,
    x: &[f32],
    proj: &[f32],
    factor: f32,
    xn: &mut [f32],
    feat: &mut [f32],
) -> f32 {
    let inv = normalize(cfg, x, xn);
    phi(cfg, xn, proj, feat);
    if factor != 1.0 {
        scale(feat, factor);
    }
    inv
}

/// `dx` of one row from its features' gradient `dfeat` (scaled by `factor` in place), the
/// row after `qk_norm` `xn` and its l2 factor `inv`; d proj into `dproj`; `dxn` is scratch.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn backprop(
    cfg: &Config,
    xn: &[f32],
    inv: f32,
    proj: &[f32],
    factor: f32,
    dfeat: &mut [f32],
    dxn: &mut [f32],
    dx: &mut [f32],
    dproj: &mut [f32],
) {
    if factor != 1.0 {
        scale(dfeat, factor);
    }
    dxn.fill(0.0);
    phi_vjp(cfg, xn, proj, dfeat, dxn, dproj);
    normalize_vjp(cfg, xn, inv, dxn, dx);
}
