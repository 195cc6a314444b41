use attnc::prelude::*;

// `rpe` is `none` or `toeplitz`.
#[attention(head_dim = 64, rpe = fft)]
pub struct Attn;

fn main() {}
