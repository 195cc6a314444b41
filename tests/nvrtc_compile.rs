//! Every spec's CUDA C compiles with NVRTC for sm_75 (the SIMT products), sm_80 and sm_90, and
//! for sm_86 where its kernels differ by shared-memory class, through the runtime's own compile
//! path (`attnc::cuda::compile_ptx_uncached`), on machines without a GPU.
//!
//! The specs: every `#[attention(...)]` attribute and every spec-declaring macro call
//! (`check_spec!`, `linear_spec!`, `softmax_spec!`) in examples/ and tests/, found by parsing
//! those files with syn, plus a matrix over every feature map, update, mask, normaliser, layout
//! and chunk size. NVRTC comes from PyPI's `nvidia-cuda-nvrtc-cu12` (.ci/install-nvrtc.sh); where
//! it is missing the tests print SKIP, or fail when `ATTNC_REQUIRE_NVRTC=1` (CI sets it).

use attnc::prelude::*;
use attnc_codegen::parse::parse_spec_str;
use attnc_codegen::plan::Plan;
use proc_macro2::{TokenStream, TokenTree};
use std::path::Path;

/// Random valid specs, shared with `codegen/tests/fuzz.rs`.
#[path = "../codegen/tests/support/valid_spec.rs"]
mod valid_spec;

/// The spec attributes declared in one Rust file: `#[attention(..)]` with literal contents, and
/// `*_spec!(name, [extra = [..],] attrs)` calls, with the fixed prefix the file's macro puts in
/// front of `$($attr)*` (e.g. `feature_map = softmax,`).
fn specs_in(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("readable source file");
    let prefix = text
        .split("#[attention(")
        .skip(1)
        .find_map(|rest| {
            rest.split_once("$($attr)*")
                .map(|(p, _)| p.trim().to_string())
        })
        .filter(|p| !p.contains(')'))
        .unwrap_or_default();
    let file: TokenStream = text.parse().expect("source tokenizes");
    let mut out = Vec::new();
    collect(file, &prefix, &mut out);
    out.retain(|s| !s.contains('$'));
    out
}

fn collect(tokens: TokenStream, prefix: &str, out: &mut Vec<String>) {
    let list: Vec<TokenTree> = tokens.into_iter().collect();
    for (i, tt) in list.iter().enumerate() {
        let TokenTree::Group(g) = tt else { continue };
        let before = |k: usize| {
            i.checked_sub(k)
                .and_then(|j| list.get(j))
                .map(|t| t.to_string())
        };
        // `#[attention(...)]`: the group `[attention(...)]`.
        let inner: Vec<TokenTree> = g.stream().into_iter().collect();
        if let [TokenTree::Ident(id), TokenTree::Group(args)] = inner.as_slice() {
            if id == "attention" && before(1).as_deref() == Some("#") {
                out.push(args.stream().to_string());
                continue;
            }
        }
        // `name_spec!(...)`.
        if before(1).as_deref() == Some("!") && before(2).is_some_and(|m| m.ends_with("_spec")) {
            out.push(macro_spec(g.stream(), prefix));
            continue;
        }
        collect(g.stream(), prefix, out);
    }
}

/// The spec of `name, [extra = [..],] attrs` (or `name, [..], attrs`): everything after the
/// name but the list of extra arguments.
fn macro_spec(args: TokenStream, prefix: &str) -> String {
    let mut parts: Vec<Vec<TokenTree>> = vec![Vec::new()];
    for tt in args {
        match &tt {
            TokenTree::Punct(p) if p.as_char() == ',' => parts.push(Vec::new()),
            _ => parts.last_mut().expect("one part at least").push(tt),
        }
    }
    let keep: Vec<String> = parts
        .into_iter()
        .skip(1)
        .filter(|p| p.first().is_none_or(|t| t.to_string() != "extra"))
        .filter(|p| !matches!(p.as_slice(), [TokenTree::Group(g)] if g.delimiter() == proc_macro2::Delimiter::Bracket))
        .filter(|p| !p.is_empty())
        .map(|p| p.into_iter().collect::<TokenStream>().to_string())
        .collect();
    let body = keep.join(", ");
    if prefix.is_empty() {
        body
    } else {
        format!("{prefix} {body}")
    }
}

/// Specs over every axis of the spec language, on top of those the tests and examples declare.
fn matrix() -> Vec<String> {
    let mut out = Vec::new();
    let maps = [
        "identity",
        "elu_plus_one",
        "relu",
        "squared_relu",
        "sigmoid",
        "|x| (x * 0.5).tanh() + x.abs().sqrt().min(2.0).powf(1.5) + x.powi(-2).max(0.0) + (x.exp() + 1.0).ln()",
        "taylor2",
        "dpfp(nu = 3)",
        "favor(features = 64)",
    ];
    for map in maps {
        for update in ["additive", "gated", "delta", "gated_delta"] {
            let dk = if map == "taylor2" { 16 } else { 64 };
            out.push(format!(
                "head_dim = {dk}, feature_map = {map}, update = {update}, qk_norm = l2"
            ));
        }
        out.push(format!(
            "head_dim = 32, value_dim = 48, feature_map = {map}, mask = none, layout = bnhd"
        ));
    }
    for chunk in [16, 32, 64, 128, 256] {
        out.push(format!(
            "head_dim = 128, value_dim = 256, update = gated_delta, chunk = {chunk}"
        ));
        out.push(format!(
            "head_dim = 64, feature_map = elu_plus_one, normalize = sum, update = gated, chunk = {chunk}, layout = bnhd"
        ));
        out.push(format!(
            "head_dim = 256, feature_map = softmax, chunk = {chunk}"
        ));
        out.push(format!(
            "head_dim = 64, value_dim = 8, feature_map = softmax, mask = none, chunk = {chunk}"
        ));
        out.push(format!(
            "head_dim = 32, feature_map = favor(features = 256), normalize = sum, chunk = {chunk}"
        ));
    }
    // FAVOR+ at the largest feature count and head dim: C x F tiles in the scratch area.
    out.push("head_dim = 256, feature_map = favor(features = 4096), normalize = sum".into());
    out.push(
        "head_dim = 16, feature_map = favor(features = 4096), update = gated_delta, qk_norm = l2, \
         layout = bnhd, chunk = 128"
            .into(),
    );
    out
}

/// Every spec to compile, with its CUDA source.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut attrs = Vec::new();
    for dir in ["examples", "tests"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .expect("directory lists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        files.sort();
        for f in files {
            attrs.extend(specs_in(&f));
        }
    }
    attrs.extend(matrix());
    attrs.sort();
    attrs.dedup();
    attrs
        .into_iter()
        .map(|a| {
            let spec = parse_spec_str(&a)
                .unwrap_or_else(|e| panic!("spec `{a}` found in the sources must parse: {e}"))
                .spec;
            let plan = Plan::new(&spec);
            if let Err(errors) = plan.validate() {
                panic!("the plan of `{a}` is invalid: {errors:?}");
            }
            let source = attnc_codegen::cuda::emit(&plan, &spec.to_string()).source;
            (a, source)
        })
        .collect()
}

fn nvrtc_or_skip(test: &str) -> bool {
    if attnc::cuda::nvrtc_available() {
        return true;
    }
    let required = std::env::var("ATTNC_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: ATTNC_REQUIRE_NVRTC=1 but libnvrtc.so.12 cannot be loaded: install \
         nvidia-cuda-nvrtc-cu12 (.ci/install-nvrtc.sh) and put its lib folder on LD_LIBRARY_PATH"
    );
    println!("SKIP: {test}: NVRTC (libnvrtc.so.12) is not loadable on this machine");
    false
}

/// Compiles every spec's source for `arch`, or those `pick` keeps.
fn compile_all(arch: &str, pick: fn(&str) -> bool) {
    if !nvrtc_or_skip(&format!("nvrtc_compile {arch}")) {
        return;
    }
    let all = sources();
    assert!(all.len() >= 60, "only {} specs found", all.len());
    let all: Vec<_> = all.into_iter().filter(|(_, s)| pick(s)).collect();
    let mut failures = Vec::new();
    for (attr, source) in &all {
        if let Err(e) = attnc::cuda::compile_ptx_uncached(source, arch) {
            failures.push(format!("#[attention({attr})]: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} specs fail to compile for {arch}:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n\n")
    );
    println!("nvrtc: {} specs compiled for {arch}", all.len());
}

#[test]
fn every_spec_compiles_for_sm75() {
    compile_all("sm_75", |_| true);
}

#[test]
fn every_spec_compiles_for_sm80() {
    compile_all("sm_80", |_| true);
}

/// sm_86 compiles the same code as sm_80 but where a kernel has a version per class.
#[test]
fn specs_with_kernels_per_class_compile_for_sm86() {
    compile_all("sm_86", |source| source.contains("ATTNC_SMEM_CLASS =="));
}

#[test]
fn every_spec_compiles_for_sm90() {
    compile_all("sm_90", |_| true);
}

#[test]
fn the_scan_finds_the_declared_specs() {
    let all = sources();
    let has = |needle: &str| all.iter().any(|(a, _)| a.replace(' ', "") == needle);
    // From examples/deltanet.rs, tests/numerics.rs (check_spec!) and tests/softmax.rs (with the
    // macro's `feature_map = softmax` prefix).
    assert!(has("head_dim=64,update=delta,qk_norm=l2,chunk=64"));
    assert!(has("head_dim=16,chunk=16"));
    assert!(has("feature_map=softmax,head_dim=16,chunk=16"));
    // tests/cuda_gpu.rs: `gpu_spec!(name, [beta], attrs)`.
    assert!(has("head_dim=64,update=delta,qk_norm=l2,chunk=64"));
    assert!(has(
        "head_dim=16,feature_map=taylor2,normalize=sum,chunk=32"
    ));
    // FAVOR+: tests/numerics.rs (`extra = [proj]` left out) and tests/favor.rs.
    assert!(has(
        "head_dim=16,feature_map=favor(features=64),normalize=sum,chunk=16"
    ));
    assert!(has(
        "head_dim=16,feature_map=favor(features=4096),normalize=sum,chunk=32"
    ));
}

/// The generated constant is exactly what the emitter returns (so compiling the emitter's output
/// above compiles what users run).
#[test]
fn cuda_source_constant_is_the_emitters_output() {
    #[attention(head_dim = 32, update = gated_delta, qk_norm = l2, chunk = 32)]
    struct Gdn;
    let spec = parse_spec_str("head_dim = 32, update = gated_delta, qk_norm = l2, chunk = 32")
        .expect("parses")
        .spec;
    let plan = Plan::new(&spec);
    let emitted = attnc_codegen::cuda::emit(&plan, &spec.to_string());
    assert_eq!(Gdn::CUDA_SOURCE, emitted.source);
    for class in attnc::SmemClass::ALL {
        let kernels = Gdn::CUDA_LAUNCH
            .kernels(class)
            .expect("every class has kernels");
        assert_eq!(kernels.forward.len(), 3, "{class:?}");
        assert!(
            kernels.forward.iter().all(|k| k.class == class),
            "{class:?}"
        );
    }
    assert_eq!(Gdn::CUDA_LAUNCH, emitted.launch);
}

/// A fixed sample of random valid specs (the fuzz suite's generator, seeded) compiles for sm_80:
/// combinations the hand-written matrix above does not list.
#[test]
fn random_valid_specs_compile() {
    if !nvrtc_or_skip("nvrtc_compile random specs") {
        return;
    }
    // Seed 4's twelve specs include a closure, softmax, favor, dpfp, taylor2, every update,
    // `mask = none`, `normalize = sum`, both layouts and explicit scales.
    let mut rng = valid_spec::SplitMix(4);
    let mut failures = Vec::new();
    for _ in 0..12 {
        let attr = valid_spec::valid_spec(&mut |n| rng.below(n));
        println!("nvrtc: random spec #[attention({attr})]");
        let spec = parse_spec_str(&attr)
            .unwrap_or_else(|e| panic!("generated spec `{attr}` must parse: {e}"))
            .spec;
        let plan = Plan::new(&spec);
        if let Err(errors) = plan.validate() {
            panic!("the plan of `{attr}` is invalid: {errors:?}");
        }
        let source = attnc_codegen::cuda::emit(&plan, &spec.to_string()).source;
        if let Err(e) = attnc::cuda::compile_ptx_uncached(&source, "sm_80") {
            failures.push(format!("#[attention({attr})]: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
