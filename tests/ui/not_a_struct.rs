use attnc::prelude::*;

#[attention(head_dim = 64)]
pub enum Attn {
    Linear,
}

fn main() {}
