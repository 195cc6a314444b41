use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = |x, y| x + y)]
pub struct Attn;

fn main() {}
