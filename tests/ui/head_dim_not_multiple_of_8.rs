use attnc::prelude::*;

#[attention(head_dim = 60)]
pub struct Attn;

fn main() {}
