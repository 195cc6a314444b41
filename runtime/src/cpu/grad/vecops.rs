//! Vector loops of the backward pass, written so that LLVM vectorises them inside the ISA
//! trampolines: elementwise loops are plain zips; reductions keep [`LANES`] partial sums (IEEE
//! f32 addition is not associative, so a single running sum would stay scalar).

/// Partial sums of a reduction: one AVX-512 register, two AVX2 registers.
const LANES: usize = 16;

/// `y += a x`.
#[inline(always)]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * *x;
    }
}

/// `y *= a`.
#[inline(always)]
pub fn scale(y: &mut [f32], a: f32) {
    for y in y.iter_mut() {
        *y *= a;
    }
}

/// `a . b` over the shorter length.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// Row `i` of a row-major matrix with `cols` columns (empty past the end).
#[inline(always)]
pub fn row(m: &[f32], i: usize, cols: usize) -> &[f32] {
    m.get(i * cols..(i + 1) * cols).unwrap_or(&[])
}

/// As [`row`], mutable.
#[inline(always)]
pub fn row_mut(m: &mut [f32], i: usize, cols: usize) -> &mut [f32] {
    m.get_mut(i * cols..(i + 1) * cols).unwrap_or(&mut [])
}

/// Element `i`, or `default` past the end (optional per-token scalars are empty).
#[inline(always)]
pub fn at(x: &[f32], i: usize, default: f32) -> f32 {
    x.get(i).copied().unwrap_or(default)
}
