use attnc::prelude::*;

#[attention(head_dim = 64, update = gated, mask = none)]
pub struct Attn;

fn main() {}
