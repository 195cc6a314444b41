use attnc::prelude::*;

// Momentum accumulates in token order: it is causal, so `mask = none` is refused.
#[attention(head_dim = 64, update = momentum(mu = 0.9), mask = none)]
pub struct Attn;

fn main() {}
