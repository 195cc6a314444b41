//! What a dfdx 0.13 user would write today, timed next to attnc in the same run:
//!
//! - linear attention in its quadratic masked form (matmul, causal mask, matmul, normaliser);
//!   gated decay as the masked matrix `exp(G_t - G_s)` built from a cumulative sum (a matmul with a
//!   lower-triangular ones matrix: dfdx has no cumsum). The delta rules have no such closed form
//!   (their state update is not a masked matmul), so they have no dfdx row.
//! - softmax attention decoding against a KV cache: per token, `softmax(q K^T) V` over the cache.

use crate::specs::{Inputs, Variant};
use dfdx::prelude::*;

type Scores = Tensor<(usize, usize, usize, usize), f32, Cpu>;
type Out = Tensor<(usize, usize, usize, Const<64>), f32, Cpu>;

/// Whether a variant has a quadratic masked form.
pub fn has_dfdx_form(v: Variant) -> bool {
    !matches!(v, Variant::Delta | Variant::GatedDelta)
}

/// elu(x) + 1 from dfdx ops: relu(x) + exp(min(x, 0)).
fn elu_plus_one(x: Out) -> Out {
    x.clone().relu() + x.clamp(f32::MIN, 0.0).exp()
}

/// The quadratic masked form of a variant, or `None` where it has none (delta rules).
pub fn dfdx_linear(v: Variant, x: &Inputs) -> Option<Out> {
    let (b, h, n, _) = *x.q.shape();
    let dev = Cpu::default();
    let scale = 1.0 / 8.0;
    match v {
        Variant::Plain => {
            let a: Scores =
                x.q.clone()
                    .matmul(x.k.clone().permute::<_, Axes4<0, 1, 3, 2>>());
            let a = a.lower_tri(None) * scale;
            Some(a.matmul(x.v.clone()))
        }
        Variant::Elu => {
            let (q, k) = (elu_plus_one(x.q.clone()) * scale, elu_plus_one(x.k.clone()));
            let a: Scores = q
                .matmul(k.permute::<_, Axes4<0, 1, 3, 2>>())
                .lower_tri(None);
            let den = a.clone().sum::<(usize, usize, usize), Axis<3>>() + 1e-6;
            let o = a.matmul(x.v.clone());
            Some(o / den.broadcast_like(&(b, h, n, Const::<64>)))
        }
        Variant::Gated => {
            // G = cumsum(g) as a matmul with lower-triangular ones; D_ts = exp(G_t - G_s), s <= t.
            let ones: Tensor<(usize, usize), f32, Cpu> = dev.ones_like(&(n, n)).lower_tri(None);
            let g: Tensor<(usize, usize, usize, Const<1>), f32, Cpu> =
                x.g.clone().reshape_like(&(b, h, n, Const::<1>));
            let cum: Tensor<(usize, usize, usize, Const<1>), f32, Cpu> = ones
                .broadcast_like::<_, Axes2<0, 1>>(&(b, h, n, n))
                .matmul(g);
            let cum: Tensor<(usize, usize, usize), f32, Cpu> = cum.reshape_like(&(b, h, n));
            // G_t along rows (axis 2), G_s along columns (axis 3).
            let gt = cum.clone().broadcast_like::<_, Axis<3>>(&(b, h, n, n));
            let gs = cum.broadcast_like::<_, Axis<2>>(&(b, h, n, n));
            // Above the diagonal G_t - G_s > 0 could overflow exp: mask before exp.
            let diff: Scores = (gt - gs).lower_tri(None).exp().lower_tri(None);
            let a: Scores =
                x.q.clone()
                    .matmul(x.k.clone().permute::<_, Axes4<0, 1, 3, 2>>());
            Some((a * diff * scale).matmul(x.v.clone()))
        }
        Variant::Delta | Variant::GatedDelta => None,
    }
}

/// A softmax KV cache of `n` tokens per head: keys and values (H, N, 64).
pub struct KvCache {
    pub k: Tensor<(usize, usize, Const<64>), f32, Cpu>,
    pub v: Tensor<(usize, usize, Const<64>), f32, Cpu>,
}

impl KvCache {
    /// A random cache.
    pub fn random(h: usize, n: usize) -> KvCache {
        let dev = Cpu::seed_from_u64(7);
        KvCache {
            k: dev.sample_normal_like(&(h, n, Const)),
            v: dev.sample_normal_like(&(h, n, Const)),
        }
    }

    /// One decoding step of softmax attention: `softmax(q K^T / 8) V`, q (H, 1, 64).
    pub fn decode(
        &self,
        q: &Tensor<(usize, Const<1>, Const<64>), f32, Cpu>,
    ) -> Tensor<(usize, Const<1>, Const<64>), f32, Cpu> {
        let scores = q
            .clone()
            .matmul(self.k.clone().permute::<_, Axes3<0, 2, 1>>())
            * 0.125;
        scores.softmax::<Axis<2>>().matmul(self.v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::specs;

    /// The baselines compute what attnc computes (else the speed comparison means nothing).
    #[test]
    fn dfdx_forms_match_attnc() {
        let x = Inputs::random(1, 2, 100, 3);
        for v in [Variant::Plain, Variant::Elu, Variant::Gated] {
            let want = specs::forward(v, 32, &x).expect("attnc").as_vec();
            let got = dfdx_linear(v, &x).expect("has a form").as_vec();
            let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs() / scale));
            assert!(err <= 1e-4, "{}: max-rel {err:e}", v.name());
        }
    }

    /// KV-cache decoding is softmax attention over the cache, checked against a direct sum.
    #[test]
    fn kv_decode_matches_a_direct_softmax() {
        let cache = KvCache::random(2, 50);
        let dev = Cpu::default();
        let q: Tensor<(usize, Const<1>, Const<64>), f32, Cpu> =
            dev.sample_normal_like(&(2, Const, Const));
        let got = cache.decode(&q).as_vec();
        let (qv, kv, vv) = (q.as_vec(), cache.k.as_vec(), cache.v.as_vec());
        for h in 0..2 {
            let logits: Vec<f32> = (0..50)
                .map(|s| {
                    (0..64)
                        .map(|d| qv[h * 64 + d] * kv[(h * 50 + s) * 64 + d])
                        .sum::<f32>()
                        * 0.125
                })
                .collect();
            let m = logits.iter().cloned().fold(f32::MIN, f32::max);
            let w: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
            let total: f32 = w.iter().sum();
            for d in 0..64 {
                let want: f32 = (0..50)
                    .map(|s| w[s] / total * vv[(h * 50 + s) * 64 + d])
                    .sum();
                assert!((got[h * 64 + d] - want).abs() < 1e-4, "head {h} dim {d}");
            }
        }
    }
}
