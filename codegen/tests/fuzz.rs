//! Robustness: random and mutated `#[attention(...)]` arguments through parse → plan → both
//! emitters. Whatever the input, nothing panics, and the parser returns either a spec or a
//! non-empty list of errors, each with a message. Valid specs also print back to themselves.
//!
//! The cases per property are kept low (`CASES`) so the suite stays a few seconds in CI; raise
//! `PROPTEST_CASES` to search longer.

#[path = "support/valid_spec.rs"]
mod valid_spec;

use attnc_codegen::parse::{parse_spec, parse_spec_str};
use attnc_codegen::plan::Plan;
use attnc_codegen::spec::Spec;
use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream, TokenTree};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Plans a valid spec and runs both emitters on it: the one place that calls the back end, so a
/// signature change there is a one-line change here.
fn compile_all(spec: &Spec) {
    let plan = Plan::new(spec);
    if let Err(errors) = plan.validate() {
        panic!("the plan of `{spec}` is invalid: {errors:?}");
    }
    let cuda = attnc_codegen::cuda::emit(&plan, &spec.to_string());
    assert!(!cuda.source.is_empty());
    let cpu = attnc_codegen::cpu::emit_kernel(&plan, &Ident::new("K", Span::call_site()));
    assert!(!cpu.is_empty());
}

/// Cases per property (the CI budget); `PROPTEST_CASES` overrides it.
const CASES: u32 = 1024;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The property every input must satisfy: a spec that compiles and prints back to itself, or a
/// non-empty list of errors with messages (and a compile error to emit).
fn check(result: syn::Result<attnc_codegen::parse::ParsedSpec>) -> Result<(), TestCaseError> {
    match result {
        Ok(parsed) => {
            let text = parsed.spec.to_string();
            let again = parse_spec_str(&text)
                .map_err(|e| TestCaseError::fail(format!("`{text}` does not reparse: {e}")))?;
            prop_assert_eq!(&again.spec, &parsed.spec, "`{}` reparses differently", text);
            compile_all(&parsed.spec);
        }
        Err(e) => {
            let messages: Vec<String> = e.clone().into_iter().map(|e| e.to_string()).collect();
            prop_assert!(!messages.is_empty());
            prop_assert!(messages.iter().all(|m| !m.is_empty()), "{:?}", messages);
            prop_assert!(!e.to_compile_error().is_empty());
        }
    }
    Ok(())
}

fn check_str(text: &str) -> Result<(), TestCaseError> {
    check(parse_spec_str(text))
}

// ---------------------------------------------------------------------------------------------
// Generators.

/// A random valid spec, drawn from a tape of choices (so proptest can shrink the tape).
fn valid() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u32>(), 64).prop_map(|tape| {
        let mut at = 0;
        valid_spec::valid_spec(&mut |n| {
            let x = tape[at % tape.len()] as usize;
            at += 1;
            x % n.max(1)
        })
    })
}

/// A closure body in the closure grammar, from a tape like [`valid`].
fn closure_body() -> impl Strategy<Value = String> {
    (prop::collection::vec(any::<u32>(), 64), 0..6usize).prop_map(|(tape, depth)| {
        let mut at = 0;
        valid_spec::closure_body(
            &mut |n| {
                let x = tape[at % tape.len()] as usize;
                at += 1;
                x % n.max(1)
            },
            depth,
        )
    })
}

/// The keys of the spec language.
fn known_key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "head_dim",
        "value_dim",
        "feature_map",
        "mask",
        "update",
        "normalize",
        "qk_norm",
        "scale",
        "chunk",
        "layout",
    ])
}

/// Keys: every real one, aliases, misspellings, unicode, and tokens that are no identifier.
fn key() -> impl Strategy<Value = String> {
    let known = known_key();
    let odd = prop::sample::select(vec![
        "dk",
        "causal",
        "head_dimm",
        "Head_Dim",
        "r#type",
        "_",
        "héad_dim",
        "ключ",
        "数据",
        "1",
        "\"head_dim\"",
        "#",
        "(head_dim)",
        "head_dim::x",
        "&",
        "'a",
    ]);
    prop_oneof![
        6 => known.prop_map(String::from),
        2 => odd.prop_map(String::from),
        1 => "[a-z_][a-z0-9_]{0,12}",
    ]
}

/// Values of every kind: integers (huge, negative, suffixed), floats (huge, tiny), keywords,
/// strings, closures valid and not, calls, and other expressions.
fn value() -> impl Strategy<Value = String> {
    let words = prop::sample::select(vec![
        "causal",
        "none",
        "additive",
        "gated",
        "delta",
        "gated_delta",
        "sum",
        "l2",
        "bhnd",
        "bnhd",
        "auto",
        "identity",
        "elu_plus_one",
        "relu",
        "squared_relu",
        "sigmoid",
        "taylor2",
        "dpfp",
        "favor",
        "softmax",
        "elu",
        "bhdn",
        "Causal",
        "NaN",
        "inf",
        "true",
        "x",
        "ключ",
        "数据",
    ]);
    let fixed = prop::sample::select(vec![
        "18446744073709551616",
        "340282366920938463463374607431768211456",
        "-64",
        "0",
        "64usize",
        "64u8",
        "64f32",
        "64.0",
        "1e39",
        "-1e39",
        "1e-50",
        "0.0",
        "-0.125",
        "0x40",
        "\"causal\"",
        "'c'",
        "b\"x\"",
        "[64]",
        "(64)",
        "{ 64 }",
        "64 + 8",
        "a::b",
        "<T>::x",
        "dpfp()",
        "favor()",
        "dpfp(4)",
        "dpfp(nu = 4, nu = 5)",
        "favor(nu = 4)",
        "dpfp(nu = 4.0)",
        "relu(1)",
        "relu()",
        "foo(x)",
        "|x, y| x",
        "|| 1.0",
        "move |x| x",
        "async |x| x",
        "|x: f64| x",
        "|x| -> f64 { x }",
        "|&x| x",
        "|x| x as f64",
        "|x| y",
        "|x| x.foo()",
        "|x| x.powi(2.0)",
        "|x| x.powi(2147483648)",
        "|x| x.powi(-2147483648)",
        "|x| x.max()",
        "|x| x.exp(1)",
        "|x| { let y = x; y }",
        "|x| if x > 0.0 { x }",
        "|x| if x { x } else { 0.0 }",
        "|x| x == 1.0",
        "|x| x % 2.0",
        "|x| x.0",
        "|x| f(x)",
        "|x| m!(x)",
        "|x| x = 1.0",
        "|x| 1e39",
        "|x| x * 1f64",
        "|x| !x",
        "|x: f32| -> f32 x.tanh()",
    ]);
    prop_oneof![
        2 => any::<u64>().prop_map(|n| n.to_string()),
        2 => any::<i64>().prop_map(|n| n.to_string()),
        1 => (0..40u32).prop_map(|k| (8 * k).to_string()),
        1 => any::<f64>().prop_map(|f| format!("{f:?}")),
        1 => any::<f64>().prop_map(|f| format!("{f:e}")),
        3 => words.prop_map(String::from),
        3 => fixed.prop_map(String::from),
        1 => any::<i64>().prop_map(|n| format!("dpfp(nu = {n})")),
        1 => any::<i64>().prop_map(|n| format!("favor(features = {n})")),
        2 => closure_body().prop_map(|b| format!("|x| {b}")),
        1 => "[a-z_][a-z0-9_]{0,12}",
        1 => Just(String::new()),
    ]
}

/// Any list of `key <sep> value` items, joined in ways right and wrong.
fn attribute() -> impl Strategy<Value = String> {
    let sep = prop::sample::select(vec!["=", "=", "=", "=", "==", "=>", ":", ""]);
    let item = (key(), sep, value()).prop_map(|(k, s, v)| format!("{k} {s} {v}"));
    let join = prop::sample::select(vec![", ", ", ", ", ", ",, ", "; ", " "]);
    let tail = prop::sample::select(vec!["", "", ",", ",,", " ,"]);
    (prop::collection::vec(item, 0..12), join, tail)
        .prop_map(|(items, j, t)| format!("{}{t}", items.join(j)))
}

/// One edit of a token list: delete, duplicate or swap tokens (indices wrap around).
#[derive(Clone, Debug)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
    ]
}

/// Applies `edits` to the top-level tokens of `text` and, when `deep`, inside the groups too.
fn mutate(text: &str, edits: &[Edit], deep: bool) -> TokenStream {
    let tokens: TokenStream = text.parse().expect("valid specs tokenize");
    mutate_tokens(tokens, edits, deep)
}

fn mutate_tokens(tokens: TokenStream, edits: &[Edit], deep: bool) -> TokenStream {
    let mut list: Vec<TokenTree> = tokens
        .into_iter()
        .map(|t| match t {
            TokenTree::Group(g) if deep => {
                let inner = mutate_tokens(g.stream(), edits, false);
                TokenTree::Group(Group::new(g.delimiter(), inner))
            }
            other => other,
        })
        .collect();
    for e in edits {
        let n = list.len();
        if n == 0 {
            break;
        }
        match *e {
            Edit::Delete(i) => {
                list.remove(i % n);
            }
            Edit::Duplicate(i) => list.insert(i % n, list[i % n].clone()),
            Edit::Swap(i, j) => list.swap(i % n, j % n),
        }
    }
    list.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_specs_parse_and_compile(text in valid()) {
        let parsed = parse_spec_str(&text);
        prop_assert!(parsed.is_ok(), "`{}` must parse: {}", text, parsed.err().map(|e| e.to_string()).unwrap_or_default());
        check(parsed)?;
    }

    #[test]
    fn every_value_for_every_key(k in known_key(), v in value()) {
        check_str(&format!("head_dim = 64, {k} = {v}"))?;
    }

    #[test]
    fn random_attributes(text in attribute()) {
        check_str(&text)?;
    }

    #[test]
    fn mutated_valid_specs(text in valid(), edits in prop::collection::vec(edit(), 1..5), deep in any::<bool>()) {
        check(parse_spec(mutate(&text, &edits, deep)))?;
    }

    #[test]
    fn arbitrary_text(text in "\\PC{0,80}") {
        check_str(&text)?;
    }

    #[test]
    fn valid_spec_inside_invisible_groups(text in valid(), depth in 1..40usize) {
        // What `macro_rules!` passes through `$($attr)*`: the arguments wrapped in `None` groups.
        let mut tokens: TokenStream = text.parse().expect("valid specs tokenize");
        for _ in 0..depth {
            tokens = TokenTree::Group(Group::new(Delimiter::None, tokens)).into();
        }
        check(parse_spec(tokens))?;
    }
}

// ---------------------------------------------------------------------------------------------
// Edge cases, each once.

fn assert_robust(text: &str) {
    if let Err(e) = check_str(text) {
        panic!("`{text}`: {e}");
    }
}

/// `n` levels of `(x + (x + .. x))`.
fn nested_sums(n: usize) -> String {
    format!("{}x{}", "(x + ".repeat(n), ")".repeat(n))
}

#[test]
fn deeply_nested_closures() {
    // Within the limits (256 brackets, 128 operations): accepted, and printed back.
    let ok = [
        format!("{}x{}", "(".repeat(200), ")".repeat(200)),
        nested_sums(100),
        format!("x{}", ".abs()".repeat(100)),
        format!("{}x", "-".repeat(100)),
        format!(
            "{}x{}",
            "if x > 0.0 { ".repeat(60),
            " } else { 1.0 }".repeat(60)
        ),
    ];
    for body in ok {
        let text = format!("head_dim = 64, feature_map = |x| {body}");
        let parsed = parse_spec_str(&text).unwrap_or_else(|e| panic!("`{text}`: {e}"));
        assert!(check(Ok(parsed)).is_ok(), "`{text}`");
    }
    // Past them: an error, not a stack overflow (syn alone overflows a 2 MiB stack near 1000
    // brackets, and the planner, emitters and printer recurse on the closure).
    for (body, error) in [
        (nested_sums(200), "nests more than 128 operations deep"),
        (
            format!("x{}", " + x".repeat(200)),
            "nests more than 128 operations deep",
        ),
        (
            format!("{}x", "- ".repeat(2000)),
            "nests more than 128 operations deep",
        ),
        (nested_sums(300), "nests too deeply: at most 256 brackets"),
        (
            nested_sums(20_000),
            "nests too deeply: at most 256 brackets",
        ),
        (
            format!("x{}", " * x".repeat(5000)),
            "is too long: at most 4096 tokens",
        ),
    ] {
        let text = format!("head_dim = 64, feature_map = |x| {body}");
        let all = match parse_spec_str(&text) {
            Ok(p) => panic!("`{body}` must be rejected, got {}", p.spec),
            Err(e) => e.to_string(),
        };
        assert!(all.contains(error), "{all}");
    }
    // Deep brackets anywhere else: errors too.
    let deep = format!("{}x{}", "[".repeat(20_000), "]".repeat(20_000));
    for text in [
        deep.clone(),
        format!("head_dim {deep}"),
        format!("head_dim = 64, {deep} = 1"),
        format!("head_dim = {deep}"),
        format!("head_dim = 64, feature_map = {deep}"),
    ] {
        let result = parse_spec_str(&text);
        assert!(result.is_err());
        assert!(check(result).is_ok());
    }
}

#[test]
fn extreme_literals() {
    for text in [
        "head_dim = 18446744073709551616",
        "head_dim = 99999999999999999999999999999999999999999",
        "head_dim = -64",
        "head_dim = 64, chunk = -64",
        "head_dim = 64, chunk = 18446744073709551616",
        "head_dim = 64, value_dim = 0",
        "head_dim = 64, scale = 1e39",
        "head_dim = 64, scale = -1e39",
        "head_dim = 64, scale = 1e-46",
        "head_dim = 64, scale = 0",
        "head_dim = 64, scale = -0.0",
        "head_dim = 64, feature_map = dpfp(nu = 18446744073709551616)",
        "head_dim = 64, feature_map = favor(features = -8)",
        "head_dim = 64, feature_map = |x| x * 1e39",
        "head_dim = 64, feature_map = |x| x * 1e-46",
        "head_dim = 64, feature_map = |x| x.powi(99999999999)",
        // The largest valid feature dimensions.
        "head_dim = 256, value_dim = 256, feature_map = taylor2, update = gated_delta",
        "head_dim = 256, value_dim = 256, feature_map = dpfp(nu = 16), chunk = 256",
        "head_dim = 256, value_dim = 256, feature_map = favor(features = 4096), layout = bnhd",
        "head_dim = 8, value_dim = 8, feature_map = softmax, chunk = 16, mask = none",
    ] {
        assert_robust(text);
    }
}

#[test]
fn empty_unicode_and_trailing_commas() {
    for text in [
        "",
        ",",
        ",,",
        "head_dim = 64,",
        "head_dim = 64,,",
        ", head_dim = 64",
        "head_dim = 64, ,",
        "héad_dim = 64",
        "head_dim = 64, feature_map = |ξ| ξ.exp()",
        "head_dim = 64, mask = ключ",
        "数据 = 64",
        "head_dim = 64, feature_map = |x| x + y̆",
    ] {
        assert_robust(text);
    }
    assert!(check(parse_spec(TokenStream::new())).is_ok());
}
