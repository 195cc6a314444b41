//! Tile products: the register-blocked [`gemm`] and its micro-kernels, and the forward
//! substitution of the delta rules.

use super::{lanes16, lanes16_mut, Tile};
use crate::cpu::isa::Isa;
use attnc_codegen::abi::Tri;

/// What one tile product computes: `c[..rows] (= or +=) a[..rows, ..depth] · b[..depth]`, on the
/// part `tri` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Product {
    /// Live rows of `a` and `c` (the rows of `c` past them are left as they are).
    pub rows: usize,
    /// Columns of `a`, and rows of `b`, that take part.
    pub depth: usize,
    /// Which part of the product is computed.
    pub tri: Tri,
    /// `c += a · b` when set, else `c = a · b`.
    pub accumulate: bool,
}

/// `c[..rows] (= or +=) a[..rows, ..depth] · b[..depth]`, as `product` says. One call: the
/// product is compiled once per ISA and tile shape ([`Isa::gemm`]), not at every call site, which
/// keeps the build time of a spec down; a call costs nothing next to a tile product.
#[inline(always)]
pub fn gemm<I: Isa, const M: usize, const K: usize, const N: usize>(
    isa: I,
    a: &Tile<M, K>,
    b: &Tile<K, N>,
    c: &mut Tile<M, N>,
    product: Product,
) {
    isa.gemm(a, b, c, product);
}

/// `c[..rows] (= or +=) a[..rows, ..depth] · b[..depth]`, register blocked: a block of 4 rows
/// x 16 columns (2 x 16 on AVX-512) of vector accumulators stays in registers over the whole
/// depth; column tails use 8-wide and single-column scalar blocks.
#[inline(always)]
pub(crate) fn gemm_kernel<I: Isa, const M: usize, const K: usize, const N: usize>(
    isa: I,
    a: &Tile<M, K>,
    b: &Tile<K, N>,
    c: &mut Tile<M, N>,
    product: Product,
) {
    let rows = product.rows.min(M);
    let p = Product {
        rows,
        depth: product.depth.min(K),
        ..product
    };
    let mut r0 = 0;
    while r0 < rows {
        if r0 + 4 <= rows {
            gemm_rows::<I, 4, M, K, N>(isa, a, b, c, r0, p);
            r0 += 4;
        } else {
            gemm_rows::<I, 1, M, K, N>(isa, a, b, c, r0, p);
            r0 += 1;
        }
    }
}

/// One block of `RB` output rows, from `r0`, across all columns.
#[inline(always)]
fn gemm_rows<I: Isa, const RB: usize, const M: usize, const K: usize, const N: usize>(
    isa: I,
    a: &Tile<M, K>,
    b: &Tile<K, N>,
    c: &mut Tile<M, N>,
    r0: usize,
    p: Product,
) {
    let Product { depth, tri, .. } = p;
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
    // What the micro-kernels compute: the depth this block reads.
    let block = Product { depth: kmax, ..p };
    let mut c0 = 0;
    if I::WIDE {
        while c0 + 64 <= col_end {
            gemm_vblock::<I, RB, 4, M, K, N>(isa, a, b, c, (r0, c0), block);
            c0 += 64;
        }
        while c0 + 32 <= col_end {
            gemm_vblock::<I, RB, 2, M, K, N>(isa, a, b, c, (r0, c0), block);
            c0 += 32;
        }
    }
    while c0 + 16 <= col_end {
        gemm_vblock::<I, RB, 1, M, K, N>(isa, a, b, c, (r0, c0), block);
        c0 += 16;
    }
    while c0 + 8 <= col_end {
        gemm_block::<I, RB, 8, M, K, N>(isa, a, b, c, (r0, c0), block);
        c0 += 8;
    }
    while c0 < col_end {
        gemm_block::<I, RB, 1, M, K, N>(isa, a, b, c, (r0, c0), block);
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

/// The vector micro-kernel: `RB x NV` 16-lane accumulators kept in registers over the depth,
/// for the block of `c` at (row `r0`, column `c0`); `block.depth` is the depth it reads.
#[inline(always)]
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
    (r0, c0): (usize, usize),
    block: Product,
) {
    let Product {
        depth: kmax,
        accumulate,
        ..
    } = block;
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

/// The scalar micro-kernel for column tails: an `RB x NB` block of accumulators (arguments as
/// for [`gemm_vblock`]).
#[inline(always)]
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
    (r0, c0): (usize, usize),
    block: Product,
) {
    let Product {
        depth: kmax,
        accumulate,
        ..
    } = block;
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

/// Forward substitution, in place: on entry `x` holds R, on exit the solution of
/// `(I + strict_lower(diag(beta) L)) X = diag(beta) R`, i.e. `X_t = beta_t (R_t - sum_{s<t} L_ts X_s)`.
/// Row by row, each row held in registers over its whole sum ([`row_combination`]).
#[inline(always)]
pub fn forward_substitute<I: Isa, const R: usize, const C: usize>(
    isa: I,
    x: &mut Tile<R, C>,
    lower: &Tile<R, R>,
    beta: &[f32; R],
    rows: usize,
) {
    let mut minus_l = [0.0f32; R];
    for t in 0..rows.min(R) {
        let (done, rest) = x.split_at_mut(t);
        let Some(row) = rest.first_mut() else {
            return;
        };
        for (m, l) in minus_l.iter_mut().zip(&lower[t][..t]) {
            *m = -*l;
        }
        row_combination(isa, row, done.as_flattened(), &minus_l[..t]);
        let b = beta[t];
        for r in row.iter_mut() {
            *r *= b;
        }
    }
}

/// `out += Σ_p coefs[p] m_p` over the first `coefs.len()` rows `m_p` of the row-major `m`
/// (rows of `out.len()` floats): one row of a triangular solve by substitution, held in
/// registers over the whole sum (two partial sums per vector, so consecutive terms do not wait
/// on each other).
#[inline(always)]
pub fn row_combination<I: Isa>(isa: I, out: &mut [f32], m: &[f32], coefs: &[f32]) {
    let n = out.len();
    let m = &m[..coefs.len() * n];
    let mut j = 0;
    while j + 64 <= n {
        combine_block::<I, 4>(isa, out, m, j, coefs);
        j += 64;
    }
    while j + 16 <= n {
        combine_block::<I, 1>(isa, out, m, j, coefs);
        j += 16;
    }
    if j < n {
        for (mrow, &c) in m.chunks_exact(n).zip(coefs) {
            for (d, &x) in out[j..].iter_mut().zip(&mrow[j..]) {
                *d += c * x;
            }
        }
    }
}

/// Columns `j..j + 16 W` of [`row_combination`].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // fixed-size register blocks
fn combine_block<I: Isa, const W: usize>(
    isa: I,
    out: &mut [f32],
    m: &[f32],
    j: usize,
    coefs: &[f32],
) {
    let n = out.len();
    // Two accumulator sets, even and odd terms (a runtime index would keep them in memory).
    let (mut even, mut odd) = ([isa.zero(); W], [isa.zero(); W]);
    let add = |acc: &mut [I::V; W], mrow: &[f32], c: f32| {
        let x = isa.splat(c);
        let Some(src) = mrow.get(j..j + 16 * W) else {
            return;
        };
        for (a, v) in acc.iter_mut().zip(src.chunks_exact(16)) {
            if let Ok(v) = <&[f32; 16]>::try_from(v) {
                *a = isa.vfma(x, isa.load(v), *a);
            }
        }
    };
    let mut terms = m.chunks_exact(n).zip(coefs);
    while let Some((mrow, &c)) = terms.next() {
        add(&mut even, mrow, c);
        let Some((mrow, &c)) = terms.next() else {
            break;
        };
        add(&mut odd, mrow, c);
    }
    for w in 0..W {
        let Some(dst) = out.get_mut(j + 16 * w..j + 16 * (w + 1)) else {
            return;
        };
        let Ok(dst) = <&mut [f32; 16]>::try_from(dst) else {
            return;
        };
        let one = isa.splat(1.0);
        let sum = isa.vfma(one, even[w], odd[w]);
        isa.store(isa.vfma(one, isa.load(dst), sum), dst);
    }
}
