use attnc::prelude::*;

// `heads = 4` fixes H: a tokens-first tensor passed to a heads-first spec does not compile.
#[attention(head_dim = 32, heads = 4)]
pub struct Attn;

fn main() {
    let dev = Cpu::default();
    // (B, N, H, D) where the spec takes (B, H, N, D).
    let q: Tensor<(Const<1>, usize, Const<4>, Const<32>), f32, _> =
        dev.zeros_like(&(Const, 100, Const, Const));
    let _ = Attn::forward(q.clone(), q.clone(), q);
}
