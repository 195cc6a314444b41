use attnc::prelude::*;

#[attention(head_dim = 64, update = gated_delta, feature_map = relu, normalize = sum)]
pub struct Attn;

fn main() {}
