use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = |x| x.powi(2.5))]
pub struct Attn;

fn main() {}
