use attnc::prelude::*;

// Bare `momentum` has no coefficient: it must be written `momentum(mu = ..)`.
#[attention(head_dim = 64, update = momentum)]
pub struct Attn;

fn main() {}
