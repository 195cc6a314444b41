//! Feature maps that change the width of a row: Taylor-2, DPFP and FAVOR+.

use super::elementwise::{dot, exp};
use super::{gemm, Product, Tile};
use crate::cpu::isa::Isa;
use attnc_codegen::abi::Tri;

/// Based's second-order Taylor feature map, row by row (see `attnc::spec::FeatureMap`), F = 1 + D + D(D+1)/2:
/// `[1, x / D^(1/4), x_i^2 / (sqrt(D) sqrt(2)) for i, x_i x_j / sqrt(D) for i < j]`
/// (pairs in row-major order, as `torch.triu_indices(D, D, 1)`).
#[inline(always)]
pub fn taylor2_rows<const R: usize, const D: usize, const F: usize>(
    x: &Tile<R, D>,
    rows: usize,
    out: &mut Tile<R, F>,
) {
    let rd = (D as f32).sqrt();
    let (inv_rrd, inv_diag, inv_rd) = (1.0 / rd.sqrt(), 1.0 / (rd * 2f32.sqrt()), 1.0 / rd);
    for (xr, o) in x.iter().zip(out.iter_mut()).take(rows) {
        let mut slots = o.iter_mut();
        let mut put = |v: f32| {
            if let Some(slot) = slots.next() {
                *slot = v;
            }
        };
        put(1.0);
        xr.iter().for_each(|&xi| put(xi * inv_rrd));
        xr.iter().for_each(|&xi| put(xi * xi * inv_diag));
        for (i, &xi) in xr.iter().enumerate() {
            for &xj in &xr[i + 1..] {
                put(xi * xj * inv_rd);
            }
        }
    }
}

/// DPFP (Schlag et al., 2021), row by row, F = 2 D nu: with `r = [relu(x), relu(-x)]`,
/// `phi = concat_{j=1..nu} r * roll(r, j)`, where `roll(r, j)[i] = r[(i - j) mod 2D]`.
#[inline(always)]
pub fn dpfp_rows<const R: usize, const D: usize, const F: usize>(
    x: &Tile<R, D>,
    rows: usize,
    out: &mut Tile<R, F>,
    nu: usize,
) {
    let two_d = 2 * D;
    for (xr, o) in x.iter().zip(out.iter_mut()).take(rows) {
        let r = |i: usize| {
            if i < D {
                xr[i].max(0.0)
            } else {
                (-xr[i - D]).max(0.0)
            }
        };
        for (idx, slot) in o.iter_mut().enumerate().take(two_d * nu) {
            let (j, i) = (idx / two_d + 1, idx % two_d);
            *slot = r(i) * r((i + two_d - j % two_d) % two_d);
        }
    }
}

/// FAVOR+ positive random features (the meaning and the stabiliser c = 0 are
/// documented in `crate::favor`), row by row: with `x' = x / D^(1/4)`,
/// `out[t][i] = exp(w_i . x'_t - |x'_t|^2 / 2) / sqrt(F)`. `wt` is the projection transposed
/// (`D x F`, column i = w_i), so the products `X W^T` are one register-blocked [`gemm`] and the
/// exponentials run along contiguous rows. Rows past `rows` become zero.
#[inline(always)]
pub fn favor_rows<I: Isa, const R: usize, const D: usize, const F: usize>(
    isa: I,
    x: &Tile<R, D>,
    rows: usize,
    wt: &Tile<D, F>,
    out: &mut Tile<R, F>,
) {
    let product = Product {
        rows,
        depth: D,
        tri: Tri::Full,
        accumulate: false,
    };
    gemm(isa, x, wt, out, product);
    // w . x' = s (w . x) and |x'|^2 / 2 = s^2 |x|^2 / 2 with s = D^(-1/4).
    let s = 1.0 / (D as f32).sqrt().sqrt();
    let inv_sqrt_f = 1.0 / (F as f32).sqrt();
    for (xr, o) in x.iter().zip(out.iter_mut()).take(rows) {
        let half_sq = 0.5 * s * s * dot(isa, xr, xr);
        for v in o.iter_mut() {
            *v = exp(isa.fma(s, *v, -half_sq)) * inv_sqrt_f;
        }
    }
    for o in out.iter_mut().skip(rows) {
        *o = [0.0; F];
    }
}
