use attnc::prelude::*;

#[attention(head_dim = 64)]
pub struct Attn {
    weights: Vec<f32>,
}

fn main() {}
