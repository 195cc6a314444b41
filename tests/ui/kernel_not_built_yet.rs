use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = favor(features = 64))]
pub struct Attn;

fn main() {}
