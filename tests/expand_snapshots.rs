//! Snapshots of the macro's expansion (prettyplease-formatted) for each example spec, so every
//! change to the generated code is reviewed as a diff.

use proc_macro2::TokenStream;
use quote::quote;

fn expand(attr: &str) -> String {
    let attr: TokenStream = attr.parse().expect("test attribute tokenizes");
    let item = quote!(
        /// An example spec.
        pub struct Example;
    );
    let tokens = attnc_codegen::expand(attr, item);
    let file: syn::File = syn::parse2(tokens).expect("expansion is a valid Rust file");
    elide_cuda_source(&prettyplease::unparse(&file))
}

/// The CUDA C is one long escaped string literal in the expansion (two in a systems spec's:
/// its base's and its own); it is snapshotted readably, on its own, by tests/cuda_snapshots.rs.
fn elide_cuda_source(rust: &str) -> String {
    const START: &str = "pub const CUDA_SOURCE: &'static str = ::core::convert::identity(";
    const ELIDED: &str = "\"<the CUDA C: see tests/snapshots/cuda_snapshots__*.snap>\"";
    let mut out = String::new();
    let mut rest = rust;
    while let Some(at) = rest.find(START) {
        let body = at + START.len();
        let end = rest[body..].find(");\n").map_or(rest.len(), |e| body + e);
        out.push_str(&rest[..body]);
        out.push_str(ELIDED);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn linear_attention_elu_sum() {
    insta::assert_snapshot!(expand(
        "head_dim = 64, feature_map = elu_plus_one, normalize = sum, chunk = 64"
    ));
}

#[test]
fn retention_gated_l2() {
    insta::assert_snapshot!(expand(
        "head_dim = 64, update = gated, qk_norm = l2, chunk = 64"
    ));
}

#[test]
fn closure_feature_map() {
    insta::assert_snapshot!(expand(
        "head_dim = 64, feature_map = |x| if x > 0.0 { x + 1.0 } else { (0.5 * x).exp() }, normalize = sum"
    ));
}

#[test]
fn bidirectional_bnhd() {
    insta::assert_snapshot!(expand(
        "head_dim = 64, value_dim = 32, feature_map = relu, mask = none, layout = bnhd"
    ));
}

#[test]
fn spec_error_keeps_the_struct() {
    // An invalid spec expands to the struct as written plus a compile_error! (no cascade).
    let out = expand("head_dim = 64, update = sideways");
    assert!(out.contains("pub struct Example;"), "{out}");
    assert!(out.contains("compile_error!"), "{out}");
}

#[test]
fn gated_deltanet() {
    insta::assert_snapshot!(expand(
        "head_dim = 64, update = gated_delta, qk_norm = l2, chunk = 64"
    ));
}

#[test]
fn softmax_attention() {
    insta::assert_snapshot!(expand("head_dim = 64, feature_map = softmax, chunk = 64"));
}

#[test]
fn performer_favor() {
    insta::assert_snapshot!(expand(
        "head_dim = 64, feature_map = favor(features = 128), normalize = sum, chunk = 64"
    ));
}

#[test]
fn momentum_elu_sum() {
    insta::assert_snapshot!(expand(
        "head_dim = 64, feature_map = elu_plus_one, normalize = sum, update = momentum(mu = 0.9)"
    ));
}

#[test]
fn gated_deltanet_short_conv() {
    insta::assert_snapshot!(expand(
        "head_dim = 64, short_conv = 4, qk_norm = l2, update = gated_delta"
    ));
}

#[test]
fn rpe_toeplitz() {
    insta::assert_snapshot!(expand(
        "head_dim = 64, feature_map = elu_plus_one, normalize = sum, rpe = toeplitz"
    ));
}
