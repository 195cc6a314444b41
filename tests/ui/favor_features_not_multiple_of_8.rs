use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = favor(features = 100))]
pub struct Attn;

fn main() {}
