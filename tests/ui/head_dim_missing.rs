use attnc::prelude::*;

#[attention(value_dim = 64)]
pub struct Attn;

fn main() {}
