//! Tokens → validated [`Spec`]. Every error carries the span of the key or value at fault, and
//! all errors of one attribute are reported together.
//!
//! The shape follows serde_derive's internals: one error context (`Errors`) collects spanned
//! `syn::Error`s (joined with `syn::Error::combine`) while parsing goes on, and the whole list is
//! returned at the end, so a user sees every mistake in an attribute in one compile.
//!
//! Recovery is per argument: the attribute is first split at its top-level commas (the commas
//! between a closure's parameters excepted), and each `key = value` is parsed on its own, so a
//! syntax error in one argument does not hide the errors of the others. Combination rules are
//! checked only between keys whose values were accepted, so one typo does not cascade.
//!
//! Choices this parser makes where DESIGN §2 leaves room:
//! - `dpfp` alone means `dpfp(nu = 4)`; `nu` must be in 1..=16.
//! - `favor` alone means `favor(features = 128)`; `features` must be a multiple of 8 in 8..=4096.
//! - `normalize = sum` needs a non-negative feature map. It is rejected with `identity` (also when
//!   `identity` is the default), with `softmax` (which normalises itself) and with the delta
//!   updates. It is accepted with `elu_plus_one`, `relu`, `squared_relu`, `sigmoid`, `taylor2`,
//!   `dpfp` and `favor`, and with closures, which are trusted: a closure's non-negativity is the
//!   user's promise, not checked.
//! - `scale` accepts a float or integer literal (finite, > 0) or `auto`.
//! - In closures, integer literals are read as floats (`x * 2` means `x * 2.0`); a literal may
//!   carry no suffix or `f32`.

use crate::spec::*;
use proc_macro2::{Delimiter, Spacing, Span, TokenStream, TokenTree};
use quote::ToTokens;

/// The keys of the spec language (DESIGN §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// `head_dim`
    HeadDim,
    /// `value_dim`
    ValueDim,
    /// `feature_map`
    FeatureMap,
    /// `mask`
    Mask,
    /// `update`
    Update,
    /// `normalize`
    Normalize,
    /// `qk_norm`
    QkNorm,
    /// `scale`
    Scale,
    /// `chunk`
    Chunk,
    /// `layout`
    Layout,
}

impl Key {
    /// Every key, in the order of DESIGN §2's table.
    pub const ALL: [Key; 10] = [
        Key::HeadDim,
        Key::ValueDim,
        Key::FeatureMap,
        Key::Mask,
        Key::Update,
        Key::Normalize,
        Key::QkNorm,
        Key::Scale,
        Key::Chunk,
        Key::Layout,
    ];

    /// The key as written in the attribute, e.g. `"head_dim"`.
    pub fn name(self) -> &'static str {
        match self {
            Key::HeadDim => "head_dim",
            Key::ValueDim => "value_dim",
            Key::FeatureMap => "feature_map",
            Key::Mask => "mask",
            Key::Update => "update",
            Key::Normalize => "normalize",
            Key::QkNorm => "qk_norm",
            Key::Scale => "scale",
            Key::Chunk => "chunk",
            Key::Layout => "layout",
        }
    }

    /// The key written as `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Where each key and its value were written, for errors reported after parsing (by the planner).
#[derive(Clone, Debug, Default)]
pub struct SpecSpans {
    entries: Vec<(Key, Span, Span)>,
}

impl SpecSpans {
    /// Records the spans of `key = value`.
    pub fn insert(&mut self, key: Key, key_span: Span, value_span: Span) {
        self.entries.push((key, key_span, value_span));
    }

    /// The span of the value written for `key`, or the call site if the key was left at its default.
    pub fn value(&self, key: Key) -> Span {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or_else(Span::call_site, |e| e.2)
    }

    /// The span of `key` itself, or the call site if it was not written.
    pub fn key(&self, key: Key) -> Span {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or_else(Span::call_site, |e| e.1)
    }

    /// Whether `key` was written in the attribute (rather than left at its default).
    pub fn contains(&self, key: Key) -> bool {
        self.entries.iter().any(|(k, _, _)| *k == key)
    }
}

/// A spec and where its parts were written.
#[derive(Clone, Debug)]
pub struct ParsedSpec {
    /// The validated spec, defaults filled in.
    pub spec: Spec,
    /// Spans of the keys and values as written.
    pub spans: SpecSpans,
}

/// What a closure body may contain, for error messages.
const CLOSURE_GRAMMAR: &str = "a feature-map closure may use its argument, float literals, \
    parentheses, `+ - * /`, unary `-`, the methods `exp ln sqrt abs tanh max min powi powf`, and \
    comparisons inside `if .. { .. } else { .. }`";

/// What `feature_map` accepts, for error messages.
const FEATURE_MAPS: &str = "`feature_map` must be one of `identity`, `elu_plus_one`, `relu`, \
    `squared_relu`, `sigmoid`, a closure `|x| ...`, `taylor2`, `dpfp(nu = 4)`, \
    `favor(features = 128)` or `softmax`";

/// The feature maps written as a bare name.
const FEATURE_MAP_NAMES: [&str; 9] = [
    "identity",
    "elu_plus_one",
    "relu",
    "squared_relu",
    "sigmoid",
    "taylor2",
    "dpfp",
    "favor",
    "softmax",
];

/// Collects spanned errors so that every mistake in an attribute is reported at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// An error at one span.
fn at(span: Span, msg: impl std::fmt::Display) -> syn::Error {
    syn::Error::new(span, msg)
}

/// An error covering a whole node, first token to last (this works on stable Rust, where spans
/// cannot be joined: the compile error is emitted from the node's first to its last token).
fn on<T: ToTokens>(node: T, msg: impl std::fmt::Display) -> syn::Error {
    syn::Error::new_spanned(node, msg)
}

/// One `key = value` argument, split off the attribute.
struct Arg {
    key: syn::Ident,
    which: Key,
    value: syn::Expr,
}

/// Parses and validates the arguments of `#[attention(...)]`.
///
/// Returns every error found (unknown, duplicate and missing keys, bad values, forbidden
/// combinations), each at the key or value at fault; see the module docs for the rules. Notes:
/// `dpfp` alone means `dpfp(nu = 4)` and `favor` alone `favor(features = 128)`; `normalize = sum`
/// trusts closures to be non-negative (that is the user's promise) and rejects `identity`, which
/// is not.
pub fn parse_spec(attr: TokenStream) -> syn::Result<ParsedSpec> {
    let mut errors = Errors::default();
    let mut b = Builder::default();
    for segment in split_args(attr, &mut errors) {
        match parse_arg(segment) {
            Ok(arg) => b.apply(arg, &mut errors),
            Err((key, e)) => {
                // A known key with a malformed value counts as written (no "required" error).
                b.failed.extend(key);
                errors.push(e);
            }
        }
    }
    if !b.spans.contains(Key::HeadDim) && !b.failed.contains(&Key::HeadDim) {
        errors.push(at(
            Span::call_site(),
            "`head_dim` is required: write e.g. #[attention(head_dim = 64)] \
             (an integer, a multiple of 8 in 8..=256)",
        ));
    }
    if let Some(d) = b.head_dim {
        b.spec.head_dim = d;
        b.spec.value_dim = b.value_dim.unwrap_or(d);
    }
    b.check_combinations(&mut errors);
    errors.finish()?;
    Ok(ParsedSpec {
        spec: b.spec,
        spans: b.spans,
    })
}

/// Parses a spec from text, e.g. `"head_dim = 64, update = gated"` (for tests and tools).
pub fn parse_spec_str(text: &str) -> syn::Result<ParsedSpec> {
    let tokens: TokenStream = syn::parse_str(text)?;
    parse_spec(tokens)
}

// ---------------------------------------------------------------------------------------------
// Splitting the attribute into arguments.

fn is_punct(t: Option<&TokenTree>, c: char) -> bool {
    matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

/// Splits the attribute at its top-level commas. The commas between a closure's parameters
/// (`feature_map = |x, y| ..`) are not separators: that closure is an error of its own, reported
/// as such. Empty arguments (`,,` or a leading `,`) are errors; a trailing comma is fine.
fn split_args(attr: TokenStream, errors: &mut Errors) -> Vec<Vec<TokenTree>> {
    let tokens: Vec<TokenTree> = attr.into_iter().collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < tokens.len() {
        let scan_from = closure_params_end(&tokens, start).unwrap_or(start);
        let end = (scan_from..tokens.len())
            .find(|&i| is_punct(tokens.get(i), ','))
            .unwrap_or(tokens.len());
        if end == start {
            let span = tokens
                .get(end)
                .map_or_else(Span::call_site, TokenTree::span);
            errors.push(at(
                span,
                "unexpected `,`: the spec is a list of `key = value` pairs separated by single commas",
            ));
        } else {
            out.push(tokens[start..end].to_vec());
        }
        start = end + 1;
    }
    out
}

/// For an argument `key = [move] |params| ..` starting at `start`, the index just past the
/// closing `|` of the parameters.
fn closure_params_end(tokens: &[TokenTree], start: usize) -> Option<usize> {
    if !matches!(tokens.get(start), Some(TokenTree::Ident(_)))
        || !is_punct(tokens.get(start + 1), '=')
    {
        return None;
    }
    let mut i = start + 2;
    while matches!(tokens.get(i), Some(TokenTree::Ident(id)) if id == "move" || id == "async" || id == "static")
    {
        i += 1;
    }
    if !is_punct(tokens.get(i), '|') {
        return None;
    }
    let close = tokens
        .get(i + 1..)?
        .iter()
        .position(|t| is_punct(Some(t), '|'))?;
    Some(i + 1 + close + 1)
}

/// Parses one `key = value` argument. On error, also says which key it was, if a known one.
fn parse_arg(segment: Vec<TokenTree>) -> Result<Arg, (Option<Key>, syn::Error)> {
    let mut it = segment.into_iter().peekable();
    let key = match it.next() {
        Some(TokenTree::Ident(k)) => k,
        Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::None => {
            // `#[attention($args)]` from a macro: look inside the invisible group.
            let inner: Vec<TokenTree> = g.stream().into_iter().chain(it).collect();
            return parse_arg(inner);
        }
        Some(other) => {
            let msg = format!(
                "expected a key such as `head_dim`, found `{other}`: the spec is a list of \
                 `key = value` pairs"
            );
            return Err((None, at(other.span(), msg)));
        }
        None => return Err((None, at(Span::call_site(), "expected `key = value`"))),
    };
    let name = key.to_string();
    let Some(which) = Key::from_name(&name) else {
        // The key it most likely meant counts as written (so `head_dimm = 64` is one error,
        // not also "`head_dim` is required").
        let meant = suggest_key(&name).and_then(Key::from_name);
        return Err((meant, unknown_key(&key)));
    };
    let fail = |e: syn::Error| (Some(which), e);
    let eq = match it.next() {
        Some(TokenTree::Punct(p)) if p.as_char() == '=' => {
            let joined = p.spacing() == Spacing::Joint
                && matches!(it.peek(), Some(TokenTree::Punct(q)) if matches!(q.as_char(), '=' | '>'));
            if joined {
                return Err(fail(at(
                    p.span(),
                    format!("expected a single `=` after `{name}`: write `{name} = <value>`"),
                )));
            }
            p.span()
        }
        None => {
            return Err(fail(at(
                key.span(),
                format!("expected `{name} = <value>`: every spec entry is a `key = value` pair"),
            )))
        }
        Some(other) => {
            return Err(fail(at(
                other.span(),
                format!(
                    "expected `=` after `{name}`, found `{other}`: every spec entry is a \
                     `key = value` pair"
                ),
            )))
        }
    };
    let rest: TokenStream = it.collect();
    if rest.is_empty() {
        return Err(fail(at(
            eq,
            format!("`{name} =` needs a value: write `{name} = <value>`"),
        )));
    }
    let value: syn::Expr = syn::parse2(rest).map_err(fail)?;
    Ok(Arg { key, which, value })
}

fn unknown_key(key: &syn::Ident) -> syn::Error {
    let name = key.to_string();
    let all: Vec<&str> = Key::ALL.iter().map(|k| k.name()).collect();
    let hint = suggest_key(&name).map_or(String::new(), |k| format!("; did you mean `{k}`?"));
    at(
        key.span(),
        format!(
            "unknown key `{name}`: the keys are {}{hint}",
            all.join(", ")
        ),
    )
}

/// The key a misspelt or foreign-named key most likely meant.
fn suggest_key(name: &str) -> Option<&'static str> {
    const ALIASES: [(&str, Key); 14] = [
        ("dk", Key::HeadDim),
        ("d_k", Key::HeadDim),
        ("dim", Key::HeadDim),
        ("head_size", Key::HeadDim),
        ("dv", Key::ValueDim),
        ("d_v", Key::ValueDim),
        ("phi", Key::FeatureMap),
        ("kernel", Key::FeatureMap),
        ("activation", Key::FeatureMap),
        ("causal", Key::Mask),
        ("chunk_size", Key::Chunk),
        ("block_size", Key::Chunk),
        ("norm", Key::Normalize),
        ("normalise", Key::Normalize),
    ];
    let lower = name.to_ascii_lowercase();
    if let Some((_, k)) = ALIASES.iter().find(|(a, _)| *a == lower) {
        return Some(k.name());
    }
    suggest(&lower, Key::ALL.iter().map(|k| k.name()))
}

/// The candidate `name` most likely meant: one it begins (`elu` → `elu_plus_one`), else the
/// nearest within a small edit distance that starts the same way (`bhdn` → `bhnd`, `hbnd` →
/// `bhnd`), else one it extends (`masking` → `mask`). Names of one or two letters get no hint
/// (`l1` is a different norm, not a typo of `l2`).
fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    let n = name.chars().count();
    if n < 2 {
        return None;
    }
    let candidates: Vec<&str> = candidates.into_iter().collect();
    let limit = if n <= 4 { 1 } else { 2 };
    let prefix_of = candidates
        .iter()
        .filter(|c| n >= 3 && c.starts_with(name.as_str()))
        .min_by_key(|c| c.len());
    // Typos keep the first letter (or swap the first two): `gelu` is not a typo of `relu`.
    let first_two = |s: &str| -> Vec<char> { s.chars().take(2).collect() };
    let same_start = |c: &str| {
        let (a, b) = (first_two(c), first_two(&name));
        a.first() == b.first() || (a.len() == 2 && b.len() == 2 && a[0] == b[1] && a[1] == b[0])
    };
    let nearest = candidates
        .iter()
        .filter(|c| n >= 3 && same_start(c))
        .map(|c| (edit_distance(c, &name), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    let extended = candidates
        .iter()
        .filter(|c| c.len() >= 3 && name.starts_with(*c))
        .max_by_key(|c| c.len());
    prefix_of.or(nearest).or(extended).copied()
}

/// Edit distance with adjacent transpositions (optimal string alignment), for "did you mean"
/// hints: `bhdn` is one edit from `bhnd`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

// ---------------------------------------------------------------------------------------------
// Keys and values.

/// The spec under construction: defaults, then each accepted value.
struct Builder {
    spec: Spec,
    spans: SpecSpans,
    /// Keys whose value was rejected (they keep their default, which combination rules ignore).
    failed: Vec<Key>,
    head_dim: Option<usize>,
    value_dim: Option<usize>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            spec: Spec::with_head_dim(0),
            spans: SpecSpans::default(),
            failed: Vec::new(),
            head_dim: None,
            value_dim: None,
        }
    }
}

impl Builder {
    fn apply(&mut self, arg: Arg, errors: &mut Errors) {
        let Arg { key, which, value } = arg;
        if self.spans.contains(which) {
            errors.push(at(
                key.span(),
                format!("`{key}` was already given earlier in this attribute; give each key once"),
            ));
            return;
        }
        self.spans
            .insert(which, key.span(), syn::spanned::Spanned::span(&value));
        let v = &value;
        let result = match which {
            Key::HeadDim => parse_dim(v, "head_dim").map(|d| self.head_dim = Some(d)),
            Key::ValueDim => parse_dim(v, "value_dim").map(|d| self.value_dim = Some(d)),
            Key::FeatureMap => parse_feature_map(v).map(|f| self.spec.feature_map = f),
            Key::Mask => keyword(
                v,
                &[("causal", Mask::Causal), ("none", Mask::None)],
                "`mask` must be `causal` (token t sees tokens 1..=t) or `none` (every token sees \
                 the whole sequence)",
            )
            .map(|m| self.spec.mask = m),
            Key::Update => keyword(
                v,
                &[
                    ("additive", Update::Additive),
                    ("gated", Update::Gated),
                    ("delta", Update::Delta),
                    ("gated_delta", Update::GatedDelta),
                ],
                "`update` must be `additive`, `gated`, `delta` or `gated_delta`",
            )
            .map(|u| self.spec.update = u),
            Key::Normalize => keyword(
                v,
                &[("none", Normalize::None), ("sum", Normalize::Sum)],
                "`normalize` must be `none` or `sum`",
            )
            .map(|n| self.spec.normalize = n),
            Key::QkNorm => keyword(
                v,
                &[("none", QkNorm::None), ("l2", QkNorm::L2)],
                "`qk_norm` must be `none` or `l2`",
            )
            .map(|n| self.spec.qk_norm = n),
            Key::Scale => parse_scale(v).map(|s| self.spec.scale = s),
            Key::Chunk => parse_chunk(v).map(|c| self.spec.chunk = c),
            Key::Layout => keyword(
                v,
                &[("bhnd", Layout::Bhnd), ("bnhd", Layout::Bnhd)],
                "`layout` must be `bhnd` (batch, heads, tokens, dim) or `bnhd` (batch, tokens, \
                 heads, dim)",
            )
            .map(|l| self.spec.layout = l),
        };
        if let Err(e) = result {
            self.failed.push(which);
            errors.push(e);
        }
    }

    /// Rules between keys. A rule fires only when the key it blames was written and every key it
    /// involves holds an accepted value (written and valid, or left at its default).
    fn check_combinations(&self, errors: &mut Errors) {
        let spec = &self.spec;
        let mut rule = |cond: bool, blame: Key, involves: &[Key], msg: &str| {
            let valid = |k: &Key| !self.failed.contains(k);
            if cond && self.spans.contains(blame) && valid(&blame) && involves.iter().all(valid) {
                errors.push(at(self.spans.value(blame), msg));
            }
        };
        rule(
            spec.mask == Mask::None && spec.update != Update::Additive,
            Key::Mask,
            &[Key::Update],
            "`mask = none` works only with `update = additive`: gates and the delta rule are \
             defined in token order, so they are causal; use `mask = causal`",
        );
        rule(
            spec.normalize == Normalize::Sum && spec.has_beta(),
            Key::Normalize,
            &[Key::Update],
            "`normalize = sum` cannot be used with delta updates (the delta rule's state is not a \
             sum of keys); use `normalize = none`",
        );
        let default_identity = if self.spans.contains(Key::FeatureMap) {
            "`identity` is not one"
        } else {
            "the default, `identity`, is not one"
        };
        rule(
            spec.normalize == Normalize::Sum && spec.feature_map == FeatureMap::Identity,
            Key::Normalize,
            &[Key::FeatureMap],
            &format!(
                "`normalize = sum` needs a non-negative feature map and {default_identity}; choose \
                 e.g. `feature_map = elu_plus_one`, `relu` or `sigmoid` (closures are trusted to \
                 be non-negative)"
            ),
        );
        rule(
            spec.normalize == Normalize::Sum && spec.feature_map == FeatureMap::Softmax,
            Key::Normalize,
            &[Key::FeatureMap],
            "`normalize = sum` does not apply to `feature_map = softmax`, which normalises \
             itself; remove it",
        );
        rule(
            spec.feature_map == FeatureMap::Softmax && spec.update != Update::Additive,
            Key::Update,
            &[Key::FeatureMap],
            "`feature_map = softmax` is exact softmax attention, which has no recurrent update; \
             remove `update` (or use a linear feature map)",
        );
    }
}

/// Looks through the invisible groups `macro_rules!` puts around `$x:literal` / `$x:expr`.
fn peel(v: &syn::Expr) -> &syn::Expr {
    match v {
        syn::Expr::Group(g) => peel(&g.expr),
        other => other,
    }
}

/// A bare identifier value, e.g. `causal`.
fn ident_of(v: &syn::Expr) -> Option<String> {
    match peel(v) {
        syn::Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => {
            p.path.get_ident().map(|i| i.to_string())
        }
        _ => None,
    }
}

/// The contents of a string literal value (for the "write it without quotes" hint).
fn str_of(v: &syn::Expr) -> Option<String> {
    match peel(v) {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Some(s.value()),
        _ => None,
    }
}

/// "; did you mean `x`?" or "; write `x` without quotes", when a value is close to an allowed one.
fn value_hint<'a>(v: &syn::Expr, allowed: impl IntoIterator<Item = &'a str> + Clone) -> String {
    if let Some(s) = str_of(v) {
        if let Some(name) = allowed.clone().into_iter().find(|n| *n == s) {
            return format!("; write `{name}` without quotes");
        }
    }
    let written = ident_of(v).or_else(|| str_of(v));
    written
        .and_then(|w| suggest(&w, allowed))
        .map_or(String::new(), |n| format!("; did you mean `{n}`?"))
}

fn keyword<T: Copy>(v: &syn::Expr, allowed: &[(&str, T)], msg: &str) -> syn::Result<T> {
    let found = ident_of(v).and_then(|id| allowed.iter().find(|(n, _)| *n == id));
    match found {
        Some((_, t)) => Ok(*t),
        None => {
            let hint = value_hint(v, allowed.iter().map(|(n, _)| *n));
            Err(on(v, format!("{msg}{hint}")))
        }
    }
}

/// The value of an integer literal (no sign, any suffix), if `v` is one.
fn int_literal(v: &syn::Expr) -> Option<syn::Result<usize>> {
    match peel(v) {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => Some(i.base10_parse::<usize>()),
        _ => None,
    }
}

fn parse_dim(v: &syn::Expr, key: &str) -> syn::Result<usize> {
    match int_literal(v) {
        Some(Ok(d)) if (8..=256).contains(&d) && d % 8 == 0 => Ok(d),
        _ => Err(on(
            v,
            format!("`{key}` must be an integer, a multiple of 8 in 8..=256 (e.g. 64)"),
        )),
    }
}

fn parse_chunk(v: &syn::Expr) -> syn::Result<usize> {
    match int_literal(v) {
        Some(Ok(c)) if (16..=256).contains(&c) && c.is_power_of_two() => Ok(c),
        _ => Err(on(
            v,
            "`chunk` must be a power of two in 16..=256: 16, 32, 64, 128 or 256",
        )),
    }
}

fn parse_scale(v: &syn::Expr) -> syn::Result<Scale> {
    if ident_of(v).as_deref() == Some("auto") {
        return Ok(Scale::Auto);
    }
    let value = match peel(v) {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Float(f),
            ..
        }) => f.base10_parse::<f32>().ok(),
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => i.base10_parse::<f32>().ok(),
        _ => None,
    };
    match value {
        Some(s) if s.is_finite() && s > 0.0 => Ok(Scale::Value(s)),
        _ => Err(on(
            v,
            "`scale` must be `auto` (1/sqrt(head_dim)) or a positive, finite float literal such \
             as 0.125",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Feature maps.

fn parse_feature_map(v: &syn::Expr) -> syn::Result<FeatureMap> {
    if let Some(id) = ident_of(v) {
        return Ok(match id.as_str() {
            "identity" => FeatureMap::Identity,
            "elu_plus_one" => FeatureMap::EluPlusOne,
            "relu" => FeatureMap::Relu,
            "squared_relu" => FeatureMap::SquaredRelu,
            "sigmoid" => FeatureMap::Sigmoid,
            "taylor2" => FeatureMap::Taylor2,
            "softmax" => FeatureMap::Softmax,
            "dpfp" => FeatureMap::Dpfp { nu: 4 },
            "favor" => FeatureMap::Favor { features: 128 },
            _ => {
                let hint = value_hint(v, FEATURE_MAP_NAMES);
                return Err(on(v, format!("{FEATURE_MAPS}{hint}")));
            }
        });
    }
    match peel(v) {
        syn::Expr::Closure(c) => parse_closure(c).map(FeatureMap::Closure),
        syn::Expr::Call(call) => match ident_of(&call.func).as_deref() {
            Some("dpfp") => {
                let (nu, lit) = named_int_arg(call, "dpfp", "nu", 4)?;
                if !(1..=16).contains(&nu) {
                    return Err(on(
                        lit,
                        "`dpfp(nu = ..)` needs nu in 1..=16 (its feature dimension is \
                         2 * head_dim * nu), e.g. `dpfp(nu = 4)`",
                    ));
                }
                Ok(FeatureMap::Dpfp { nu })
            }
            Some("favor") => {
                let (m, lit) = named_int_arg(call, "favor", "features", 128)?;
                if !(8..=4096).contains(&m) || m % 8 != 0 {
                    return Err(on(
                        lit,
                        "`favor(features = ..)` needs a multiple of 8 in 8..=4096, e.g. \
                         `favor(features = 128)`",
                    ));
                }
                Ok(FeatureMap::Favor { features: m })
            }
            Some(name) if FEATURE_MAP_NAMES.contains(&name) => {
                let msg = format!("`{name}` takes no arguments: write `feature_map = {name}`");
                Err(if call.args.is_empty() {
                    at(call.paren_token.span.join(), msg)
                } else {
                    on(&call.args, msg)
                })
            }
            _ => Err(on(v, FEATURE_MAPS)),
        },
        syn::Expr::Lit(_) => {
            let hint = value_hint(v, FEATURE_MAP_NAMES);
            Err(on(v, format!("{FEATURE_MAPS}{hint}")))
        }
        _ => Err(on(v, FEATURE_MAPS)),
    }
}

/// The single `name = <integer>` argument of `dpfp(..)` / `favor(..)`: its value and literal.
fn named_int_arg<'a>(
    call: &'a syn::ExprCall,
    func: &str,
    name: &str,
    example: usize,
) -> syn::Result<(usize, &'a syn::Expr)> {
    let usage = format!("write `{func}({name} = <integer>)`, e.g. `{func}({name} = {example})`");
    let mut args = call.args.iter();
    let Some(first) = args.next() else {
        return Err(at(
            call.paren_token.span.join(),
            format!("`{func}` needs its `{name}` argument: {usage}"),
        ));
    };
    if let Some(second) = args.next() {
        let extra: TokenStream = std::iter::once(second)
            .chain(args)
            .map(ToTokens::to_token_stream)
            .collect();
        return Err(on(
            extra,
            format!("`{func}` takes one argument, `{name}`: {usage}"),
        ));
    }
    match peel(first) {
        syn::Expr::Assign(a) if ident_of(&a.left).as_deref() == Some(name) => {
            match int_literal(&a.right) {
                Some(Ok(n)) => Ok((n, &a.right)),
                _ => Err(on(
                    &a.right,
                    format!("`{name}` must be an integer literal: {usage}"),
                )),
            }
        }
        syn::Expr::Assign(a) => Err(on(
            &a.left,
            format!("`{func}` takes one argument, `{name}`: {usage}"),
        )),
        other => Err(on(other, format!("name the argument of `{func}`: {usage}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Closures.

fn parse_closure(c: &syn::ExprClosure) -> syn::Result<Closure> {
    const ONE_ARG: &str =
        "a feature-map closure takes exactly one f32 argument, e.g. `|x| x.max(0.0)`";
    if let Some(a) = c.attrs.first() {
        return Err(on(a, "attributes are not allowed on a feature-map closure"));
    }
    if let Some(l) = &c.lifetimes {
        return Err(on(l, "write the closure as `|x| expr`, without `for<..>`"));
    }
    if let Some(k) = &c.constness {
        return Err(on(k, "write the closure as `|x| expr`, without `const`"));
    }
    if let Some(m) = &c.movability {
        return Err(on(m, "write the closure as `|x| expr`, without `static`"));
    }
    if let Some(a) = &c.asyncness {
        return Err(on(a, "write the closure as `|x| expr`, without `async`"));
    }
    if let Some(m) = &c.capture {
        return Err(on(
            m,
            "write the closure as `|x| expr`, without `move`: it captures nothing",
        ));
    }
    let mut inputs = c.inputs.iter();
    let Some(first) = inputs.next() else {
        let (or1, or2) = (&c.or1_token, &c.or2_token);
        return Err(on(
            quote::quote!(#or1 #or2),
            format!("{ONE_ARG}; this one takes none"),
        ));
    };
    if c.inputs.len() > 1 {
        let extra: TokenStream = inputs.map(ToTokens::to_token_stream).collect();
        return Err(on(extra, format!("{ONE_ARG}; remove the others")));
    }
    if let syn::ReturnType::Type(_, ty) = &c.output {
        if !is_f32(ty) {
            return Err(on(
                ty,
                "a feature-map closure returns f32: write `-> f32` or nothing",
            ));
        }
    }
    let param = match first {
        syn::Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() && p.attrs.is_empty() => {
            p.ident.to_string()
        }
        syn::Pat::Type(t) => {
            if !is_f32(&t.ty) {
                return Err(on(
                    &t.ty,
                    "the closure's argument is an f32: write `|x: f32|` or `|x|`",
                ));
            }
            match &*t.pat {
                syn::Pat::Ident(p)
                    if p.by_ref.is_none() && p.subpat.is_none() && p.attrs.is_empty() =>
                {
                    p.ident.to_string()
                }
                other => {
                    return Err(on(
                        other,
                        "the closure's argument must be a plain name, e.g. `x`",
                    ))
                }
            }
        }
        other => {
            return Err(on(
                other,
                "the closure's argument must be a plain name, e.g. `x`",
            ))
        }
    };
    let body = lower_expr(&c.body, &param)?;
    Ok(Closure { param, body })
}

fn is_f32(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Group(g) => is_f32(&g.elem),
        syn::Type::Paren(p) => is_f32(&p.elem),
        syn::Type::Path(p) => p.qself.is_none() && p.path.is_ident("f32"),
        _ => false,
    }
}

/// A literal in a closure: float or integer (read as a float), no suffix or `f32`, finite.
fn closure_literal(l: &syn::ExprLit) -> syn::Result<Expr> {
    let (value, suffix) = match &l.lit {
        syn::Lit::Float(f) => (f.base10_parse::<f32>(), f.suffix()),
        syn::Lit::Int(i) => (i.base10_parse::<f32>(), i.suffix()),
        _ => {
            return Err(on(
                l,
                format!("only numeric literals are allowed; {CLOSURE_GRAMMAR}"),
            ))
        }
    };
    if !suffix.is_empty() && suffix != "f32" {
        return Err(on(
            l,
            format!(
                "the closure computes in f32: write the literal without the `{suffix}` suffix \
                 (or with `f32`)"
            ),
        ));
    }
    match value {
        Ok(v) if v.is_finite() => Ok(Expr::Lit(v)),
        _ => Err(on(l, "this literal is not a finite f32")),
    }
}

fn lower_expr(e: &syn::Expr, param: &str) -> syn::Result<Expr> {
    let sub = |e: &syn::Expr| lower_expr(e, param).map(Box::new);
    match e {
        syn::Expr::Paren(p) => lower_expr(&p.expr, param),
        syn::Expr::Group(g) => lower_expr(&g.expr, param),
        syn::Expr::Path(p) => match p.path.get_ident() {
            Some(id) if p.qself.is_none() && id == param => Ok(Expr::Var),
            Some(id) => Err(on(
                e,
                format!(
                    "unknown name `{id}` in the closure: it may only use its argument \
                     `{param}`; {CLOSURE_GRAMMAR}"
                ),
            )),
            None => Err(on(
                e,
                format!("paths are not allowed in a feature-map closure; {CLOSURE_GRAMMAR}"),
            )),
        },
        syn::Expr::Lit(l) => closure_literal(l),
        syn::Expr::Unary(u) => match u.op {
            syn::UnOp::Neg(_) => Ok(Expr::Neg(sub(&u.expr)?)),
            _ => Err(on(
                u.op,
                format!("only unary `-` is allowed; {CLOSURE_GRAMMAR}"),
            )),
        },
        syn::Expr::Binary(b) => {
            let op = match b.op {
                syn::BinOp::Add(_) => BinOp::Add,
                syn::BinOp::Sub(_) => BinOp::Sub,
                syn::BinOp::Mul(_) => BinOp::Mul,
                syn::BinOp::Div(_) => BinOp::Div,
                _ if cmp_op(&b.op).is_some() => {
                    return Err(on(
                        b.op,
                        "comparisons are allowed only as the condition of \
                         `if .. { .. } else { .. }`",
                    ))
                }
                _ => {
                    let op = b.op.to_token_stream().to_string().replace(' ', "");
                    return Err(on(
                        b.op,
                        format!("operator `{op}` is not allowed; {CLOSURE_GRAMMAR}"),
                    ));
                }
            };
            Ok(Expr::Binary(op, sub(&b.left)?, sub(&b.right)?))
        }
        syn::Expr::MethodCall(m) => lower_method(m, param),
        syn::Expr::If(i) => lower_if(i, param),
        syn::Expr::Block(b) if b.label.is_none() && b.attrs.is_empty() => {
            lower_block(&b.block, param)
        }
        syn::Expr::Call(c) => Err(on(
            &c.func,
            format!(
                "function calls are not allowed; call the allowed methods on a value instead, \
                 e.g. `x.exp()`; {CLOSURE_GRAMMAR}"
            ),
        )),
        syn::Expr::Cast(c) => Err(on(
            c.as_token,
            format!("casts are not allowed: the closure computes in f32; {CLOSURE_GRAMMAR}"),
        )),
        syn::Expr::Assign(a) => Err(on(
            a.eq_token,
            format!("assignment is not allowed; {CLOSURE_GRAMMAR}"),
        )),
        syn::Expr::Field(f) => Err(on(
            &f.member,
            format!("field access is not allowed; {CLOSURE_GRAMMAR}"),
        )),
        syn::Expr::Macro(m) => Err(on(
            &m.mac.path,
            format!("macros are not allowed; {CLOSURE_GRAMMAR}"),
        )),
        _ => Err(on(
            e,
            format!("this is not allowed in a feature-map closure; {CLOSURE_GRAMMAR}"),
        )),
    }
}

fn lower_method(m: &syn::ExprMethodCall, param: &str) -> syn::Result<Expr> {
    if let Some(t) = &m.turbofish {
        return Err(on(t, "no type arguments are allowed here"));
    }
    let recv = Box::new(lower_expr(&m.receiver, param)?);
    let name = m.method.to_string();
    let args: Vec<&syn::Expr> = m.args.iter().collect();
    let unary = match name.as_str() {
        "exp" => Some(UnaryFn::Exp),
        "ln" => Some(UnaryFn::Ln),
        "sqrt" => Some(UnaryFn::Sqrt),
        "abs" => Some(UnaryFn::Abs),
        "tanh" => Some(UnaryFn::Tanh),
        _ => None,
    };
    if let Some(f) = unary {
        return match args.as_slice() {
            [] => Ok(Expr::Unary(f, recv)),
            _ => Err(on(
                &m.args,
                format!("`{name}` takes no arguments: write `x.{name}()`"),
            )),
        };
    }
    let binary = match name.as_str() {
        "max" => Some(BinaryFn::Max),
        "min" => Some(BinaryFn::Min),
        "powf" => Some(BinaryFn::Powf),
        _ => None,
    };
    if let Some(f) = binary {
        let example = if name == "powf" { "1.5" } else { "0.0" };
        return match args.as_slice() {
            [a] => Ok(Expr::Binary2(f, recv, Box::new(lower_expr(a, param)?))),
            _ => Err(on(
                &m.method,
                format!("`{name}` takes one argument, e.g. `x.{name}({example})`"),
            )),
        };
    }
    if name == "powi" {
        return match args.as_slice() {
            [a] => match int_exponent(a) {
                Some(n) => Ok(Expr::Powi(recv, n)),
                None => Err(on(
                    a,
                    "`powi` takes an integer literal, e.g. `x.powi(2)`; use `powf` for a float \
                     exponent",
                )),
            },
            _ => Err(on(
                &m.method,
                "`powi` takes one integer literal, e.g. `x.powi(2)`",
            )),
        };
    }
    Err(on(
        &m.method,
        format!("method `{name}` is not allowed; {CLOSURE_GRAMMAR}"),
    ))
}

/// An integer literal, possibly negated or parenthesised, for `powi`.
fn int_exponent(e: &syn::Expr) -> Option<i32> {
    match peel(e) {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) if matches!(i.suffix(), "" | "i32") => i.base10_parse::<i32>().ok(),
        syn::Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) => int_exponent(expr).and_then(i32::checked_neg),
        syn::Expr::Paren(p) => int_exponent(&p.expr),
        _ => None,
    }
}

fn cmp_op(op: &syn::BinOp) -> Option<CmpOp> {
    Some(match op {
        syn::BinOp::Lt(_) => CmpOp::Lt,
        syn::BinOp::Le(_) => CmpOp::Le,
        syn::BinOp::Gt(_) => CmpOp::Gt,
        syn::BinOp::Ge(_) => CmpOp::Ge,
        syn::BinOp::Eq(_) => CmpOp::Eq,
        syn::BinOp::Ne(_) => CmpOp::Ne,
        _ => return None,
    })
}

/// Strips parentheses and invisible groups.
fn unparen(e: &syn::Expr) -> &syn::Expr {
    match e {
        syn::Expr::Paren(p) => unparen(&p.expr),
        syn::Expr::Group(g) => unparen(&g.expr),
        other => other,
    }
}

fn lower_if(i: &syn::ExprIf, param: &str) -> syn::Result<Expr> {
    const ONE_COMPARISON: &str = "the condition must be one comparison (`<`, `<=`, `>`, `>=`, \
        `==` or `!=`) of two expressions, e.g. `x > 0.0`";
    let cond = match unparen(&i.cond) {
        syn::Expr::Binary(b) => match cmp_op(&b.op) {
            Some(op) => Cond {
                op,
                lhs: lower_expr(&b.left, param)?,
                rhs: lower_expr(&b.right, param)?,
            },
            None => return Err(on(b.op, ONE_COMPARISON)),
        },
        syn::Expr::Let(l) => return Err(on(l.let_token, ONE_COMPARISON)),
        other => return Err(on(other, ONE_COMPARISON)),
    };
    let then = lower_block(&i.then_branch, param)?;
    let Some((_, otherwise)) = &i.else_branch else {
        return Err(at(
            i.if_token.span,
            "`if` needs an `else` branch: the closure must give a value for every input",
        ));
    };
    Ok(Expr::If {
        cond: Box::new(cond),
        then: Box::new(then),
        otherwise: Box::new(lower_expr(otherwise, param)?),
    })
}

fn lower_block(b: &syn::Block, param: &str) -> syn::Result<Expr> {
    match b.stmts.as_slice() {
        [syn::Stmt::Expr(e, None)] => lower_expr(e, param),
        _ => Err(at(
            b.brace_token.span.join(),
            "a block here holds exactly one expression, with no `let` or `;`",
        )),
    }
}
