//! Four specs as a user would declare them, to show what `#[attention]` generates: the
//! constants, `forward`, `forward_with_state`, `zero_state`, `step`, `decode_step`, the `_cuda`
//! siblings and `dfdx::nn::Module`. Each method's example is a doctest run in attnc's CI; a spec
//! in your own crate gets the same docs, written for its name, dims and arguments.
//!
//! Small dims keep these cheap: each spec's kernels are generic over the tensor dims, so they
//! are compiled only where a program calls them.

use crate::attention;

/// Causal linear attention with the elu+1 feature map and the sum normaliser
/// (Katharopoulos et al., 2020, "Transformers are RNNs").
#[attention(head_dim = 16, feature_map = elu_plus_one, normalize = sum, chunk = 16)]
pub struct LinearElu;

/// Gated DeltaNet (Yang et al., 2024): the gated delta rule on L2-normalised keys, tokens-first
/// tensors as flash-linear-attention takes them, and the head count fixed, so a tensor with
/// its axes in the wrong order does not compile.
#[attention(
    head_dim = 16,
    update = gated_delta,
    qk_norm = l2,
    layout = bnhd,
    heads = 4,
    chunk = 16
)]
pub struct GatedDeltaNet;

/// Performer's FAVOR+ (Choromanski et al., 2021): 32 positive random features; the projection
/// is a runtime input (see [`crate::favor`]).
#[attention(head_dim = 16, feature_map = favor(features = 32), normalize = sum, chunk = 16)]
pub struct Performer;

/// Exact causal softmax attention with flash-style tiling: `forward` only.
#[attention(head_dim = 16, feature_map = softmax, chunk = 16)]
pub struct Softmax;
