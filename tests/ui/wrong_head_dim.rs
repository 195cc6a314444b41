use attnc::prelude::*;

#[attention(head_dim = 64)]
pub struct Attn;

fn main() {
    let dev = Cpu::default();
    let q: Tensor<Rank4<1, 1, 8, 32>, f32, _> = dev.zeros();
    // A head dim of 32 where the spec says 64 is a type error, not a runtime one.
    let _ = Attn::forward(q.clone(), q.clone(), q);
}
