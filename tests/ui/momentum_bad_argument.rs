use attnc::prelude::*;

// `momentum` takes one argument, named `mu`.
#[attention(head_dim = 64, update = momentum(beta = 0.9))]
pub struct Attn;

fn main() {}
