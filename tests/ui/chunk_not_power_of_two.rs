use attnc::prelude::*;

#[attention(head_dim = 64, chunk = 48)]
pub struct Attn;

fn main() {}
