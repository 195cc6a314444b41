use attnc::prelude::*;

#[attention(head_dimm = 64, feature_map = relu)]
pub struct Attn;

fn main() {}
