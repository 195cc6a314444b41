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
//! The stages, one file each: `args` (split into `key = value` items), `keys` (the key table and
//! each key's value), `feature_map` (including `dpfp(..)` / `favor(..)`), `closure` (feature-map
//! closures lowered to [`crate::spec::Expr`]), `rules` (forbidden combinations across keys) and
//! `hints` ("did you mean" suggestions).
//!
//! Choices this parser makes where the spec language leaves room:
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
//! - A value nests brackets at most 256 deep and has at most 4096 tokens, and a closure nests at
//!   most 128 operations deep: syn, the planner, the emitters and `Display` recurse on the
//!   expression, and deeper input would overflow the compiler's stack (an abort, no message).

mod args;
mod closure;
mod feature_map;
mod hints;
mod keys;
mod rules;

pub use keys::{Key, SpecSpans};

use crate::spec::Spec;
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;

/// A spec and where its parts were written.
#[derive(Clone, Debug)]
pub struct ParsedSpec {
    /// The validated spec, defaults filled in.
    pub spec: Spec,
    /// Spans of the keys and values as written.
    pub spans: SpecSpans,
}

/// Parses and validates the arguments of `#[attention(...)]`.
///
/// Returns every error found (unknown, duplicate and missing keys, bad values, forbidden
/// combinations), each at the key or value at fault; see the module docs for the rules. Notes:
/// `dpfp` alone means `dpfp(nu = 4)` and `favor` alone `favor(features = 128)`; `normalize = sum`
/// trusts closures to be non-negative (that is the user's promise) and rejects `identity`, which
/// is not.
pub fn parse_spec(attr: TokenStream) -> syn::Result<ParsedSpec> {
    let (parsed, errors) = parse_spec_recovering(attr);
    match errors {
        Some(e) => Err(e),
        None => Ok(parsed),
    }
}

/// As [`parse_spec`], but also returns a best-effort spec next to the errors: the accepted
/// values, defaults for the rejected ones. The macro uses it to emit the methods' signatures
/// of a spec with errors, so that each use of the struct does not add a second error.
/// `head_dim` is `0` in it when it was missing or rejected.
pub fn parse_spec_recovering(attr: TokenStream) -> (ParsedSpec, Option<syn::Error>) {
    let mut errors = Errors::default();
    let mut b = keys::Builder::default();
    for segment in args::split_args(attr, &mut errors) {
        match args::parse_arg(segment) {
            Ok(arg) => b.apply(arg, &mut errors),
            Err((key, e)) => {
                // A known key with a malformed value counts as written (no "required" error).
                b.failed.extend(key);
                errors.push(e);
            }
        }
    }
    b.require_head_dim(&mut errors);
    rules::check(&b, &mut errors);
    (b.finish(), errors.finish().err())
}

/// Parses a spec from text, e.g. `"head_dim = 64, update = gated"` (for tests and tools).
pub fn parse_spec_str(text: &str) -> syn::Result<ParsedSpec> {
    // Lexed directly rather than through `syn::parse_str`, whose token buffer recurses once per
    // bracket level before `parse_spec` can bound the depth (same errors: `LexError` converts).
    let tokens: TokenStream = text.parse()?;
    parse_spec(tokens)
}

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

/// `a`, `a or b`, `a, b or c`: how messages list the allowed choices.
fn one_of(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [only] => only.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}
