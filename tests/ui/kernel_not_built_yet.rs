use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = taylor2)]
pub struct Attn;

fn main() {}
