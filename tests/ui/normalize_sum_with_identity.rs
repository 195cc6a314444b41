use attnc::prelude::*;

#[attention(head_dim = 64, normalize = sum)]
pub struct Attn;

fn main() {}
