//! Runtime-sized matrix products for the backward pass (its shapes are the spec's, read at run
//! time, where the forward's tile primitives take them as const generics). Row-major slices;
//! register-blocked micro-kernels vectorised inside the ISA trampolines: 8 rows x 32 columns
//! (16 accumulators) where the ISA has 32 vector registers (AVX-512), 4 x 16 otherwise; edges by
//! plain loops.

use crate::cpu::isa::Isa;

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
    let (c, a, b) = (&mut c[..m * n], &a[..m * k], &b[..k * n]);
    if !accumulate {
        c.fill(0.0);
    }
    if k == 0 || n == 0 {
        return;
    }
    let mut i = 0;
    if I::WIDE {
        while i + 8 <= m {
            rows::<I, 8, 2>(isa, c, a, b, i, k, n);
            i += 8;
        }
    }
    while i + 4 <= m {
        rows::<I, 4, 1>(isa, c, a, b, i, k, n);
        i += 4;
    }
    for r in i..m {
        edge(&mut c[r * n..(r + 1) * n], &a[r * k..(r + 1) * k], b, n, 0);
    }
}

/// Rows `i..i + R` of `c`: blocks of `16 W` columns, then 16, then the edge.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows<I: Isa, const R: usize, const W: usize>(
    isa: I,
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    i: usize,
    k: usize,
    n: usize,
) {
    let cblk = &mut c[i * n..(i + R) * n];
    let ablk = &a[i * k..(i + R) * k];
    let mut j = 0;
    while j + 16 * W <= n {
        block::<I, R, W>(isa, cblk, ablk, b, k, n, j);
        j += 16 * W;
    }
    while j + 16 <= n {
        block::<I, R, 1>(isa, cblk, ablk, b, k, n, j);
        j += 16;
    }
    if j < n {
        for (crow, arow) in cblk.chunks_exact_mut(n).zip(ablk.chunks_exact(k)) {
            edge(&mut crow[j..], arow, b, n, j);
        }
    }
}

/// Columns `j..j + 16 W` of `R` rows of `c`: `R x W` vector accumulators over the depth.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // fixed-size register blocks
fn block<I: Isa, const R: usize, const W: usize>(
    isa: I,
    cblk: &mut [f32],
    ablk: &[f32],
    b: &[f32],
    k: usize,
    n: usize,
    j: usize,
) {
    let mut acc = [[isa.zero(); W]; R];
    for (p, brow) in b.chunks_exact(n).enumerate().take(k) {
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
            let x = isa.splat(ablk[r * k + p]);
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
