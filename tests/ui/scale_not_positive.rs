use attnc::prelude::*;

#[attention(head_dim = 64, scale = 0.0)]
pub struct Attn;

fn main() {}
