use attnc::prelude::*;

#[attention(head_dim = 64, value_dim = 512)]
pub struct Attn;

fn main() {}
