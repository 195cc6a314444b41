use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = gelu)]
pub struct Attn;

fn main() {}
