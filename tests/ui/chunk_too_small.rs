use attnc::prelude::*;

#[attention(head_dim = 64, chunk = 8)]
pub struct Attn;

fn main() {}
