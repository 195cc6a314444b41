use attnc::prelude::*;

#[attention(head_dim = 64, chunck = 64)]
pub struct Attn;

fn main() {}
