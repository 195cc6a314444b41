use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = |x| if x > 0.0 { x })]
pub struct Attn;

fn main() {}
