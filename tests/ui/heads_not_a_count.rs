use attnc::prelude::*;

#[attention(head_dim = 32, heads = 0)]
pub struct Attn;

fn main() {}
