use attnc::prelude::*;

#[attention(head_dim = 63, chunk = 100, layout = hbnd, mask = none, update = gated)]
pub struct Attn;

fn main() {}
