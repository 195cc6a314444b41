use attnc::prelude::*;

// The momentum kernel takes no FAVOR+ projection in this version.
#[attention(head_dim = 64, feature_map = favor(features = 64), update = momentum(mu = 0.9))]
pub struct Attn;

fn main() {}
