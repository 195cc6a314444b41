use attnc::prelude::*;

// With exact softmax there is no feature map to factor the Toeplitz-weighted scores by.
#[attention(head_dim = 64, feature_map = softmax, rpe = toeplitz)]
pub struct Attn;

fn main() {}
