use attnc::prelude::*;

#[attention(head_dim = 64, scale = -0.5)]
pub struct Attn;

fn main() {}
