//! Tile transposes.

use super::Tile;
use crate::cpu::isa::Isa;

/// `dst = src^T` (dst column t = src row t); columns past `rows` become zero. The transpose
/// proper is [`Isa::transpose`] (8 x 8 register blocks on x86; a per-element gather, which
/// LLVM otherwise emits, cost about a tenth of a plain forward).
#[inline(always)]
pub fn transpose<I: Isa, const R: usize, const C: usize>(
    isa: I,
    src: &Tile<R, C>,
    rows: usize,
    dst: &mut Tile<C, R>,
) {
    isa.transpose(src, dst);
    if rows < R {
        for drow in dst.iter_mut() {
            for d in drow.iter_mut().skip(rows) {
                *d = 0.0;
            }
        }
    }
}

/// `dst = src^T` element by element, only where `t >= from_row` or `k >= from_col` (the edges
/// a blocked transpose leaves; `0, 0` for all of it).
#[inline(always)]
pub(crate) fn transpose_elements<const R: usize, const C: usize>(
    src: &Tile<R, C>,
    dst: &mut Tile<C, R>,
    from_row: usize,
    from_col: usize,
) {
    for (t, row) in src.iter().enumerate() {
        let first = if t >= from_row { 0 } else { from_col };
        for (k, x) in row.iter().enumerate().skip(first) {
            dst[k][t] = *x;
        }
    }
}
