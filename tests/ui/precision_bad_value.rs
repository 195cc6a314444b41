use attnc::prelude::*;

// `precision` is `fp32` or `tf32` (bf16 inputs are not offered yet).
#[attention(head_dim = 64, precision = bf16)]
pub struct Attn;

fn main() {}
