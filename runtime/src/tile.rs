//! Tile primitives: the CPU lowering of the kernel plan's tile ops.
//!
//! Every function works on statically shaped tiles (`[[f32; COLS]; ROWS]`) with a runtime count of
//! live rows (`rows <= ROWS`, shorter only in the sequence's last chunk), is `#[inline(always)]`
//! so it is compiled inside the caller's `#[target_feature]` context, and is written so LLVM
//! vectorises it: inner loops run over contiguous, compile-time-sized rows, and reductions keep
//! independent per-lane accumulators (strict IEEE order forbids LLVM from reassociating a plain
//! sum). Tiles past `rows` are kept at zero by [`load_rows`], so ops may read whole tiles.

use crate::error::{Error, Result};
use crate::isa::Isa;
use attnc_codegen::abi::Tri;

/// A row-major tile of `R` rows and `C` columns.
pub type Tile<const R: usize, const C: usize> = [[f32; C]; R];

/// `e^x` in plain f32 arithmetic (Cephes' `expf`: Cody-Waite range reduction, a degree-6
/// polynomial, exponent bits), within a few ulp of `f32::exp`; infinity above its range, zero
/// below the normal range. Unlike a call to libm it inlines, so loops over tiles vectorise.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    const MAX_ARG: f32 = 88.722_84;
    const MIN_ARG: f32 = -87.336_55;
    let c = x.clamp(MIN_ARG, MAX_ARG);
    let shifted = c * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = 1.0 + r + r * r * p;
    // 2^n in two halves, so n = 128 and n = -126 stay within normal exponents. The integer n
    // is read from the low bits of `shifted` (a bit cast, which vectorises; `as i32` saturates
    // and did not).
    let n = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let half = n >> 1;
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    let y = e * pow2(half) * pow2(n - half);
    if x > MAX_ARG {
        f32::INFINITY
    } else if x < MIN_ARG {
        0.0
    } else if x.is_nan() {
        x
    } else {
        y
    }
}

/// Allocates a zeroed tile on the heap (tiles of 256 x 256 do not belong on a thread's stack).
pub fn boxed_tile<const R: usize, const C: usize>() -> Result<Box<Tile<R, C>>> {
    vec![[0.0f32; C]; R]
        .into_boxed_slice()
        .try_into()
        .map_err(|_| Error::Internal("tile allocation has the wrong length"))
}

/// Views a flat buffer as a tile of exactly `R x C` values.
pub fn as_tile_mut<const R: usize, const C: usize>(flat: &mut [f32]) -> Result<&mut Tile<R, C>> {
    let (rows, rest) = flat.as_chunks_mut::<C>();
    if !rest.is_empty() {
        return Err(Error::Internal(
            "state buffer is not a whole number of rows",
        ));
    }
    rows.try_into()
        .map_err(|_| Error::Internal("state buffer has the wrong row count"))
}

/// Views a flat buffer as a vector of exactly `R` values.
pub fn as_vec_mut<const R: usize>(flat: &mut [f32]) -> Result<&mut [f32; R]> {
    flat.try_into()
        .map_err(|_| Error::Internal("vector buffer has the wrong length"))
}

/// Copies rows `first..first + rows` of a contiguous `(tokens, C)` buffer into the tile and zeroes
/// the rest of it.
#[inline(always)]
pub fn load_rows<const R: usize, const C: usize>(
    src: &[f32],
    first: usize,
    rows: usize,
    dst: &mut Tile<R, C>,
) -> Result<()> {
    let src = src
        .get(first * C..(first + rows) * C)
        .ok_or(Error::Internal("chunk reads past the end of an input"))?;
    let (src_rows, _) = src.as_chunks::<C>();
    for (d, s) in dst.iter_mut().zip(src_rows) {
        *d = *s;
    }
    for d in dst.iter_mut().skip(rows) {
        *d = [0.0; C];
    }
    Ok(())
}

/// Copies a tile's flat data into `buf` at `at` (a chunk's slot of the chunk-parallel schedule).
#[inline(always)]
pub fn save(src: &[f32], buf: &mut [f32], at: usize) -> Result<()> {
    buf.get_mut(at..at + src.len())
        .ok_or(Error::Internal(
            "a chunk slot lies past the end of its workspace",
        ))?
        .copy_from_slice(src);
    Ok(())
}

/// Copies `dst.len()` floats of `buf` at `at` back into a tile's flat data.
#[inline(always)]
pub fn restore(dst: &mut [f32], buf: &[f32], at: usize) -> Result<()> {
    let src = buf.get(at..at + dst.len()).ok_or(Error::Internal(
        "a chunk slot lies past the end of its workspace",
    ))?;
    dst.copy_from_slice(src);
    Ok(())
}

/// `dst += src`, elementwise over equal lengths.
#[inline(always)]
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}

/// Copies `first..first + rows` of a contiguous per-token buffer into a vector, zeroing the rest.
#[inline(always)]
pub fn load_vec<const R: usize>(
    src: &[f32],
    first: usize,
    rows: usize,
    dst: &mut [f32; R],
) -> Result<()> {
    let src = src.get(first..first + rows).ok_or(Error::Internal(
        "chunk reads past the end of a per-token input",
    ))?;
    *dst = [0.0; R];
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
    Ok(())
}

/// Writes the first `rows` rows of the tile to rows `first..` of a contiguous `(tokens, C)` buffer.
#[inline(always)]
pub fn store_rows<const R: usize, const C: usize>(
    src: &Tile<R, C>,
    rows: usize,
    dst: &mut [f32],
    first: usize,
) -> Result<()> {
    let dst = dst
        .get_mut(first * C..(first + rows) * C)
        .ok_or(Error::Internal("chunk writes past the end of the output"))?;
    let (dst_rows, _) = dst.as_chunks_mut::<C>();
    for (d, s) in dst_rows.iter_mut().zip(src) {
        *d = *s;
    }
    Ok(())
}

/// Dot product of two equal-length rows with eight independent lane accumulators.
#[inline(always)]
pub fn dot<I: Isa, const C: usize>(isa: I, a: &[f32; C], b: &[f32; C]) -> f32 {
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    let mut lanes = [0.0f32; 8];
    for (x, y) in a8.iter().zip(b8) {
        for l in 0..8 {
            lanes[l] = isa.fma(x[l], y[l], lanes[l]);
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for (x, y) in a_rest.iter().zip(b_rest) {
        sum = isa.fma(*x, *y, sum);
    }
    sum
}

/// Sum of a row with eight independent lane accumulators.
#[inline(always)]
fn row_sum<const C: usize>(a: &[f32; C]) -> f32 {
    let (a8, rest) = a.as_chunks::<8>();
    let mut lanes = [0.0f32; 8];
    for x in a8 {
        for l in 0..8 {
            lanes[l] += x[l];
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Divides each live row by its L2 norm: `x / sqrt(|x|^2 + 1e-6)` (flash-linear-attention's form).
#[inline(always)]
pub fn l2_normalize_rows<I: Isa, const R: usize, const C: usize>(
    isa: I,
    t: &mut Tile<R, C>,
    rows: usize,
) {
    for row in t.iter_mut().take(rows) {
        let inv = 1.0 / (dot(isa, row, row) + 1e-6).sqrt();
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

/// Applies an elementwise map to the live rows.
#[inline(always)]
pub fn map_rows<const R: usize, const C: usize>(
    t: &mut Tile<R, C>,
    rows: usize,
    phi: impl Fn(f32) -> f32,
) {
    // One flat loop over the live rows (contiguous), which vectorises cleanly.
    for x in live(t, rows).iter_mut() {
        *x = phi(*x);
    }
}

/// The live rows of a tile as one contiguous slice.
#[inline(always)]
fn live<const R: usize, const C: usize>(t: &mut Tile<R, C>, rows: usize) -> &mut [f32] {
    let rows = rows.min(R);
    t[..rows].as_flattened_mut()
}

/// Multiplies the live rows by a constant.
#[inline(always)]
pub fn scale_rows<const R: usize, const C: usize>(t: &mut Tile<R, C>, rows: usize, s: f32) {
    for x in live(t, rows).iter_mut() {
        *x *= s;
    }
}

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

/// `c[..rows] (= or +=) a[..rows, ..depth] · b[..depth]` (see `gemm_kernel`). One call: the
/// product is compiled once per ISA and tile shape ([`Isa::gemm`]), not at every call site, which
/// keeps the build time of a spec down; a call costs nothing next to a tile product.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn gemm<I: Isa, const M: usize, const K: usize, const N: usize>(
    isa: I,
    a: &Tile<M, K>,
    b: &Tile<K, N>,
    c: &mut Tile<M, N>,
    rows: usize,
    depth: usize,
    tri: Tri,
    accumulate: bool,
) {
    isa.gemm(a, b, c, rows, depth, tri, accumulate);
}

/// `c[..rows] (= or +=) a[..rows, ..depth] · b[..depth]`, register blocked: a block of 4 rows
/// x 16 columns (2 x 16 on AVX-512) of vector accumulators stays in registers over the whole
/// depth; column tails use 8-wide and single-column scalar blocks.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_kernel<I: Isa, const M: usize, const K: usize, const N: usize>(
    isa: I,
    a: &Tile<M, K>,
    b: &Tile<K, N>,
    c: &mut Tile<M, N>,
    rows: usize,
    depth: usize,
    tri: Tri,
    accumulate: bool,
) {
    let rows = rows.min(M);
    let depth = depth.min(K);
    let mut r0 = 0;
    while r0 < rows {
        if r0 + 4 <= rows {
            gemm_rows::<I, 4, M, K, N>(isa, a, b, c, r0, depth, tri, accumulate);
            r0 += 4;
        } else {
            gemm_rows::<I, 1, M, K, N>(isa, a, b, c, r0, depth, tri, accumulate);
            r0 += 1;
        }
    }
}

/// One block of `RB` output rows across all columns.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_rows<I: Isa, const RB: usize, const M: usize, const K: usize, const N: usize>(
    isa: I,
    a: &Tile<M, K>,
    b: &Tile<K, N>,
    c: &mut Tile<M, N>,
    r0: usize,
    depth: usize,
    tri: Tri,
    accumulate: bool,
) {
    let last_row = r0 + RB - 1;
    let kmax = match tri {
        Tri::LowerA => depth.min(last_row + 1),
        _ => depth,
    };
    // Causal scores: columns up to the block's last row, rounded up to whole vectors (what lies
    // above the diagonal is zeroed below), so the diagonal strip runs in the vector kernels.
    let col_end = match tri {
        Tri::LowerOut => N.min((last_row + 1).next_multiple_of(16)),
        _ => N,
    };
    let mut c0 = 0;
    if I::WIDE {
        while c0 + 64 <= col_end {
            gemm_vblock::<I, RB, 4, M, K, N>(isa, a, b, c, r0, c0, kmax, accumulate);
            c0 += 64;
        }
        while c0 + 32 <= col_end {
            gemm_vblock::<I, RB, 2, M, K, N>(isa, a, b, c, r0, c0, kmax, accumulate);
            c0 += 32;
        }
    }
    while c0 + 16 <= col_end {
        gemm_vblock::<I, RB, 1, M, K, N>(isa, a, b, c, r0, c0, kmax, accumulate);
        c0 += 16;
    }
    while c0 + 8 <= col_end {
        gemm_block::<I, RB, 8, M, K, N>(isa, a, b, c, r0, c0, kmax, accumulate);
        c0 += 8;
    }
    while c0 < col_end {
        gemm_block::<I, RB, 1, M, K, N>(isa, a, b, c, r0, c0, kmax, accumulate);
        c0 += 1;
    }
    if tri == Tri::LowerOut {
        // Zero what lies above the diagonal (computed in the diagonal block, or skipped).
        for (i, row) in c[r0..r0 + RB].iter_mut().enumerate() {
            for x in row.iter_mut().skip(r0 + i + 1) {
                *x = 0.0;
            }
        }
    }
}

/// The vector micro-kernel: `RB x NV` 16-lane accumulators kept in registers over the depth.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_vblock<
    I: Isa,
    const RB: usize,
    const NV: usize,
    const M: usize,
    const K: usize,
    const N: usize,
>(
    isa: I,
    a: &Tile<M, K>,
    b: &Tile<K, N>,
    c: &mut Tile<M, N>,
    r0: usize,
    c0: usize,
    kmax: usize,
    accumulate: bool,
) {
    let Some(a_rows) = a.get(r0..r0 + RB) else {
        return;
    };
    let mut acc = [[isa.zero(); NV]; RB];
    if accumulate {
        for (acc_row, c_row) in acc.iter_mut().zip(&c[r0..r0 + RB]) {
            for (v, acc_v) in acc_row.iter_mut().enumerate() {
                if let Some(src) = lanes16(c_row, c0 + 16 * v) {
                    *acc_v = isa.load(src);
                }
            }
        }
    }
    for (k, b_row) in b.iter().enumerate().take(kmax) {
        let mut b_v = [isa.zero(); NV];
        for (v, bv) in b_v.iter_mut().enumerate() {
            if let Some(src) = lanes16(b_row, c0 + 16 * v) {
                *bv = isa.load(src);
            }
        }
        for (acc_row, a_row) in acc.iter_mut().zip(a_rows) {
            let a_ik = isa.splat(a_row[k]);
            for (acc_v, bv) in acc_row.iter_mut().zip(&b_v) {
                *acc_v = isa.vfma(a_ik, *bv, *acc_v);
            }
        }
    }
    for (acc_row, c_row) in acc.iter().zip(&mut c[r0..r0 + RB]) {
        for (v, acc_v) in acc_row.iter().enumerate() {
            if let Some(dst) = lanes16_mut(c_row, c0 + 16 * v) {
                isa.store(*acc_v, dst);
            }
        }
    }
}

#[inline(always)]
fn lanes16<const N: usize>(row: &[f32; N], at: usize) -> Option<&[f32; 16]> {
    row.get(at..at + 16).and_then(|s| s.try_into().ok())
}

#[inline(always)]
fn lanes16_mut<const N: usize>(row: &mut [f32; N], at: usize) -> Option<&mut [f32; 16]> {
    row.get_mut(at..at + 16).and_then(|s| s.try_into().ok())
}

/// The scalar micro-kernel for column tails: an `RB x NB` block of accumulators.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm_block<
    I: Isa,
    const RB: usize,
    const NB: usize,
    const M: usize,
    const K: usize,
    const N: usize,
>(
    isa: I,
    a: &Tile<M, K>,
    b: &Tile<K, N>,
    c: &mut Tile<M, N>,
    r0: usize,
    c0: usize,
    kmax: usize,
    accumulate: bool,
) {
    let mut acc = [[0.0f32; NB]; RB];
    if accumulate {
        for (i, acc_row) in acc.iter_mut().enumerate() {
            if let Some(src) = c[r0 + i].get(c0..c0 + NB) {
                acc_row.copy_from_slice(src);
            }
        }
    }
    let a_rows: &[[f32; K]] = &a[r0..r0 + RB];
    for (k, b_row) in b.iter().enumerate().take(kmax) {
        let Some(b_blk) = b_row.get(c0..c0 + NB) else {
            return;
        };
        let Ok(b_blk) = <&[f32; NB]>::try_from(b_blk) else {
            return;
        };
        for (acc_row, a_row) in acc.iter_mut().zip(a_rows) {
            let a_ik = a_row[k];
            for j in 0..NB {
                acc_row[j] = isa.fma(a_ik, b_blk[j], acc_row[j]);
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate() {
        if let Some(dst) = c[r0 + i].get_mut(c0..c0 + NB) {
            dst.copy_from_slice(acc_row);
        }
    }
}

/// `out[t] = sum_s a[t][s]` for live rows (the lower-triangular scores give q_t · sum_{s<=t} k_s).
#[inline(always)]
pub fn row_sums<const R: usize, const C: usize>(a: &Tile<R, C>, rows: usize, out: &mut [f32; R]) {
    for (o, row) in out.iter_mut().zip(a).take(rows) {
        *o = row_sum(row);
    }
}

/// `out[t] (= or +=) q_t · z` for live rows.
#[inline(always)]
pub fn dot_rows<I: Isa, const R: usize, const C: usize>(
    isa: I,
    q: &Tile<R, C>,
    z: &[f32; C],
    rows: usize,
    out: &mut [f32; R],
    accumulate: bool,
) {
    for (o, row) in out.iter_mut().zip(q).take(rows) {
        let d = dot(isa, row, z);
        *o = if accumulate { *o + d } else { d };
    }
}

/// `z += sum_t k_t` over live rows.
#[inline(always)]
pub fn add_col_sums<const R: usize, const C: usize>(k: &Tile<R, C>, rows: usize, z: &mut [f32; C]) {
    for row in k.iter().take(rows) {
        for (zi, x) in z.iter_mut().zip(row) {
            *zi += *x;
        }
    }
}

/// `o_t /= den_t + eps` for live rows.
#[inline(always)]
pub fn divide_rows<const R: usize, const C: usize>(
    o: &mut Tile<R, C>,
    den: &[f32; R],
    rows: usize,
    eps: f32,
) {
    for (row, d) in o.iter_mut().zip(den).take(rows) {
        let inv = 1.0 / (*d + eps);
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

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
        for (x, gs) in row.iter_mut().zip(g).take(t + 1) {
            *x *= exp(gt - *gs);
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

/// `dst[t] = src[t] - dst[t]` for live rows.
#[inline(always)]
pub fn sub_from<const R: usize, const C: usize>(
    dst: &mut Tile<R, C>,
    src: &Tile<R, C>,
    rows: usize,
) {
    for (d, s) in dst.iter_mut().zip(src).take(rows) {
        for (x, y) in d.iter_mut().zip(s) {
            *x = *y - *x;
        }
    }
}

/// Forward substitution, in place: on entry `x` holds R, on exit the solution of
/// `(I + strict_lower(diag(beta) L)) X = diag(beta) R`, i.e. `X_t = beta_t (R_t - sum_{s<t} L_ts X_s)`.
/// Row by row, each row an FMA chain over the (contiguous) value columns.
#[inline(always)]
pub fn forward_substitute<I: Isa, const R: usize, const C: usize>(
    isa: I,
    x: &mut Tile<R, C>,
    lower: &Tile<R, R>,
    beta: &[f32; R],
    rows: usize,
) {
    for t in 0..rows.min(R) {
        let (done, rest) = x.split_at_mut(t);
        let Some(row) = rest.first_mut() else {
            return;
        };
        for (l_ts, x_s) in lower[t].iter().zip(done.iter()) {
            let m = -*l_ts;
            for (r, xs) in row.iter_mut().zip(x_s) {
                *r = isa.fma(m, *xs, *r);
            }
        }
        let b = beta[t];
        for r in row.iter_mut() {
            *r *= b;
        }
    }
}

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

/// Based's second-order Taylor feature map, row by row (DESIGN §3), F = 1 + D + D(D+1)/2:
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
        let mut tile_sum = 0.0f32;
        for (s, x) in row.iter_mut().enumerate() {
            *x = if s < cols { exp(*x - new_max) } else { 0.0 };
            tile_sum += *x;
        }
        *l = *l * alpha + tile_sum;
        o.iter_mut().for_each(|x| *x *= alpha);
        *m = new_max;
    }
}

/// Views a flat buffer as a shared tile of exactly `R x C` values (the FAVOR+ projection).
pub fn as_tile<const R: usize, const C: usize>(flat: &[f32]) -> Result<&Tile<R, C>> {
    let (rows, rest) = flat.as_chunks::<C>();
    if !rest.is_empty() {
        return Err(Error::Internal(
            "projection buffer is not a whole number of rows",
        ));
    }
    rows.try_into()
        .map_err(|_| Error::Internal("projection buffer has the wrong row count"))
}

/// FAVOR+ positive random features (DESIGN §3; the meaning and the stabiliser c = 0 are
/// documented in `attnc_runtime::favor`), row by row: with `x' = x / D^(1/4)`,
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
    gemm(isa, x, wt, out, rows, D, Tri::Full, false);
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

#[cfg(test)]
mod tests {
    use super::exp;

    #[test]
    fn arithmetic_exp_matches_libm_within_a_few_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.3f32;
        while x < 88.72 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        // 4 ulp of f32 is about 4.8e-7.
        assert!(worst < 4.8e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn arithmetic_exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(100.0), f32::INFINITY);
        for x in [88.5f32, 88.72, -87.0, -87.3] {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!(
                ((got - want) / want).abs() < 1e-6,
                "exp({x}) = {got:e}, want {want:e}"
            );
        }
    }
}
