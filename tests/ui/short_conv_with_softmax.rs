use attnc::prelude::*;

// `short_conv` applies to linear attention only in this version.
#[attention(head_dim = 64, feature_map = softmax, short_conv = 4)]
pub struct Attn;

fn main() {}
