//! The recurrent step of additive and gated updates in one pass over the state.

use super::{lanes16, lanes16_mut, Tile};
use crate::cpu::isa::Isa;

/// The recurrent step in one pass over the state, for one token (row 0 of `k`, `v`, `q`, `o`):
/// `S <- d S + k^T v` with `d = exp(g)` (1 without `gates`), then `o = q S`. Reading the
/// updated rows while they are in registers halves a step's state traffic against a product to
/// read and another to update.
#[inline(always)]
pub fn step_update<I: Isa, const C: usize, const F: usize, const DV: usize>(
    isa: I,
    s: &mut Tile<F, DV>,
    k: &Tile<C, F>,
    v: &Tile<C, DV>,
    q: &Tile<C, F>,
    o: &mut Tile<C, DV>,
    gates: Option<&[f32; C]>,
) {
    let (Some(k), Some(v), Some(q), Some(o)) = (k.first(), v.first(), q.first(), o.first_mut())
    else {
        return;
    };
    match gates.and_then(|g| g.first()) {
        Some(g) => step_update_row::<I, true, F, DV>(isa, s, k, v, q, o, g.exp()),
        None => step_update_row::<I, false, F, DV>(isa, s, k, v, q, o, 1.0),
    }
}

/// [`step_update`] on the token's rows; `DECAY` says whether `d` multiplies the state.
#[inline(always)]
fn step_update_row<I: Isa, const DECAY: bool, const F: usize, const DV: usize>(
    isa: I,
    s: &mut Tile<F, DV>,
    k: &[f32; F],
    v: &[f32; DV],
    q: &[f32; F],
    o: &mut [f32; DV],
    d: f32,
) {
    let mut c0 = 0;
    while c0 + 64 <= DV {
        step_update_cols::<I, DECAY, 4, F, DV>(isa, s, k, v, q, o, d, c0);
        c0 += 64;
    }
    while c0 + 16 <= DV {
        step_update_cols::<I, DECAY, 1, F, DV>(isa, s, k, v, q, o, d, c0);
        c0 += 16;
    }
    for c in c0..DV {
        let mut acc = 0.0;
        for ((row, kf), qf) in s.iter_mut().zip(k).zip(q) {
            let x = isa.fma(*kf, v[c], d * row[c]);
            row[c] = x;
            acc = isa.fma(*qf, x, acc);
        }
        o[c] = acc;
    }
}

/// [`step_update`] on `NV` vectors of columns from `c0`, the outputs accumulated in registers.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn step_update_cols<I: Isa, const DECAY: bool, const NV: usize, const F: usize, const DV: usize>(
    isa: I,
    s: &mut Tile<F, DV>,
    k: &[f32; F],
    v: &[f32; DV],
    q: &[f32; F],
    o: &mut [f32; DV],
    d: f32,
    c0: usize,
) {
    let mut v_vec = [isa.zero(); NV];
    for (j, vv) in v_vec.iter_mut().enumerate() {
        if let Some(src) = lanes16(v, c0 + 16 * j) {
            *vv = isa.load(src);
        }
    }
    let decay = isa.splat(d);
    let mut acc = [isa.zero(); NV];
    for ((row, kf), qf) in s.iter_mut().zip(k).zip(q) {
        let (kf, qf) = (isa.splat(*kf), isa.splat(*qf));
        for (j, (a, vv)) in acc.iter_mut().zip(&v_vec).enumerate() {
            let Some(cell) = lanes16_mut(row, c0 + 16 * j) else {
                continue;
            };
            let old = isa.load(cell);
            let x = if DECAY {
                isa.vfma(decay, old, isa.vfma(kf, *vv, isa.zero()))
            } else {
                isa.vfma(kf, *vv, old)
            };
            isa.store(x, cell);
            *a = isa.vfma(qf, x, *a);
        }
    }
    for (j, a) in acc.iter().enumerate() {
        if let Some(dst) = lanes16_mut(o, c0 + 16 * j) {
            isa.store(*a, dst);
        }
    }
}
