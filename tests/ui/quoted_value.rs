use attnc::prelude::*;

#[attention(head_dim = 64, mask = "none")]
pub struct Attn;

fn main() {}
