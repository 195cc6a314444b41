use attnc::prelude::*;

// A Toeplitz weight has no momentum form: `rpe` needs `update = additive`.
#[attention(head_dim = 64, update = momentum(mu = 0.9), rpe = toeplitz)]
pub struct Attn;

fn main() {}
