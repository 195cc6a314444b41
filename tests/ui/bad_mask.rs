use attnc::prelude::*;

#[attention(head_dim = 64, mask = sliding)]
pub struct Attn;

fn main() {}
