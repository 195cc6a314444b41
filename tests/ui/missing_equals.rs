use attnc::prelude::*;

#[attention(head_dim = 64, mask)]
pub struct Attn;

fn main() {}
