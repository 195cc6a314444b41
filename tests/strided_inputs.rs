//! dfdx tensors need not be contiguous: permuted and broadcast views must give the same result as
//! their contiguous copies (attnc copies standard layouts with one memcpy and everything else
//! through dfdx's strided iteration).

use attnc::prelude::*;
use dfdx::tensor_ops::{BroadcastTo, PermuteTo};

#[attention(head_dim = 16, feature_map = elu_plus_one, normalize = sum, chunk = 16)]
pub struct Attn;

type Q = Tensor<Rank4<2, 3, 20, 16>, f32, Cpu>;

fn contiguous(t: &Q) -> Q {
    Cpu::default().tensor_from_vec(t.as_vec(), *t.shape())
}

#[test]
fn permuted_views_are_read_in_logical_order() {
    let dev = Cpu::seed_from_u64(1);
    let q: Q = dev.sample_normal();
    let k: Q = dev.sample_normal();
    // A (B, N, H, D) tensor permuted to (B, H, N, D): same logical values, other strides.
    let v_tokens_first: Tensor<Rank4<2, 20, 3, 16>, f32, Cpu> = dev.sample_normal();
    let v: Q = v_tokens_first.permute::<Rank4<2, 3, 20, 16>, _>();
    let got = Attn::forward(q.clone(), k.clone(), v.clone())
        .unwrap()
        .as_vec();
    let want = Attn::forward(q.clone(), k.clone(), contiguous(&v))
        .unwrap()
        .as_vec();
    assert_eq!(got, want);
}

#[test]
fn broadcast_views_are_read_in_logical_order() {
    let dev = Cpu::seed_from_u64(2);
    let q: Q = dev.sample_normal();
    let v: Q = dev.sample_normal();
    // One key tensor shared across the batch.
    let k_shared: Tensor<Rank3<3, 20, 16>, f32, Cpu> = dev.sample_normal();
    let k: Q = k_shared.broadcast();
    let got = Attn::forward(q.clone(), k.clone(), v.clone())
        .unwrap()
        .as_vec();
    let want = Attn::forward(q.clone(), contiguous(&k), v.clone())
        .unwrap()
        .as_vec();
    assert_eq!(got, want);
}
