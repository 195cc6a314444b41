use attnc::prelude::*;

// The FFT kernel takes no FAVOR+ projection in this version.
#[attention(head_dim = 64, feature_map = favor(features = 64), rpe = toeplitz)]
pub struct Attn;

fn main() {}
