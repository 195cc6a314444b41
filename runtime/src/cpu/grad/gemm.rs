//! Runtime-sized matrix products for the backward pass (its shapes are the spec's, read at run
//! time, where the forward's tile primitives take them as const generics). Row-major slices;
//! a register-blocked micro-kernel of 4 rows x 16 columns (one AVX-512 register per row, four
//! accumulators), vectorised inside the ISA trampolines; edges by plain loops.

use crate::cpu::isa::Isa;

/// Rows of the micro-kernel.
const MR: usize = 4;

/// `c (m x n) (+)= a (m x k) . b (k x n)`; `accumulate = false` overwrites `c`. Blocks of 4 rows
/// x 32 columns keep 8 accumulators in registers (4 x 16 and then plain loops at the edges).
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
    let (c, a, b) = (&mut c[..m * n], &a[..m * k], &b[..k * n]);
    if !accumulate {
        c.fill(0.0);
    }
    if k == 0 || n == 0 {
        return;
    }
    let mut rows = c.chunks_exact_mut(n * MR);
    let mut arows = a.chunks_exact(k * MR);
    for (cblk, ablk) in rows.by_ref().zip(arows.by_ref()) {
        let mut j = 0;
        while j + 32 <= n {
            block::<I, 2>(isa, cblk, ablk, b, k, n, j);
            j += 32;
        }
        if j + 16 <= n {
            block::<I, 1>(isa, cblk, ablk, b, k, n, j);
            j += 16;
        }
        if j < n {
            for (crow, arow) in cblk.chunks_exact_mut(n).zip(ablk.chunks_exact(k)) {
                edge(&mut crow[j..], arow, b, n, j);
            }
        }
    }
    for (crow, arow) in rows
        .into_remainder()
        .chunks_exact_mut(n)
        .zip(arows.remainder().chunks_exact(k))
    {
        edge(crow, arow, b, n, 0);
    }
}

/// Columns `j..j + 16 W` of 4 rows of `c`: `4 x W` vector accumulators over the depth.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // fixed-size register blocks
fn block<I: Isa, const W: usize>(
    isa: I,
    cblk: &mut [f32],
    ablk: &[f32],
    b: &[f32],
    k: usize,
    n: usize,
    j: usize,
) {
    let mut acc = [[isa.zero(); W]; MR];
    let (a0, rest) = ablk.split_at(k);
    let (a1, rest) = rest.split_at(k);
    let (a2, a3) = rest.split_at(k);
    for ((((brow, &x0), &x1), &x2), &x3) in b.chunks_exact(n).zip(a0).zip(a1).zip(a2).zip(a3) {
        let xs = [isa.splat(x0), isa.splat(x1), isa.splat(x2), isa.splat(x3)];
        for w in 0..W {
            let Some(bv) = brow.get(j + 16 * w..j + 16 * (w + 1)) else {
                continue;
            };
            let Ok(bv) = <&[f32; 16]>::try_from(bv) else {
                continue;
            };
            let bv = isa.load(bv);
            for r in 0..MR {
                acc[r][w] = isa.vfma(xs[r], bv, acc[r][w]);
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

/// One row of `c` from column `from`: `crow += arow . b[:, from..]`.
#[inline(always)]
fn edge(crow: &mut [f32], arow: &[f32], b: &[f32], n: usize, from: usize) {
    for (brow, &x) in b.chunks_exact(n).zip(arow) {
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
}
