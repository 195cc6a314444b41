use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = |x| x > 0.0)]
pub struct Attn;

fn main() {}
