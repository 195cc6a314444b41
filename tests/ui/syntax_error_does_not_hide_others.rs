use attnc::prelude::*;

#[attention(head_dim = , chunk = 48, layout = bhnd)]
pub struct Attn;

fn main() {}
