use attnc::prelude::*;

#[attention(head_dim = 64, feature_map = softmax, update = gated)]
pub struct Attn;

fn main() {}
