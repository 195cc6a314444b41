use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = |x| (x as f64).exp())]
pub struct Attn;

fn main() {}
