use attnc::prelude::*;

// Exact softmax attention has no recurrent update to add momentum to.
#[attention(head_dim = 64, feature_map = softmax, update = momentum(mu = 0.9))]
pub struct Attn;

fn main() {}
