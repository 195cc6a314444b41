//! Elementwise maps and row scalings, dot products, row and column sums.

use super::{live, Tile};
use crate::cpu::isa::Isa;

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

/// `dst += src`, elementwise over equal lengths.
#[inline(always)]
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
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

/// Multiplies the live rows by a constant.
#[inline(always)]
pub fn scale_rows<const R: usize, const C: usize>(t: &mut Tile<R, C>, rows: usize, s: f32) {
    for x in live(t, rows).iter_mut() {
        *x *= s;
    }
}

/// Divides each live row by its L2 norm: `x / sqrt(|x|^2 + eps)` (flash-linear-attention's form; the
/// plan passes `qk_norm = l2`'s eps).
#[inline(always)]
pub fn l2_normalize_rows<I: Isa, const R: usize, const C: usize>(
    isa: I,
    t: &mut Tile<R, C>,
    rows: usize,
    eps: f32,
) {
    for row in t.iter_mut().take(rows) {
        let inv = 1.0 / (dot(isa, row, row) + eps).sqrt();
        for x in row.iter_mut() {
            *x *= inv;
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
pub(super) fn row_sum<const C: usize>(a: &[f32; C]) -> f32 {
    let (a8, rest) = a.as_chunks::<8>();
    let mut lanes = [0.0f32; 8];
    for x in a8 {
        for l in 0..8 {
            lanes[l] += x[l];
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
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

/// `out[t] = sum_s a[t][s]` for live rows (the lower-triangular scores give q_t · sum_{s<=t} k_s).
#[inline(always)]
pub fn row_sums<const R: usize, const C: usize>(a: &Tile<R, C>, rows: usize, out: &mut [f32; R]) {
    for (o, row) in out.iter_mut().zip(a).take(rows) {
        *o = row_sum(row);
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
