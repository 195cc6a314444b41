//! Gated updates: cumulative log-decays and the decay factors they give scores, rows, columns
//! and the state.

use super::{elementwise::exp, Tile};

/// In place: `g[t] = g[0] + ... + g[t]` over live rows (cumulative log-decay inside the chunk).
#[inline(always)]
pub fn cumsum<const R: usize>(g: &mut [f32; R], rows: usize) {
    let mut acc = 0.0f32;
    for x in g.iter_mut().take(rows) {
        acc += *x;
        *x = acc;
    }
}

/// `a[t][s] *= exp(G_t - G_s)` for s <= t (each factor <= 1 for g <= 0: no overflow).
#[inline(always)]
pub fn decay_scores<const R: usize>(a: &mut Tile<R, R>, g: &[f32; R], rows: usize) {
    for (t, row) in a.iter_mut().enumerate().take(rows) {
        let gt = g[t];
        // Whole 16-lane blocks up to the diagonal, the entries past it left as they are by a
        // select: a row that ends mid-block would otherwise finish in scalar code, an exp per
        // entry (perf: the largest cost of a gated forward outside the products).
        let (blocks, tail) = row.as_chunks_mut::<16>();
        let (g_blocks, g_tail) = g.as_chunks::<16>();
        let whole = blocks.len() * 16;
        for (b, (xs, gs)) in blocks.iter_mut().zip(g_blocks).enumerate() {
            if b * 16 > t {
                break;
            }
            for (j, (x, gs)) in xs.iter_mut().zip(gs).enumerate() {
                let decayed = *x * exp(gt - *gs);
                *x = if b * 16 + j <= t { decayed } else { *x };
            }
        }
        for (j, (x, gs)) in tail.iter_mut().zip(g_tail).enumerate() {
            if whole + j <= t {
                *x *= exp(gt - *gs);
            }
        }
    }
}

/// `q_t *= exp(G_t)`: the decay from the chunk start to token t.
#[inline(always)]
pub fn decay_rows<const R: usize, const C: usize>(q: &mut Tile<R, C>, g: &[f32; R], rows: usize) {
    for (row, gt) in q.iter_mut().zip(g).take(rows) {
        let f = gt.exp();
        for x in row.iter_mut() {
            *x *= f;
        }
    }
}

/// `kt[:, s] *= exp(G_last - G_s)`: the decay from token s to the chunk end.
#[inline(always)]
pub fn decay_cols_to_end<const C: usize, const R: usize>(
    kt: &mut Tile<C, R>,
    g: &[f32; R],
    rows: usize,
) {
    let Some(last) = rows.checked_sub(1).map(|i| g[i.min(R - 1)]) else {
        return;
    };
    let mut w = [0.0f32; R];
    for (wi, gs) in w.iter_mut().zip(g).take(rows) {
        *wi = exp(last - *gs);
    }
    for row in kt.iter_mut() {
        for (x, wi) in row.iter_mut().zip(&w) {
            *x *= *wi;
        }
    }
}

/// `s *= exp(G_last)`: the state decays over the whole chunk.
#[inline(always)]
pub fn decay_tile<const R: usize, const F: usize, const C: usize>(
    s: &mut Tile<F, C>,
    g: &[f32; R],
    rows: usize,
) {
    let Some(last) = rows.checked_sub(1).map(|i| g[i.min(R - 1)]) else {
        return;
    };
    let f = last.exp();
    // A flat loop: nested per-row loops over a small tile were vectorised across rows with
    // gathers and scatters (perf: 71% of a gated `step`).
    for x in s.as_flattened_mut() {
        *x *= f;
    }
}
