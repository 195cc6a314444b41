//! Snapshots of the generated CUDA C of each example spec (examples/quickstart.rs,
//! examples/deltanet.rs), of softmax attention and of the systems (`short_conv`,
//! `update = momentum(..)`, `rpe = toeplitz`), so every change to the kernels is reviewed as a
//! diff. The tile library every source starts with (codegen/src/cuda_prelude.cuh) is replaced
//! by one line; the launch configuration is printed above the source.

use attnc::prelude::*;
use attnc::CudaLaunch;

fn snapshot(launch: &CudaLaunch, source: &str) -> String {
    let prelude = attnc_codegen::cuda::PRELUDE;
    assert!(
        source.contains(prelude),
        "every source carries the tile library"
    );
    let body = source.replace(prelude, "// <tile library: codegen/src/cuda_prelude.cuh>\n");
    format!("// launch: {launch:#?}\n{body}")
}

#[test]
fn linear_attention_elu_sum() {
    #[attention(head_dim = 64, feature_map = elu_plus_one, normalize = sum, chunk = 64)]
    struct LinearAttention;
    insta::assert_snapshot!(snapshot(
        &LinearAttention::CUDA_LAUNCH,
        LinearAttention::CUDA_SOURCE
    ));
}

#[test]
fn retention_gated_l2() {
    #[attention(head_dim = 64, update = gated, qk_norm = l2, chunk = 64)]
    struct Retention;
    insta::assert_snapshot!(snapshot(&Retention::CUDA_LAUNCH, Retention::CUDA_SOURCE));
}

#[test]
fn closure_feature_map() {
    #[attention(head_dim = 64, feature_map = |x| if x > 0.0 { x + 1.0 } else { (0.5 * x).exp() }, normalize = sum)]
    struct CustomMap;
    insta::assert_snapshot!(snapshot(&CustomMap::CUDA_LAUNCH, CustomMap::CUDA_SOURCE));
}

#[test]
fn bidirectional_bnhd() {
    #[attention(head_dim = 64, value_dim = 32, feature_map = relu, mask = none, layout = bnhd)]
    struct Bidirectional;
    insta::assert_snapshot!(snapshot(
        &Bidirectional::CUDA_LAUNCH,
        Bidirectional::CUDA_SOURCE
    ));
}

#[test]
fn deltanet() {
    #[attention(head_dim = 64, update = delta, qk_norm = l2, chunk = 64)]
    struct DeltaNet;
    insta::assert_snapshot!(snapshot(&DeltaNet::CUDA_LAUNCH, DeltaNet::CUDA_SOURCE));
}

#[test]
fn gated_deltanet() {
    #[attention(head_dim = 64, update = gated_delta, qk_norm = l2, chunk = 64)]
    struct GatedDeltaNet;
    insta::assert_snapshot!(snapshot(
        &GatedDeltaNet::CUDA_LAUNCH,
        GatedDeltaNet::CUDA_SOURCE
    ));
}

#[test]
fn softmax_attention() {
    #[attention(head_dim = 64, feature_map = softmax, chunk = 64)]
    struct Softmax;
    insta::assert_snapshot!(snapshot(&Softmax::CUDA_LAUNCH, Softmax::CUDA_SOURCE));
}

#[test]
fn performer_favor() {
    #[attention(head_dim = 64, feature_map = favor(features = 128), normalize = sum, chunk = 64)]
    struct Performer;
    insta::assert_snapshot!(snapshot(&Performer::CUDA_LAUNCH, Performer::CUDA_SOURCE));
}

#[test]
fn gated_deltanet_short_conv() {
    #[attention(head_dim = 64, update = gated_delta, qk_norm = l2, short_conv = 4, chunk = 64)]
    struct GatedDeltaNetConv;
    insta::assert_snapshot!(snapshot(
        &GatedDeltaNetConv::CUDA_LAUNCH,
        GatedDeltaNetConv::CUDA_SOURCE
    ));
}

#[test]
fn momentum_elu_sum() {
    #[attention(head_dim = 64, feature_map = elu_plus_one, normalize = sum, update = momentum(mu = 0.9))]
    struct MomentumAttention;
    insta::assert_snapshot!(snapshot(
        &MomentumAttention::CUDA_LAUNCH,
        MomentumAttention::CUDA_SOURCE
    ));
}

#[test]
fn rpe_toeplitz() {
    #[attention(head_dim = 64, feature_map = elu_plus_one, normalize = sum, rpe = toeplitz)]
    struct RpeAttention;
    insta::assert_snapshot!(snapshot(
        &RpeAttention::CUDA_LAUNCH,
        RpeAttention::CUDA_SOURCE
    ));
}
