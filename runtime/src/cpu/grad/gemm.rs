//! Runtime-sized matrix products for the backward pass (its shapes are the spec's, read at run
//! time, where the forward's tile primitives take them as const generics). Row-major slices;
//! register-blocked micro-kernels vectorised inside the ISA trampolines: 8 rows x 32 columns
//! (16 accumulators) where the ISA has 32 vector registers (AVX-512), 4 x 16 otherwise; edges by
//! plain loops.

use crate::cpu::isa::Isa;
pub use crate::cpu::tile::row_combination;

/// Which part of a product is needed, so that the register blocks of a causal chunk's
/// products skip the other triangle (of 64 x 64 products, about a quarter of the output blocks
/// of `LowerOut`, and 44% of the depth of `LowerA` and `UpperA`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    /// Every entry.
    Full,
    /// Only `c[i][j]` for `j <= i` is read afterwards: blocks wholly above the diagonal are
    /// skipped (left at zero, or untouched when accumulating); entries above the diagonal
    /// inside a computed block hold products all the same.
    LowerOut,
    /// `a` (m x k, m == k) is lower triangular: row `i` sums over depth `..=i` only.
    LowerA,
    /// `a` is upper triangular: row `i` sums over depth `i..` only.
    UpperA,
}

/// `c (m x n) (+)= a (m x k) . b (k x n)`; `accumulate = false` overwrites `c`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn matmul<I: Isa>(
    isa: I,
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    matmul_tri(isa, c, a, b, (m, k, n), accumulate, Tri::Full);
}

/// [`matmul`] of which only the [`Tri`] part is needed or nonzero.
#[inline(always)]
pub fn matmul_tri<I: Isa>(
    isa: I,
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    tri: Tri,
) {
    let lhs = Lhs {
        data: &a[..m * k],
        row: k,
        col: 1,
    };
    product(isa, c, lhs, b, (m, k, n), accumulate, tri);
}

/// [`matmul_tri`] of `a^T b` with `a` stored as it is (k x m): the left operand's entries are
/// broadcast one at a time, so reading it by columns costs nothing and no transpose is made.
/// `tri` describes `a^T`, the product's left operand.
#[inline(always)]
pub fn matmul_tri_t<I: Isa>(
    isa: I,
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    tri: Tri,
) {
    let lhs = Lhs {
        data: &a[..m * k],
        row: 1,
        col: m,
    };
    product(isa, c, lhs, b, (m, k, n), accumulate, tri);
}

/// The left operand of a product: entry (i, p) at `data[i * row + p * col]`.
#[derive(Clone, Copy)]
struct Lhs<'a> {
    data: &'a [f32],
    row: usize,
    col: usize,
}

impl Lhs<'_> {
    #[inline(always)]
    fn at(&self, i: usize, p: usize) -> f32 {
        self.data
            .get(i * self.row + p * self.col)
            .copied()
            .unwrap_or(0.0)
    }
}

/// `c (+)= lhs . b`, the [`Tri`] part.
#[inline(always)]
fn product<I: Isa>(
    isa: I,
    c: &mut [f32],
    a: Lhs<'_>,
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    tri: Tri,
) {
    let (c, b) = (&mut c[..m * n], &b[..k * n]);
    if !accumulate {
        c.fill(0.0);
    }
    if k == 0 || n == 0 {
        return;
    }
    let mut i = 0;
    if I::WIDE {
        while i + 8 <= m {
            rows::<I, 8, 2>(isa, c, a, b, i, (k, n), tri);
            i += 8;
        }
    }
    while i + 4 <= m {
        rows::<I, 4, 1>(isa, c, a, b, i, (k, n), tri);
        i += 4;
    }
    for r in i..m {
        let (k0, k1, n1) = extent(tri, r, r + 1, k, n);
        let crow = &mut c[r * n..r * n + n1];
        edge(crow, a, r, (k0, k1), b, n, 0);
    }
}

/// Depth range and column end of rows `i0..i1` under `tri`.
#[inline(always)]
fn extent(tri: Tri, i0: usize, i1: usize, k: usize, n: usize) -> (usize, usize, usize) {
    match tri {
        Tri::Full => (0, k, n),
        Tri::LowerOut => (0, k, n.min(i1)),
        Tri::LowerA => (0, k.min(i1), n),
        Tri::UpperA => (i0.min(k), k, n),
    }
}

/// Rows `i..i + R` of `c`: blocks of `16 W` columns, then 16, then the edge.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows<I: Isa, const R: usize, const W: usize>(
    isa: I,
    c: &mut [f32],
    a: Lhs<'_>,
    b: &[f32],
    i: usize,
    (k, n): (usize, usize),
    tri: Tri,
) {
    let (k0, k1, n1) = extent(tri, i, i + R, k, n);
    let cblk = &mut c[i * n..(i + R) * n];
    let mut j = 0;
    while j + 16 * W <= n && j < n1 {
        block::<I, R, W>(isa, cblk, a, i, b, (k0, k1), n, j);
        j += 16 * W;
    }
    while j + 16 <= n && j < n1 {
        block::<I, R, 1>(isa, cblk, a, i, b, (k0, k1), n, j);
        j += 16;
    }
    if j < n1 {
        for (r, crow) in cblk.chunks_exact_mut(n).enumerate() {
            edge(&mut crow[j..n1], a, i + r, (k0, k1), b, n, j);
        }
    }
}

/// Columns `j..j + 16 W` of `R` rows of `c` (rows `i..` of the left operand): `R x W` vector
/// accumulators over the depth `k0..k1`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // fixed-size register blocks
fn block<I: Isa, const R: usize, const W: usize>(
    isa: I,
    cblk: &mut [f32],
    a: Lhs<'_>,
    i: usize,
    b: &[f32],
    (k0, k1): (usize, usize),
    n: usize,
    j: usize,
) {
    let mut acc = [[isa.zero(); W]; R];
    for (p, brow) in b.chunks_exact(n).enumerate().take(k1).skip(k0) {
        let mut bv = [isa.zero(); W];
        for w in 0..W {
            let Some(src) = brow.get(j + 16 * w..j + 16 * (w + 1)) else {
                return;
            };
            let Ok(src) = <&[f32; 16]>::try_from(src) else {
                return;
            };
            bv[w] = isa.load(src);
        }
        for r in 0..R {
            let x = isa.splat(a.at(i + r, p));
            for w in 0..W {
                acc[r][w] = isa.vfma(x, bv[w], acc[r][w]);
            }
        }
    }
    for (crow, acc) in cblk.chunks_exact_mut(n).zip(&acc) {
        for (w, v) in acc.iter().enumerate() {
            let Some(dst) = crow.get_mut(j + 16 * w..j + 16 * (w + 1)) else {
                continue;
            };
            let Ok(dst) = <&mut [f32; 16]>::try_from(dst) else {
                continue;
            };
            let sum = isa.vfma(isa.splat(1.0), isa.load(dst), *v);
            isa.store(sum, dst);
        }
    }
}

/// One row of `c` from column `from` (`crow` is `c[r][from..from + crow.len()]`):
/// `crow += a[r][k0..k1] . b[k0..k1, from..]`.
#[inline(always)]
fn edge(
    crow: &mut [f32],
    a: Lhs<'_>,
    r: usize,
    (k0, k1): (usize, usize),
    b: &[f32],
    n: usize,
    from: usize,
) {
    for (p, brow) in b.chunks_exact(n).enumerate().take(k1).skip(k0) {
        let x = a.at(r, p);
        for (d, s) in crow.iter_mut().zip(&brow[from..]) {
            *d += x * s;
        }
    }
}

/// `dst (cols x rows) = src (rows x cols)^T`.
#[inline(always)]
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    let src = &src[..rows * cols];
    for (j, drow) in dst.chunks_exact_mut(rows.max(1)).take(cols).enumerate() {
        for (d, srow) in drow.iter_mut().zip(src.chunks_exact(cols)) {
            *d = srow[j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::isa::Portable;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matches_the_naive_product_for_every_edge() {
        for (m, k, n) in [
            (1, 1, 1),
            (4, 3, 16),
            (5, 7, 17),
            (64, 64, 64),
            (13, 33, 40),
            (8, 9, 48),
            (6, 5, 100),
            (3, 0, 5),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
            let want = naive(&a, &b, m, k, n);
            let mut c = vec![1.0; m * n];
            matmul(Portable, &mut c, &a, &b, m, k, n, false);
            assert_eq!(c, want, "{m}x{k}x{n}");
            matmul(Portable, &mut c, &a, &b, m, k, n, true);
            let twice: Vec<f32> = want.iter().map(|x| 2.0 * x).collect();
            assert_eq!(c, twice, "accumulate {m}x{k}x{n}");
        }
    }

    /// Each triangle mode against the full product: of a triangular `a` for `LowerA` and
    /// `UpperA` (exact), and on and below the diagonal for `LowerOut`.
    #[test]
    fn triangles_match_the_full_product_where_they_are_read() {
        for isa_wide in [false, true] {
            for m in [1, 5, 8, 13, 16, 33, 64] {
                for n in [m, 17, 48] {
                    let k = m;
                    let full: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
                    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
                    let lower: Vec<f32> = (0..m * k)
                        .map(|i| if i % k <= i / k { full[i] } else { 0.0 })
                        .collect();
                    let upper: Vec<f32> = (0..m * k)
                        .map(|i| if i % k >= i / k { full[i] } else { 0.0 })
                        .collect();
                    let run = |a: &[f32], tri: Tri| {
                        let mut c = vec![0.0; m * n];
                        if isa_wide {
                            run_wide(&mut c, a, &b, (m, k, n), tri);
                        } else {
                            matmul_tri(Portable, &mut c, a, &b, (m, k, n), false, tri);
                        }
                        c
                    };
                    assert_eq!(run(&lower, Tri::LowerA), naive(&lower, &b, m, k, n));
                    assert_eq!(run(&upper, Tri::UpperA), naive(&upper, &b, m, k, n));
                    let (got, want) = (run(&full, Tri::LowerOut), naive(&full, &b, m, k, n));
                    for i in 0..m {
                        for j in 0..=i.min(n - 1) {
                            assert_eq!(got[i * n + j], want[i * n + j], "{m}x{n} ({i}, {j})");
                        }
                    }
                }
            }
        }
    }

    /// `a^T b` read from `a` as stored against the product of the explicit transpose, every
    /// triangle mode (of the logical left operand), portable and AVX-512 blocks.
    #[test]
    fn transposed_left_operands_match_the_explicit_transpose() {
        for (m, k, n) in [
            (1, 1, 1),
            (5, 7, 17),
            (8, 8, 48),
            (13, 13, 40),
            (64, 64, 64),
        ] {
            let full: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
            for tri in [Tri::Full, Tri::LowerOut, Tri::LowerA, Tri::UpperA] {
                if tri != Tri::Full && tri != Tri::LowerOut && m != k {
                    continue;
                }
                // The logical left operand, triangular where `tri` says so, and as stored.
                let keep = |i: usize, p: usize| match tri {
                    Tri::LowerA => p <= i,
                    Tri::UpperA => p >= i,
                    _ => true,
                };
                let a: Vec<f32> = (0..m * k)
                    .map(|x| if keep(x / k, x % k) { full[x] } else { 0.0 })
                    .collect();
                let mut at = vec![0.0; k * m];
                transpose(&a, m, k, &mut at);
                // LowerOut promises only the entries on and below the diagonal.
                let read = |c: &[f32]| -> Vec<f32> {
                    let lower = |i: usize| {
                        if tri == Tri::LowerOut {
                            n.min(i + 1)
                        } else {
                            n
                        }
                    };
                    (0..m)
                        .flat_map(|i| c[i * n..i * n + lower(i)].to_vec())
                        .collect()
                };
                let mut want = vec![0.0; m * n];
                matmul_tri(Portable, &mut want, &a, &b, (m, k, n), false, tri);
                let mut got = vec![0.0; m * n];
                matmul_tri_t(Portable, &mut got, &at, &b, (m, k, n), false, tri);
                assert_eq!(read(&got), read(&want), "{m}x{k}x{n} {tri:?}");
                #[cfg(target_arch = "x86_64")]
                if let Some(isa) = crate::cpu::isa::Avx512::detect() {
                    // SAFETY: `detect` returned the marker, so the CPU has AVX-512.
                    unsafe { wide_t(isa, &mut got, &at, &b, (m, k, n), tri) };
                    assert_eq!(read(&got), read(&want), "avx512 {m}x{k}x{n} {tri:?}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    unsafe fn wide_t(
        isa: crate::cpu::isa::Avx512,
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        dims: (usize, usize, usize),
        tri: Tri,
    ) {
        matmul_tri_t(isa, c, a, b, dims, false, tri);
    }

    /// A row combination against the plain sum, for widths with and without full vectors.
    #[test]
    fn row_combination_matches_the_plain_sum() {
        for n in [1, 7, 16, 17, 64, 80] {
            for depth in [0, 1, 5, 64] {
                let m: Vec<f32> = (0..depth * n)
                    .map(|i| ((i * 7) % 11) as f32 - 5.0)
                    .collect();
                let coefs: Vec<f32> = (0..depth).map(|p| (p % 5) as f32 - 2.0).collect();
                let mut want: Vec<f32> = (0..n).map(|j| j as f32).collect();
                let mut got = want.clone();
                for p in 0..depth {
                    for j in 0..n {
                        want[j] += coefs[p] * m[p * n + j];
                    }
                }
                row_combination(Portable, &mut got, &m, &coefs);
                assert_eq!(got, want, "n = {n}, depth = {depth}");
            }
        }
    }

    /// The 8 x 32 blocks where the machine has AVX-512, else the portable ones again.
    fn run_wide(c: &mut [f32], a: &[f32], b: &[f32], dims: (usize, usize, usize), tri: Tri) {
        #[cfg(target_arch = "x86_64")]
        if let Some(isa) = crate::cpu::isa::Avx512::detect() {
            // SAFETY: `detect` returned the marker, so the CPU has AVX-512.
            return unsafe { wide(isa, c, a, b, dims, tri) };
        }
        matmul_tri(Portable, c, a, b, dims, false, tri);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    unsafe fn wide(
        isa: crate::cpu::isa::Avx512,
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        dims: (usize, usize, usize),
        tri: Tri,
    ) {
        matmul_tri(isa, c, a, b, dims, false, tri);
    }
}
