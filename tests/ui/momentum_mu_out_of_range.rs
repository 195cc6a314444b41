use attnc::prelude::*;

// At `mu = 1` the momentum never decays: `mu` must lie in [0, 1).
#[attention(head_dim = 64, update = momentum(mu = 1.0))]
pub struct Attn;

fn main() {}
