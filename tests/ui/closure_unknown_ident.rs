use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = |x| x * alpha)]
pub struct Attn;

fn main() {}
