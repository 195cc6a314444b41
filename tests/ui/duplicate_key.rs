use attnc::prelude::*;

#[attention(head_dim = 64, chunk = 64, chunk = 32)]
pub struct Attn;

fn main() {}
