use attnc::prelude::*;

// The convolution's width must be in 2..=8.
#[attention(head_dim = 64, short_conv = 9)]
pub struct Attn;

fn main() {}
