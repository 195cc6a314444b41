//! The spec parser: defaults, every key and value, every error message, closures
//! (checked against the Rust closures they spell), error accumulation and recovery.
//!
//! Spans are checked by the trybuild suite (`tests/ui`, at the workspace root): outside a
//! compiler, proc-macro2 spans carry no positions unless its `span-locations` feature is on.

use attnc_codegen::parse::{parse_spec, parse_spec_str, Key};
use attnc_codegen::spec::*;
use proc_macro2::{Delimiter, Group, TokenStream, TokenTree};

/// Parses `s`, which must be valid.
fn ok(s: &str) -> Spec {
    match parse_spec_str(s) {
        Ok(p) => p.spec,
        Err(e) => panic!("`{s}` should parse, got: {e}"),
    }
}

/// Parses `s`, which must be invalid; every error message.
fn errs(s: &str) -> Vec<String> {
    match parse_spec_str(s) {
        Ok(p) => panic!("`{s}` should not parse, got: {}", p.spec),
        Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
    }
}

/// Parses `s`, which must have exactly one error, containing every one of `needles`.
fn err1(s: &str, needles: &[&str]) -> String {
    let all = errs(s);
    assert_eq!(all.len(), 1, "`{s}`: expected one error, got {all:#?}");
    for n in needles {
        assert!(all[0].contains(n), "`{s}`: error {:?} lacks {n:?}", all[0]);
    }
    all[0].clone()
}

/// `err1` with `head_dim = 64, ` in front.
fn err64(rest: &str, needles: &[&str]) -> String {
    err1(&format!("head_dim = 64, {rest}"), needles)
}

fn ok64(rest: &str) -> Spec {
    ok(&format!("head_dim = 64, {rest}"))
}

// ---------------------------------------------------------------------------------------------
// Defaults and every value.

#[test]
fn defaults() {
    let s = ok("head_dim = 64");
    assert_eq!(s, Spec::with_head_dim(64));
    assert_eq!(s.value_dim, 64);
    assert_eq!(s.feature_map, FeatureMap::Identity);
    assert_eq!(s.mask, Mask::Causal);
    assert_eq!(s.update, Update::Additive);
    assert_eq!(s.normalize, Normalize::None);
    assert_eq!(s.qk_norm, QkNorm::None);
    assert_eq!(s.scale, Scale::Auto);
    assert_eq!(s.chunk, 64);
    assert_eq!(s.layout, Layout::Bhnd);
}

#[test]
fn the_design_example() {
    let s = ok("head_dim = 64, feature_map = elu_plus_one, normalize = sum, chunk = 64");
    assert_eq!(s.feature_map, FeatureMap::EluPlusOne);
    assert_eq!(s.normalize, Normalize::Sum);
    assert_eq!(s.chunk, 64);
}

#[test]
fn every_key_at_once_in_any_order_with_trailing_comma() {
    let s = ok(
        "layout = bnhd, chunk = 32, scale = 0.5, qk_norm = l2, normalize = none, \
                update = gated_delta, mask = causal, feature_map = relu, value_dim = 128, \
                short_conv = 3, precision = tf32, head_dim = 16,",
    );
    assert_eq!(
        s,
        Spec {
            head_dim: 16,
            value_dim: 128,
            feature_map: FeatureMap::Relu,
            mask: Mask::Causal,
            update: Update::GatedDelta,
            normalize: Normalize::None,
            qk_norm: QkNorm::L2,
            scale: Scale::Value(0.5),
            chunk: 32,
            layout: Layout::Bnhd,
            heads: None,
            momentum: None,
            short_conv: Some(3),
            rpe: Rpe::None,
            precision: Precision::Tf32,
        }
    );
}

#[test]
fn systems_keys_parse_and_print_back() {
    let s = ok("head_dim = 16, update = momentum(mu = 0.25), short_conv = 2");
    assert_eq!(
        (s.update, s.momentum, s.short_conv),
        (Update::Additive, Some(0.25), Some(2))
    );
    assert_eq!(ok(&s.to_string()), s, "{s}");
    let s = ok("head_dim = 16, feature_map = relu, normalize = sum, rpe = toeplitz");
    assert_eq!((s.rpe, s.momentum), (Rpe::Toeplitz, None));
    assert_eq!(ok(&s.to_string()), s, "{s}");
    assert!(s.to_string().ends_with("rpe = toeplitz"), "{s}");
    let s = ok("head_dim = 16, precision = tf32");
    assert_eq!(s.precision, Precision::Tf32);
    assert!(s.to_string().ends_with("precision = tf32"), "{s}");
    assert_eq!(ok(&s.to_string()), s, "prints back");
    err64(
        "precision = bf16",
        &["`precision` must be", "`fp32`", "`tf32`"],
    );
}

#[test]
fn dims() {
    for d in (8..=256).step_by(8) {
        let s = ok(&format!("head_dim = {d}"));
        assert_eq!((s.head_dim, s.value_dim), (d, d));
        assert_eq!(ok(&format!("head_dim = 8, value_dim = {d}")).value_dim, d);
    }
    assert_eq!(ok("head_dim = 64usize").head_dim, 64);
    assert_eq!(ok("value_dim = 32, head_dim = 64").value_dim, 32);
}

#[test]
fn feature_maps() {
    let cases = [
        ("identity", FeatureMap::Identity),
        ("elu_plus_one", FeatureMap::EluPlusOne),
        ("relu", FeatureMap::Relu),
        ("squared_relu", FeatureMap::SquaredRelu),
        ("sigmoid", FeatureMap::Sigmoid),
        ("taylor2", FeatureMap::Taylor2),
        ("softmax", FeatureMap::Softmax),
        ("dpfp", FeatureMap::Dpfp { nu: 4 }),
        ("dpfp(nu = 1)", FeatureMap::Dpfp { nu: 1 }),
        ("dpfp(nu = 16)", FeatureMap::Dpfp { nu: 16 }),
        ("favor", FeatureMap::Favor { features: 128 }),
        ("favor(features = 8)", FeatureMap::Favor { features: 8 }),
        (
            "favor(features = 1024)",
            FeatureMap::Favor { features: 1024 },
        ),
        (
            "favor(features = 4096)",
            FeatureMap::Favor { features: 4096 },
        ),
    ];
    for (text, want) in cases {
        assert_eq!(
            ok64(&format!("feature_map = {text}")).feature_map,
            want,
            "{text}"
        );
    }
    let s = ok64("feature_map = |x| x.max(0.0)");
    assert_eq!(
        s.feature_map,
        FeatureMap::Closure(Closure {
            param: "x".into(),
            body: Expr::Binary2(BinaryFn::Max, Box::new(Expr::Var), Box::new(Expr::Lit(0.0))),
        })
    );
}

#[test]
fn keyword_values() {
    assert_eq!(ok64("mask = causal").mask, Mask::Causal);
    assert_eq!(ok64("mask = none").mask, Mask::None);
    assert_eq!(ok64("update = additive").update, Update::Additive);
    assert_eq!(ok64("update = gated").update, Update::Gated);
    assert_eq!(ok64("update = delta").update, Update::Delta);
    assert_eq!(ok64("update = gated_delta").update, Update::GatedDelta);
    assert_eq!(ok64("normalize = none").normalize, Normalize::None);
    assert_eq!(
        ok64("normalize = sum, feature_map = relu").normalize,
        Normalize::Sum
    );
    assert_eq!(ok64("qk_norm = none").qk_norm, QkNorm::None);
    assert_eq!(ok64("qk_norm = l2").qk_norm, QkNorm::L2);
    assert_eq!(ok64("layout = bhnd").layout, Layout::Bhnd);
    assert_eq!(ok64("layout = bnhd").layout, Layout::Bnhd);
}

#[test]
fn scales() {
    assert_eq!(ok64("scale = auto").scale, Scale::Auto);
    assert_eq!(ok64("scale = 0.125").scale, Scale::Value(0.125));
    assert_eq!(ok64("scale = 2").scale, Scale::Value(2.0));
    assert_eq!(ok64("scale = 1e-3").scale, Scale::Value(1e-3));
    assert_eq!(ok64("scale = 0.5f32").scale, Scale::Value(0.5));
    let s = ok64("scale = 0.25");
    assert_eq!(s.scale_value(), 0.25);
    assert_eq!(ok("head_dim = 64").scale_value(), 0.125);
}

#[test]
fn chunks() {
    for c in [16, 32, 64, 128, 256] {
        assert_eq!(ok64(&format!("chunk = {c}")).chunk, c);
    }
}

#[test]
fn spans_record_the_written_keys() {
    let p = parse_spec_str("head_dim = 64, chunk = 32, feature_map = |x| x.abs()").unwrap();
    for k in [Key::HeadDim, Key::Chunk, Key::FeatureMap] {
        assert!(p.spans.contains(k), "{k:?}");
    }
    for k in [Key::ValueDim, Key::Mask, Key::Update, Key::Layout] {
        assert!(!p.spans.contains(k), "{k:?}");
    }
}

#[test]
fn key_names_round_trip() {
    for k in Key::ALL {
        assert_eq!(Key::from_name(k.name()), Some(k));
    }
    assert_eq!(Key::from_name("chunck"), None);
}

/// A spec prints as the attribute that produces it: parsing the print gives the spec back.
#[test]
fn printing_round_trips() {
    let texts = [
        "head_dim = 64",
        "head_dim = 32, value_dim = 16, feature_map = elu_plus_one, normalize = sum, mask = none",
        "head_dim = 16, update = gated_delta, qk_norm = l2, scale = 0.3, chunk = 16, layout = bnhd",
        "head_dim = 16, feature_map = dpfp(nu = 3), normalize = sum",
        "head_dim = 16, feature_map = favor(features = 256), normalize = sum",
        "head_dim = 16, feature_map = taylor2",
        "head_dim = 16, heads = 8, layout = bnhd",
        "head_dim = 16, feature_map = softmax, mask = none",
        "head_dim = 8, feature_map = |v: f32| if v > 0.5 { v.powi(-2) } else if v == 0.0 { 1e-7 } \
         else { -(v * 2).exp().min(3.0).powf(0.5) / v.abs().sqrt().ln() + v.tanh() }",
    ];
    for text in texts {
        let spec = ok(text);
        let printed = spec.to_string();
        assert_eq!(ok(&printed), spec, "{text}\nprinted as {printed}");
    }
}

/// Specs written through `macro_rules!` arrive with invisible groups around `$x:expr` /
/// `$x:literal` fragments (and around whole arguments for `$a:tt`-free forwarding).
#[test]
fn invisible_groups_from_macros() {
    let none = |ts: TokenStream| TokenTree::Group(Group::new(Delimiter::None, ts));
    let t = |s: &str| -> TokenStream { s.parse().unwrap() };
    let mut attr = t("head_dim = ");
    attr.extend([none(t("64"))]);
    attr.extend(t(", update = "));
    attr.extend([none(t("delta"))]);
    attr.extend(t(", feature_map = "));
    attr.extend([none(t("|x| x.max(0.0)"))]);
    attr.extend(t(","));
    attr.extend([none(t("chunk = 32"))]);
    let s = parse_spec(attr).unwrap().spec;
    assert_eq!((s.head_dim, s.update, s.chunk), (64, Update::Delta, 32));
    assert!(matches!(s.feature_map, FeatureMap::Closure(_)));
}

// ---------------------------------------------------------------------------------------------
// Key errors.

#[test]
fn head_dim_is_required() {
    for text in ["", "value_dim = 64", "chunk = 32, layout = bnhd"] {
        err1(
            text,
            &["`head_dim` is required", "head_dim = 64", "multiple of 8"],
        );
    }
}

#[test]
fn bad_head_dim_is_not_also_reported_missing() {
    err1(
        "head_dim = 60",
        &["`head_dim` must be an integer, a multiple of 8 in 8..=256"],
    );
}

#[test]
fn bad_dims() {
    for bad in [
        "0",
        "4",
        "60",
        "63",
        "264",
        "512",
        "-8",
        "64.0",
        "\"64\"",
        "d",
        "8 * 8",
        "99999999999999999999999",
    ] {
        err1(
            &format!("head_dim = {bad}"),
            &["`head_dim` must be an integer, a multiple of 8 in 8..=256 (e.g. 64)"],
        );
        err64(
            &format!("value_dim = {bad}"),
            &["`value_dim` must be an integer, a multiple of 8 in 8..=256 (e.g. 64)"],
        );
    }
}

#[test]
fn unknown_keys_list_the_keys_and_suggest_one() {
    let all = "the keys are head_dim, value_dim, feature_map, mask, update, normalize, qk_norm, \
               scale, chunk, layout";
    err64(
        "chunck = 64",
        &["unknown key `chunck`", all, "did you mean `chunk`?"],
    );
    err1(
        "head_dimm = 64",
        &["unknown key `head_dimm`", "did you mean `head_dim`?"],
    );
    err64("HEAD_DIM = 64", &["did you mean `head_dim`?"]);
    err64("featuremap = relu", &["did you mean `feature_map`?"]);
    err64("feature = relu", &["did you mean `feature_map`?"]);
    err64("qknorm = l2", &["did you mean `qk_norm`?"]);
    err64("dv = 32", &["did you mean `value_dim`?"]);
    err64("chunk_size = 32", &["did you mean `chunk`?"]);
    err64("causal = true", &["did you mean `mask`?"]);
    err64("layuot = bnhd", &["did you mean `layout`?"]);
    let far = err64("temperature = 2", &["unknown key `temperature`", all]);
    assert!(!far.contains("did you mean"), "{far}");
    // Raw identifiers and keywords are keys too, just unknown ones.
    err64("type = 2", &["unknown key `type`"]);
}

#[test]
fn duplicate_keys() {
    err1(
        "head_dim = 64, chunk = 64, chunk = 32",
        &["`chunk` was already given earlier in this attribute; give each key once"],
    );
    err1(
        "head_dim = 64, head_dim = 64",
        &["`head_dim` was already given"],
    );
    // Only the repeats are errors; a third copy is a second error.
    let all = errs("head_dim = 64, mask = none, mask = none, mask = causal");
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all.iter().all(|e| e.contains("`mask` was already given")));
}

// ---------------------------------------------------------------------------------------------
// Value errors.

#[test]
fn bad_keyword_values_say_what_is_allowed() {
    err64(
        "mask = sliding",
        &["`mask` must be `causal` (token t sees tokens 1..=t) or `none` (every token sees the whole sequence)"],
    );
    err64(
        "update = sideways",
        &["`update` must be `additive`, `gated`, `delta` or `gated_delta`"],
    );
    err64("normalize = l1", &["`normalize` must be `none` or `sum`"]);
    err64("qk_norm = layer", &["`qk_norm` must be `none` or `l2`"]);
    err64(
        "layout = nhd",
        &["`layout` must be `bhnd` (batch, heads, tokens, dim) or `bnhd` (batch, tokens, heads, dim)"],
    );
    // Hints: near misses and quoted values.
    err64("update = gatd", &["did you mean `gated`?"]);
    err64("update = gated_dleta", &["did you mean `gated_delta`?"]);
    err64("layout = bhdn", &["did you mean `bhnd`?"]);
    for far in [
        "qk_norm = l1",
        "feature_map = gelu",
        "layout = nhd",
        "mask = sliding",
    ] {
        let e = err64(far, &["must be"]);
        assert!(!e.contains("did you mean"), "{far}: {e}");
    }
    err64("layout = hbnd", &["did you mean `bhnd`?"]);
    err64("mask = casual", &["did you mean `causal`?"]);
    err64("mask = nonee", &["did you mean `none`?"]);
    err64("mask = \"none\"", &["write `none` without quotes"]);
    err64("update = \"gated\"", &["write `gated` without quotes"]);
    // Not a name at all.
    err64("mask = 1", &["`mask` must be"]);
    err64("update = gated::x", &["`update` must be"]);
}

#[test]
fn bad_feature_maps() {
    let allowed = "`feature_map` must be one of `identity`, `elu_plus_one`, `relu`, `squared_relu`, \
                   `sigmoid`, a closure `|x| ...`, `taylor2`, `dpfp(nu = 4)`, `favor(features = 128)` \
                   or `softmax`";
    err64("feature_map = gelu", &[allowed]);
    err64(
        "feature_map = elu",
        &[allowed, "did you mean `elu_plus_one`?"],
    );
    err64("feature_map = sigmod", &["did you mean `sigmoid`?"]);
    err64("feature_map = \"relu\"", &["write `relu` without quotes"]);
    err64("feature_map = 1.0", &[allowed]);
    err64("feature_map = foo(3)", &[allowed]);
    err64("feature_map = [relu]", &[allowed]);
    err64(
        "feature_map = relu(1)",
        &["`relu` takes no arguments: write `feature_map = relu`"],
    );
    err64("feature_map = softmax()", &["`softmax` takes no arguments"]);
}

#[test]
fn dpfp_and_favor_arguments() {
    let nu = "`dpfp(nu = ..)` needs nu in 1..=16 (its feature dimension is 2 * head_dim * nu), \
              e.g. `dpfp(nu = 4)`";
    err64("feature_map = dpfp(nu = 0)", &[nu]);
    err64("feature_map = dpfp(nu = 17)", &[nu]);
    err64(
        "feature_map = dpfp()",
        &["`dpfp` needs its `nu` argument: write `dpfp(nu = <integer>)`, e.g. `dpfp(nu = 4)`"],
    );
    err64(
        "feature_map = dpfp(4)",
        &["name the argument of `dpfp`: write `dpfp(nu = <integer>)`"],
    );
    err64(
        "feature_map = dpfp(mu = 4)",
        &["`dpfp` takes one argument, `nu`"],
    );
    err64(
        "feature_map = dpfp(nu = 4, x = 1)",
        &["`dpfp` takes one argument, `nu`"],
    );
    err64(
        "feature_map = dpfp(nu = 2.0)",
        &["`nu` must be an integer literal"],
    );
    let m =
        "`favor(features = ..)` needs a multiple of 8 in 8..=4096, e.g. `favor(features = 128)`";
    for bad in ["0", "4", "100", "4100", "4104", "8192"] {
        err64(&format!("feature_map = favor(features = {bad})"), &[m]);
    }
    err64(
        "feature_map = favor(nu = 64)",
        &["`favor` takes one argument, `features`: write `favor(features = <integer>)`"],
    );
}

#[test]
fn bad_scales() {
    let msg = "`scale` must be `auto` (1/sqrt(head_dim)) or a positive, finite float literal such as 0.125";
    for bad in [
        "0.0",
        "0",
        "-1.0",
        "-0.5",
        "1e39",
        "f32::INFINITY",
        "\"0.5\"",
        "automatic",
        "1.0 / 8.0",
    ] {
        err64(&format!("scale = {bad}"), &[msg]);
    }
}

#[test]
fn bad_chunks() {
    let msg = "`chunk` must be a power of two in 16..=256: 16, 32, 64, 128 or 256";
    for bad in ["0", "8", "48", "100", "512", "64.0", "auto", "-64"] {
        err64(&format!("chunk = {bad}"), &[msg]);
    }
}

#[test]
fn bad_heads() {
    let msg =
        "`heads` must be an integer in 1..=1024, the number of heads H of q, k and v (e.g. 8)";
    for bad in ["0", "2000", "8.0", "-1", "auto", "H"] {
        err64(&format!("heads = {bad}"), &[msg]);
    }
    assert_eq!(ok("head_dim = 64, heads = 12").heads, Some(12));
    assert_eq!(ok("head_dim = 64").heads, None);
}

// ---------------------------------------------------------------------------------------------
// Combinations.

#[test]
fn mask_none_needs_additive() {
    let msg = "`mask = none` works only with `update = additive`: gates and the delta rule are \
               defined in token order, so they are causal; use `mask = causal`";
    for u in ["gated", "delta", "gated_delta"] {
        err64(&format!("mask = none, update = {u}"), &[msg]);
        err64(&format!("update = {u}, mask = none"), &[msg]);
    }
    assert_eq!(ok64("mask = none, update = additive").mask, Mask::None);
    assert_eq!(ok64("mask = none").mask, Mask::None);
}

#[test]
fn normalize_sum_rules() {
    let delta =
        "`normalize = sum` cannot be used with delta updates (the delta rule's state is not \
                 a sum of keys); use `normalize = none`";
    for u in ["delta", "gated_delta"] {
        err64(
            &format!("update = {u}, feature_map = relu, normalize = sum"),
            &[delta],
        );
    }
    err64(
        "feature_map = identity, normalize = sum",
        &[
            "`normalize = sum` needs a non-negative feature map and `identity` is not one; choose \
           e.g. `feature_map = elu_plus_one`, `relu` or `sigmoid` (closures are trusted to be \
           non-negative)",
        ],
    );
    err64(
        "normalize = sum",
        &["`normalize = sum` needs a non-negative feature map and the default, `identity`, is not one"],
    );
    err64(
        "feature_map = softmax, normalize = sum",
        &["`normalize = sum` does not apply to `feature_map = softmax`, which normalises itself; remove it"],
    );
    // Every non-negative map, and closures (trusted), accept it; so does the gated update.
    for fm in [
        "elu_plus_one",
        "relu",
        "squared_relu",
        "sigmoid",
        "taylor2",
        "dpfp",
        "dpfp(nu = 2)",
        "favor",
        "|x| x",
        "|x| x.exp()",
    ] {
        let s = ok64(&format!(
            "feature_map = {fm}, normalize = sum, update = gated"
        ));
        assert_eq!(s.normalize, Normalize::Sum, "{fm}");
    }
    // Two violations, two errors.
    let all = errs("head_dim = 64, update = delta, normalize = sum");
    assert_eq!(all.len(), 2, "{all:#?}");
}

#[test]
fn softmax_has_no_recurrent_update() {
    let msg = "`feature_map = softmax` is exact softmax attention, which has no recurrent update; \
               remove `update` (or use a linear feature map)";
    for u in ["gated", "delta", "gated_delta"] {
        err64(&format!("feature_map = softmax, update = {u}"), &[msg]);
    }
    assert_eq!(
        ok64("feature_map = softmax, update = additive, mask = none").feature_map,
        FeatureMap::Softmax
    );
    // softmax + gated + mask = none: both rules fire.
    let all = errs("head_dim = 64, feature_map = softmax, update = gated, mask = none");
    assert_eq!(all.len(), 2, "{all:#?}");
}

#[test]
fn rules_do_not_cascade_from_rejected_values() {
    // A rejected feature map leaves the default `identity` in place; that must not trip the
    // `normalize = sum` rule.
    err64(
        "feature_map = gelu, normalize = sum",
        &["`feature_map` must be one of"],
    );
    err64(
        "feature_map = |x| x.sin(), normalize = sum",
        &["method `sin` is not allowed"],
    );
    // A rejected update or mask leaves additive / causal: no rule fires either.
    err64("update = gatd, mask = none", &["`update` must be"]);
    err64("mask = nope, update = gated", &["`mask` must be"]);
    err64("normalize = summ, update = delta", &["`normalize` must be"]);
    err64(
        "feature_map = softmaxx, update = delta",
        &["`feature_map` must be"],
    );
}

// ---------------------------------------------------------------------------------------------
// Several errors; syntax errors and recovery.

#[test]
fn all_errors_are_reported_at_once() {
    let all = errs("head_dim = 63, chunk = 100, layout = hbnd, mask = none, update = gated");
    assert_eq!(all.len(), 4, "{all:#?}");
    assert!(all[0].contains("`head_dim` must be"));
    assert!(all[1].contains("`chunk` must be"));
    assert!(all[2].contains("`layout` must be"));
    assert!(all[3].contains("`mask = none` works only with `update = additive`"));

    let all = errs("value_dim = 7, chunck = 3, feature_map = |x, y| x, scale = 0");
    assert_eq!(all.len(), 5, "{all:#?}");
    assert!(all[0].contains("`value_dim` must be"));
    assert!(all[1].contains("unknown key `chunck`"));
    assert!(all[2].contains("exactly one f32 argument"));
    assert!(all[3].contains("`scale` must be"));
    assert!(all[4].contains("`head_dim` is required"));
}

#[test]
fn syntax_errors() {
    err64(
        "mask",
        &["expected `mask = <value>`: every spec entry is a `key = value` pair"],
    );
    err1(
        "head_dim 64",
        &["expected `=` after `head_dim`, found `64`: every spec entry is a `key = value` pair"],
    );
    err1(
        "head_dim: 64",
        &["expected `=` after `head_dim`, found `:`"],
    );
    err1(
        "head_dim == 64",
        &["expected a single `=` after `head_dim`"],
    );
    err1(
        "head_dim =",
        &["`head_dim =` needs a value: write `head_dim = <value>`"],
    );
    err1(
        "head_dim = 64, 64",
        &["expected a key such as `head_dim`, found `64`"],
    );
    err1(
        "head_dim = 64, \"chunk\" = 32",
        &["expected a key such as `head_dim`, found `\"chunk\"`"],
    );
    err1(", head_dim = 64", &["unexpected `,`"]);
    err1("head_dim = 64,, chunk = 32", &["unexpected `,`"]);
    err1("head_dim = 64 64", &["unexpected token"]);
    // Unbalanced delimiters do not even lex; still an error, not a panic.
    assert!(parse_spec_str("head_dim = (64").is_err());
}

#[test]
fn syntax_errors_do_not_hide_other_errors() {
    let all = errs("head_dim = , chunk = 48, layout = x, mask none, update = gated");
    assert_eq!(all.len(), 4, "{all:#?}");
    assert!(all[0].contains("`head_dim =` needs a value"));
    assert!(all[1].contains("`chunk` must be"));
    assert!(all[2].contains("`layout` must be"));
    assert!(all[3].contains("expected `=` after `mask`"));
    // The commas between a closure's parameters do not split the argument.
    let all = errs("head_dim = 64, feature_map = |x, y, z| x, chunk = 7");
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all[0].contains("exactly one f32 argument, e.g. `|x| x.max(0.0)`; remove the others"));
    assert!(all[1].contains("`chunk` must be"));
}

// ---------------------------------------------------------------------------------------------
// Closures.

fn closure_of(text: &str) -> Closure {
    match ok64(&format!("feature_map = {text}")).feature_map {
        FeatureMap::Closure(c) => c,
        other => panic!("{text}: not a closure: {other:?}"),
    }
}

const POINTS: [f32; 13] = [
    -3.0, -1.5, -1.0, -0.5, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 4.0,
];

fn same(a: f32, b: f32) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
}

/// Each closure's expression tree evaluates as the Rust closure it spells.
macro_rules! closures_match_rust {
    ($($body:expr);* $(;)?) => {{
        let mut checked = 0;
        $(
            {
                let rust = $body;
                let text = stringify!($body);
                let c = closure_of(text);
                for x in POINTS {
                    let (got, want): (f32, f32) = (c.body.eval(x), rust(x));
                    assert!(same(got, want), "{text} at {x}: tree gives {got}, Rust gives {want}");
                }
                checked += 1;
            }
        )*
        checked
    }};
}

#[test]
#[allow(
    unused_braces,
    unused_parens,
    clippy::collapsible_else_if,
    clippy::manual_clamp
)]
fn closures_evaluate_as_rust_does() {
    let n = closures_match_rust! {
        |x: f32| x;
        |x: f32| x.max(0.0);
        |x: f32| x.min(1.0).max(-1.0);
        |x: f32| x * x + 1.0;
        |x: f32| 1.0 + 2.0 * x - x / 4.0;
        |x: f32| x - 1.0 - 2.0;
        |x: f32| x / 2.0 / 4.0;
        |x: f32| (x - 1.0) * (x + 1.0);
        |x: f32| -x * 3.0;
        |x: f32| -x.exp();
        |x: f32| (-x).exp();
        |x: f32| -(-x);
        |x: f32| x.exp().ln();
        |x: f32| x.abs().sqrt();
        |x: f32| x.tanh() * 0.5 + 0.5;
        |x: f32| 1.0 / (1.0 + (-x).exp());
        |x: f32| x.powi(3);
        |x: f32| x.powi(-2);
        |x: f32| x.abs().powf(1.5);
        |x: f32| 2.0_f32.powf(x);
        |x: f32| x.max(0.0).powi(2);
        |x: f32| if x > 0.0 { x + 1.0 } else { x.exp() };
        |x: f32| if x >= 0.5 { 1.0 } else if x <= -0.5 { -1.0 } else { x * 2.0 };
        |x: f32| if x < 0.0 { 0.0 } else { if x == 1.0 { 7.0 } else { x } };
        |x: f32| if x != 0.0 { x.abs() } else { 1.0 };
        |x: f32| if (x * 2.0 > 1.0) { x } else { 0.0 };
        |x: f32| { x * 0.5 };
        |x: f32| -> f32 { x.max(0.0) };
        |x: f32| x * 2f32 + 1e-3;
    };
    assert_eq!(n, 29);
}

#[test]
fn closure_trees() {
    // Unary minus binds tighter than `*`, method calls tighter than unary minus.
    assert_eq!(
        closure_of("|x| -x * 2.0").body,
        Expr::Binary(
            BinOp::Mul,
            Box::new(Expr::Neg(Box::new(Expr::Var))),
            Box::new(Expr::Lit(2.0))
        )
    );
    assert_eq!(
        closure_of("|x| -x.exp()").body,
        Expr::Neg(Box::new(Expr::Unary(UnaryFn::Exp, Box::new(Expr::Var))))
    );
    // Integer literals are floats; the parameter may have any name and an `f32` type.
    let c = closure_of("|t: f32| t * 2");
    assert_eq!(c.param, "t");
    assert_eq!(
        c.body,
        Expr::Binary(BinOp::Mul, Box::new(Expr::Var), Box::new(Expr::Lit(2.0)))
    );
    assert_eq!(
        closure_of("|x| x.powi(-3)").body,
        Expr::Powi(Box::new(Expr::Var), -3)
    );
    assert_eq!(
        closure_of("|x| if x > 0.0 { x } else { 0.0 }").body,
        Expr::If {
            cond: Box::new(Cond {
                op: CmpOp::Gt,
                lhs: Expr::Var,
                rhs: Expr::Lit(0.0)
            }),
            then: Box::new(Expr::Var),
            otherwise: Box::new(Expr::Lit(0.0)),
        }
    );
    // `mut` on the parameter is harmless.
    assert_eq!(closure_of("|mut x| x").body, Expr::Var);
}

#[test]
fn closure_errors_say_what_is_allowed() {
    let grammar = "a feature-map closure may use its argument, float literals, parentheses, \
                   `+ - * /`, unary `-`, the methods `exp ln sqrt abs tanh max min powi powf`, and \
                   comparisons inside `if .. { .. } else { .. }`";
    let cases: &[(&str, &[&str])] = &[
        ("|x| x.sin()", &["method `sin` is not allowed", grammar]),
        ("|x| x.exp().cos()", &["method `cos` is not allowed"]),
        (
            "|x, y| x + y",
            &["a feature-map closure takes exactly one f32 argument, e.g. `|x| x.max(0.0)`; remove the others"],
        ),
        ("|| 1.0", &["exactly one f32 argument, e.g. `|x| x.max(0.0)`; this one takes none"]),
        ("|x: f64| x", &["the closure's argument is an f32: write `|x: f32|` or `|x|`"]),
        ("|x: &f32| x", &["the closure's argument is an f32"]),
        ("|(a, b)| a", &["the closure's argument must be a plain name, e.g. `x`"]),
        ("|_| 1.0", &["must be a plain name"]),
        ("|x| -> f64 { x }", &["a feature-map closure returns f32"]),
        ("move |x| x", &["without `move`"]),
        ("|x| x * alpha", &["unknown name `alpha` in the closure: it may only use its argument `x`", grammar]),
        ("|y| x", &["unknown name `x` in the closure: it may only use its argument `y`"]),
        ("|x| std::f32::consts::PI * x", &["paths are not allowed"]),
        ("|x| x > 0.0", &["comparisons are allowed only as the condition of `if .. { .. } else { .. }`"]),
        ("|x| if x > 0.0 { x }", &["`if` needs an `else` branch: the closure must give a value for every input"]),
        ("|x| if x > 0.0 && x < 1.0 { x } else { 0.0 }", &["the condition must be one comparison"]),
        ("|x| if x { x } else { 0.0 }", &["the condition must be one comparison"]),
        ("|x| if let y = x { y } else { 0.0 }", &["the condition must be one comparison"]),
        ("|x| if x > 0.0 { let y = x; y } else { 0.0 }", &["a block here holds exactly one expression"]),
        ("|x| { x; }", &["a block here holds exactly one expression"]),
        ("|x| x % 2.0", &["operator `%` is not allowed", grammar]),
        ("|x| x & x", &["operator `&` is not allowed"]),
        ("|x| x += 1.0", &["operator `+=` is not allowed"]),
        ("|x| x = 1.0", &["assignment is not allowed"]),
        ("|x| !x", &["only unary `-` is allowed"]),
        ("|x| *x", &["only unary `-` is allowed"]),
        ("|x| x as f32", &["casts are not allowed"]),
        ("|x| exp(x)", &["function calls are not allowed", "`x.exp()`"]),
        ("|x| f32::exp(x)", &["function calls are not allowed"]),
        ("|x| x.0", &["field access is not allowed"]),
        ("|x| vec![x]", &["macros are not allowed"]),
        ("|x| [x][0]", &["this is not allowed in a feature-map closure"]),
        ("|x| (x, x)", &["this is not allowed in a feature-map closure"]),
        ("|x| \"x\"", &["only numeric literals are allowed"]),
        ("|x| true", &["only numeric literals are allowed"]),
        ("|x| x * 2.0f64", &["without the `f64` suffix"]),
        ("|x| x * 2u8", &["without the `u8` suffix"]),
        ("|x| x * 1e39", &["this literal is not a finite f32"]),
        ("|x| x.exp(1.0)", &["`exp` takes no arguments: write `x.exp()`"]),
        ("|x| x.max()", &["`max` takes one argument, e.g. `x.max(0.0)`"]),
        ("|x| x.min(1.0, 2.0)", &["`min` takes one argument"]),
        ("|x| x.powf()", &["`powf` takes one argument, e.g. `x.powf(1.5)`"]),
        ("|x| x.powi(2.5)", &["`powi` takes an integer literal, e.g. `x.powi(2)`; use `powf` for a float exponent"]),
        ("|x| x.powi(x)", &["`powi` takes an integer literal"]),
        ("|x| x.powi()", &["`powi` takes one integer literal"]),
        ("|x| x.abs::<f32>()", &["no type arguments are allowed here"]),
        ("|x| unsafe { x }", &["this is not allowed in a feature-map closure"]),
        ("|x| 'a: { x }", &["this is not allowed in a feature-map closure"]),
        ("|x| loop {}", &["this is not allowed in a feature-map closure"]),
        ("|x| |y| y", &["this is not allowed in a feature-map closure"]),
    ];
    for (text, needles) in cases {
        err64(&format!("feature_map = {text}"), needles);
    }
}

// ---------------------------------------------------------------------------------------------
// Robustness: no input panics.

#[test]
fn no_input_panics() {
    const PIECES: [&str; 40] = [
        "head_dim",
        "value_dim",
        "feature_map",
        "mask",
        "update",
        "normalize",
        "chunk",
        "scale",
        "=",
        "=",
        "=",
        ",",
        ",",
        "64",
        "0",
        "-",
        "1.5",
        "|x|",
        "|",
        "x",
        ".",
        "exp()",
        "powi",
        "(",
        ")",
        "{",
        "}",
        "if",
        "else",
        ">",
        "dpfp",
        "nu",
        "favor",
        "none",
        "sum",
        "delta",
        "\"s\"",
        "move",
        "::",
        "#",
    ];
    // A small deterministic generator (xorshift), so failures reproduce.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut oks, mut errors) = (0, 0);
    for _ in 0..4000 {
        let len = 1 + (next() % 14) as usize;
        let text: Vec<&str> = (0..len)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        let text = text.join(" ");
        let result = std::panic::catch_unwind(|| parse_spec_str(&text).map(|p| p.spec));
        match result {
            Ok(Ok(spec)) => {
                assert!(spec.head_dim >= 8, "{text}");
                oks += 1;
            }
            Ok(Err(e)) => {
                assert!(e.into_iter().count() >= 1, "{text}");
                errors += 1;
            }
            Err(_) => panic!("parser panicked on `{text}`"),
        }
    }
    assert_eq!(oks + errors, 4000);
    assert!(errors > 0);
}
