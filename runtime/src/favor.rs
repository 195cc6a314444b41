//! FAVOR+ (Performer, Choromanski et al. 2021): the projection that `feature_map = favor(..)`
//! takes at run time, and how attnc computes the feature map from it.
//!
//! # The feature map
//!
//! For a spec with `head_dim = dk` and `feature_map = favor(features = m)` (so
//! `FEATURE_DIM = m`), every query and key row x (after `qk_norm`, if any) becomes
//!
//! ```text
//! x' = x / dk^(1/4),    phi(x)_i = exp(w_i . x' - |x'|^2 / 2 - c) / sqrt(m),    i = 1..m
//! ```
//!
//! where `w` (m x dk) is the projection passed to `forward`, `forward_with_state` and `step`
//! (last among the inputs) and queries then get the spec's `scale`, as for every feature map.
//! For rows w_i drawn from N(0, I), E[phi(q) . phi(k)] = exp(q . k / sqrt(dk)) e^(-2c): with
//! `normalize = sum` the model approximates softmax attention with scale 1/sqrt(dk), better as m
//! grows. Use the same `w` for every call on one sequence (prefill, chained `forward_with_state`
//! calls, `step`): the feature map, and so the state, depends on it.
//!
//! # The stabiliser: c = 0
//!
//! attnc computes `exp(w_i . x' - |x'|^2 / 2) / sqrt(m)` directly, for queries and keys alike:
//! the stabiliser c is 0. The reasons:
//!
//! - **It cannot overflow for any input norm.** Completing the square,
//!   `w . x' - |x'|^2 / 2 = |w|^2 / 2 - |x' - w|^2 / 2 <= |w|^2 / 2`: the exponent is bounded by
//!   the projection alone, whatever x is. It stays below f32's limit (`exp` overflows past 88.7)
//!   when every row has `|w_i|^2 < 177`; rows from [`orthogonal_gaussian`] have
//!   `|w_i|^2 ~ chi^2(dk)`, mean dk, so for dk <= 64 that holds with overwhelming probability
//!   (177 is more than 8 standard deviations above 64) and inputs of norm 100, or of any norm,
//!   give finite features. Large inputs drive the exponent towards `-inf`: their features
//!   underflow to 0 (an output of 0, also under `normalize = sum`, where it is
//!   `0 / (0 + 1e-6)`). For dk >= 128 the bound `|w|^2 / 2` nears the limit, and an input within
//!   a few units of `dk^(1/4) w_i` can overflow; `qk_norm = l2` removes that (it bounds
//!   `|x'| <= dk^(-1/4)`, so the exponent is at most `|w_i| / dk^(1/4)`).
//! - **It keeps `forward`, `forward_with_state` and `step` consistent.** Performer subtracts the
//!   maximum over the whole sequence for keys and a per-row maximum for queries. A stabiliser
//!   that depends on other tokens cannot be reproduced by `step` (one token at a time) or by
//!   chained calls, and a per-row stabiliser for keys changes the relative weight of tokens,
//!   which no normaliser undoes. Only a constant c is consistent.
//! - **A constant c buys nothing and costs accuracy.** Under `normalize = sum` a constant c
//!   cancels except against the normaliser's `+ 1e-6`, which it magnifies by `e^(2c)`; without a
//!   normaliser it only rescales the outputs by `e^(-2c)`. So c = 0: the features keep their
//!   natural scale, the meaning is exactly the formula above, and `phi(q) . phi(k)` is an
//!   estimate of `exp(q . k / sqrt(dk))` itself.
//!
//! The scores `phi(q) . phi(k)` estimate `exp(q . k / sqrt(dk))`; where that exceeds f32's range
//! (|q| |k| / sqrt(dk) above about 88) the un-normalised sums can overflow like the exact kernel
//! would. Scale or normalise such inputs first.
//!
//! # The projection
//!
//! [`orthogonal_gaussian`] samples `w` as Performer's `GaussianOrthogonalRandomMatrix` does:
//! blocks of dk orthonormal rows (Gram–Schmidt on Gaussian matrices, equivalent to their QR
//! factors), stacked until there are m rows (the last block cut), each row then rescaled by the
//! norm of a fresh Gaussian dk-vector, so rows have the chi(dk) lengths of Gaussian rows while
//! rows of one block stay orthogonal (which lowers the estimator's variance). Seeded and
//! deterministic: the same `(m, dk, seed)` gives the same matrix on every machine and release.

use crate::error::{Error, Result};
use dfdx::shapes::Const;
use dfdx::tensor::{Cpu, Tensor, TensorFromVec};

/// A seeded Gaussian projection for FAVOR+ (`M` = the spec's `FEATURE_DIM`, `DK` = its
/// `HEAD_DIM`), sampled as Performer does: see the [module docs](self). The same seed gives the
/// same matrix everywhere; the values are [`orthogonal_gaussian_vec`]`(M, DK, seed)`.
///
/// ```
/// # use attnc_runtime as attnc;
/// use attnc::favor::orthogonal_gaussian;
/// use dfdx::shapes::Const;
/// use dfdx::tensor::Tensor;
///
/// let w: Tensor<(Const<32>, Const<16>), f32, _> = orthogonal_gaussian(7).unwrap();
/// let rows = w.as_vec();
/// // Rows 0 and 1 lie in the same block of 16: orthogonal.
/// let dot: f32 = rows[..16].iter().zip(&rows[16..32]).map(|(a, b)| a * b).sum();
/// assert!(dot.abs() < 1e-4);
/// assert_eq!(orthogonal_gaussian::<32, 16>(7).unwrap().as_vec(), rows);
/// ```
///
/// Errors only if dfdx cannot build the tensor ([`Error::Tensor`]).
pub fn orthogonal_gaussian<const M: usize, const DK: usize>(
    seed: u64,
) -> Result<Tensor<(Const<M>, Const<DK>), f32, Cpu>> {
    Cpu::default()
        .try_tensor_from_vec(orthogonal_gaussian_vec(M, DK, seed), (Const, Const))
        .map_err(|e| Error::Tensor(format!("{e:?}")))
}

/// The values of [`orthogonal_gaussian`] for runtime sizes: `m x dk`, row-major (row i is
/// w_i). Empty when `m` or `dk` is 0.
///
/// ```
/// # use attnc_runtime as attnc;
/// let w = attnc::favor::orthogonal_gaussian_vec(20, 8, 1);
/// assert_eq!(w.len(), 20 * 8);
/// // Row lengths are chi(8)-distributed: around sqrt(8).
/// let norm = |i: usize| w[i * 8..(i + 1) * 8].iter().map(|x| x * x).sum::<f32>().sqrt();
/// assert!((0..20).all(|i| norm(i) > 0.5 && norm(i) < 8.0));
/// ```
pub fn orthogonal_gaussian_vec(m: usize, dk: usize, seed: u64) -> Vec<f32> {
    if m == 0 || dk == 0 {
        return Vec::new();
    }
    let mut rng = Normal::new(seed);
    // The blocks first, then the row lengths (Performer's order of sampling).
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(m);
    while rows.len() < m {
        let block = orthonormal_block(&mut rng, dk);
        let take = (m - rows.len()).min(dk);
        rows.extend(block.into_iter().take(take));
    }
    let mut out = Vec::with_capacity(m * dk);
    for row in &rows {
        let length = (0..dk)
            .map(|_| {
                let g = rng.sample();
                g * g
            })
            .sum::<f64>()
            .sqrt();
        out.extend(row.iter().map(|&x| (x * length) as f32));
    }
    out
}

/// dk orthonormal rows: Gram–Schmidt (each vector orthogonalised twice, for rows orthogonal to
/// f64 precision) on standard Gaussian vectors, i.e. the Q factor of a Gaussian matrix.
fn orthonormal_block(rng: &mut Normal, dk: usize) -> Vec<Vec<f64>> {
    let mut block: Vec<Vec<f64>> = Vec::with_capacity(dk);
    while block.len() < dk {
        let mut v: Vec<f64> = (0..dk).map(|_| rng.sample()).collect();
        for _ in 0..2 {
            for u in &block {
                let d: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(x, y)| *x -= d * y);
            }
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        // A Gaussian vector (almost) inside the span of the others has probability zero; should
        // one come, draw another.
        if norm > 1e-6 {
            v.iter_mut().for_each(|x| *x /= norm);
            block.push(v);
        }
    }
    block
}

/// Standard normal samples: SplitMix64 (a fixed, portable generator, so a seed means the same
/// matrix forever) and the Box–Muller transform, both values of each pair used.
struct Normal {
    state: u64,
    spare: Option<f64>,
}

impl Normal {
    fn new(seed: u64) -> Normal {
        Normal {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: never 0, so the logarithm below is finite.
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn sample(&mut self) -> f64 {
        if let Some(x) = self.spare.take() {
            return x;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(w: &[f32], dk: usize, i: usize) -> &[f32] {
        &w[i * dk..(i + 1) * dk]
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    #[test]
    fn blocks_are_orthogonal_and_rows_have_chi_lengths() {
        let (m, dk) = (40, 16);
        let w = orthogonal_gaussian_vec(m, dk, 3);
        assert_eq!(w.len(), m * dk);
        for i in 0..m {
            for j in 0..m {
                let same_block = i / dk == j / dk;
                let d = dot(row(&w, dk, i), row(&w, dk, j));
                let scale = (dot(row(&w, dk, i), row(&w, dk, i))
                    * dot(row(&w, dk, j), row(&w, dk, j)))
                .sqrt();
                if i != j && same_block {
                    assert!(d.abs() <= 1e-5 * scale, "rows {i}, {j}: {d}");
                }
            }
        }
        // Mean squared length over many rows: dk (chi^2(dk) has mean dk).
        let many = orthogonal_gaussian_vec(4096, dk, 11);
        let mean = (0..4096)
            .map(|i| dot(row(&many, dk, i), row(&many, dk, i)))
            .sum::<f64>()
            / 4096.0;
        assert!((mean - dk as f64).abs() < 0.5, "mean |w|^2 = {mean}");
    }

    #[test]
    fn seeded_and_deterministic() {
        let a = orthogonal_gaussian_vec(24, 8, 5);
        assert_eq!(a, orthogonal_gaussian_vec(24, 8, 5));
        assert_ne!(a, orthogonal_gaussian_vec(24, 8, 6));
        assert_eq!(orthogonal_gaussian_vec(8, 8, 5).len(), 64);
        assert!(orthogonal_gaussian_vec(0, 8, 5).is_empty());
        assert!(orthogonal_gaussian_vec(8, 0, 5).is_empty());
        let t = orthogonal_gaussian::<24, 8>(5).unwrap();
        assert_eq!(t.as_vec(), a);
    }

    /// The overflow argument of the module docs: exponents are at most |w_i|^2 / 2, and rows of
    /// up to dk = 64 stay far below 2 * 88.7.
    #[test]
    fn rows_stay_below_the_overflow_bound_for_dk_up_to_64() {
        for dk in [8, 16, 32, 64] {
            for seed in 0..4 {
                let w = orthogonal_gaussian_vec(4096, dk, seed);
                let worst = (0..4096)
                    .map(|i| dot(row(&w, dk, i), row(&w, dk, i)))
                    .fold(0.0f64, f64::max);
                assert!(worst < 130.0, "dk = {dk}, seed {seed}: max |w|^2 = {worst}");
            }
        }
    }

    #[test]
    fn gaussian_samples_have_unit_variance() {
        let mut rng = Normal::new(1);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.sample()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
    }
}
