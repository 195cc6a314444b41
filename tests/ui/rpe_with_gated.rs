use attnc::prelude::*;

// A Toeplitz weight replaces the decay of gated updates: `rpe` needs `update = additive`.
#[attention(head_dim = 64, update = gated, rpe = toeplitz)]
pub struct Attn;

fn main() {}
