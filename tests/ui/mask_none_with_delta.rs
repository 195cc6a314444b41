use attnc::prelude::*;

#[attention(head_dim = 64, update = delta, mask = none)]
pub struct Attn;

fn main() {}
