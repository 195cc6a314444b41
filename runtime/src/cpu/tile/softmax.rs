//! Softmax attention: the online (FlashAttention) update over key tiles.

use super::{
    elementwise::{exp, row_sum},
    Tile,
};

/// Softmax: running maxima to -inf, running sums and the output accumulator to zero.
#[inline(always)]
pub fn softmax_init<const R: usize, const C: usize>(
    max: &mut [f32; R],
    sum: &mut [f32; R],
    acc: &mut Tile<R, C>,
) {
    *max = [f32::NEG_INFINITY; R];
    *sum = [0.0; R];
    for row in acc.iter_mut() {
        *row = [0.0; C];
    }
}

/// Softmax, diagonal key tile of a causal spec: `a[t][s] = -inf` for `s > t`.
#[inline(always)]
pub fn mask_above_diagonal<const R: usize>(a: &mut Tile<R, R>, rows: usize) {
    for (t, row) in a.iter_mut().enumerate().take(rows) {
        for x in row.iter_mut().skip(t + 1) {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// Softmax, one key tile of the online update (FlashAttention): for each live query row, rescale
/// what was accumulated to the new running maximum and turn the scores into `exp(a - max)`
/// (zero past `cols`, the key tile's live length).
#[inline(always)]
pub fn online_softmax<const R: usize, const C: usize>(
    a: &mut Tile<R, R>,
    rows: usize,
    cols: usize,
    max: &mut [f32; R],
    sum: &mut [f32; R],
    acc: &mut Tile<R, C>,
) {
    let iter = a
        .iter_mut()
        .zip(max.iter_mut())
        .zip(sum.iter_mut())
        .zip(acc.iter_mut());
    for (((row, m), l), o) in iter.take(rows) {
        let tile_max = row
            .iter()
            .take(cols)
            .fold(f32::NEG_INFINITY, |x, &y| x.max(y));
        let new_max = m.max(tile_max);
        if new_max == f32::NEG_INFINITY {
            // Every key so far is masked: nothing to add yet.
            row.iter_mut().for_each(|x| *x = 0.0);
            continue;
        }
        let alpha = exp(*m - new_max);
        // The exps first, then a lane-parallel sum: a running scalar sum in the same loop keeps
        // the whole loop scalar, an exp call per score (perf: two thirds of a softmax forward).
        for (s, x) in row.iter_mut().enumerate() {
            let e = exp(*x - new_max);
            *x = if s < cols { e } else { 0.0 };
        }
        *l = *l * alpha + row_sum(row);
        o.iter_mut().for_each(|x| *x *= alpha);
        *m = new_max;
    }
}
