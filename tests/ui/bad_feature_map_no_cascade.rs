use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = elu, normalize = sum)]
pub struct Attn;

fn main() {}
