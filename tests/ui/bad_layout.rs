use attnc::prelude::*;

#[attention(head_dim = 64, layout = nhd)]
pub struct Attn;

fn main() {}
