use attnc::prelude::*;

#[attention(head_dim = 64, update = sideways)]
pub struct Attn;

fn main() {}
