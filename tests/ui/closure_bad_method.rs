use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = |x| x.sin())]
pub struct Attn;

fn main() {}
