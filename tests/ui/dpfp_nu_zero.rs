use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = dpfp(nu = 0))]
pub struct Attn;

fn main() {}
