//! Tokens → validated [`Spec`]. Every error carries the span of the key or value at fault, and
//! all errors of one attribute are reported together.

use crate::spec::*;
use proc_macro2::{Span, TokenStream};

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
}

/// A spec and where its parts were written.
#[derive(Clone, Debug)]
pub struct ParsedSpec {
    /// The validated spec, defaults filled in.
    pub spec: Spec,
    /// Spans of the keys and values as written.
    pub spans: SpecSpans,
}

/// Parses and validates the arguments of `#[attention(...)]`.
pub fn parse_spec(attr: TokenStream) -> syn::Result<ParsedSpec> {
    let _ = attr;
    todo!("parser")
}

/// Parses a spec from text, e.g. `"head_dim = 64, update = gated"` (for tests and tools).
pub fn parse_spec_str(text: &str) -> syn::Result<ParsedSpec> {
    let tokens: TokenStream = syn::parse_str(text)?;
    parse_spec(tokens)
}
