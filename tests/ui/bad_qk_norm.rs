use attnc::prelude::*;

#[attention(head_dim = 64, qk_norm = l1)]
pub struct Attn;

fn main() {}
