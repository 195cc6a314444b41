//! The key table and each key's value: the spec under construction, filled in one accepted
//! `key = value` at a time.

use super::args::Arg;
use super::feature_map::parse_feature_map;
use super::hints::value_hint;
use super::{at, on, one_of, Errors, ParsedSpec};
use crate::spec::*;
use proc_macro2::Span;

/// The keys of the spec language.
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
    /// `heads`
    Heads,
    /// `short_conv`
    ShortConv,
    /// `rpe`
    Rpe,
    /// `precision`
    Precision,
}

impl Key {
    /// Every key, in the order of the README's key table.
    pub const ALL: [Key; 14] = [
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
        Key::Heads,
        Key::ShortConv,
        Key::Rpe,
        Key::Precision,
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
            Key::Heads => "heads",
            Key::ShortConv => "short_conv",
            Key::Rpe => "rpe",
            Key::Precision => "precision",
        }
    }

    /// The key written as `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Where each value was written, for errors reported after the values are parsed (the rules
/// across keys).
#[derive(Clone, Debug, Default)]
pub struct SpecSpans {
    entries: Vec<(Key, Span)>,
}

impl SpecSpans {
    /// Records the span of the value written for `key`.
    pub fn insert(&mut self, key: Key, value_span: Span) {
        self.entries.push((key, value_span));
    }

    /// The span of the value written for `key`, or the call site if the key was left at its default.
    pub fn value(&self, key: Key) -> Span {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map_or_else(Span::call_site, |e| e.1)
    }

    /// Whether `key` was written in the attribute (rather than left at its default).
    pub fn contains(&self, key: Key) -> bool {
        self.entries.iter().any(|(k, _)| *k == key)
    }
}

/// The spec under construction: defaults, then each accepted value.
pub(super) struct Builder {
    pub spec: Spec,
    pub spans: SpecSpans,
    /// Keys whose value was rejected (they keep their default, which combination rules ignore).
    pub failed: Vec<Key>,
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
    /// Records one argument: its value, or the error that rejects it.
    pub fn apply(&mut self, arg: Arg, errors: &mut Errors) {
        let Arg { key, which, value } = arg;
        if self.spans.contains(which) {
            errors.push(at(
                key.span(),
                format!("`{key}` was already given earlier in this attribute; give each key once"),
            ));
            return;
        }
        self.spans
            .insert(which, syn::spanned::Spanned::span(&value));
        if let Err(e) = self.set(which, &value) {
            self.failed.push(which);
            errors.push(e);
        }
    }

    /// Parses `v` as the value of `key` and stores it.
    fn set(&mut self, key: Key, v: &syn::Expr) -> syn::Result<()> {
        let s = &mut self.spec;
        match key {
            Key::HeadDim => self.head_dim = Some(parse_dim(v, key)?),
            Key::ValueDim => self.value_dim = Some(parse_dim(v, key)?),
            Key::FeatureMap => s.feature_map = parse_feature_map(v)?,
            Key::Mask => s.mask = keyword(v, key, mask_gloss)?,
            Key::Update => (s.update, s.momentum) = parse_update(v)?,
            Key::Normalize => s.normalize = keyword(v, key, no_gloss)?,
            Key::QkNorm => s.qk_norm = keyword(v, key, no_gloss)?,
            Key::Scale => s.scale = parse_scale(v)?,
            Key::Chunk => s.chunk = parse_chunk(v)?,
            Key::Layout => s.layout = keyword(v, key, layout_gloss)?,
            Key::Heads => s.heads = Some(parse_heads(v)?),
            Key::ShortConv => s.short_conv = Some(parse_short_conv(v)?),
            Key::Rpe => s.rpe = keyword(v, key, rpe_gloss)?,
            Key::Precision => s.precision = keyword(v, key, precision_gloss)?,
        }
        Ok(())
    }

    /// `head_dim` has no default; the error is left out when its value was the problem.
    pub fn require_head_dim(&mut self, errors: &mut Errors) {
        if !self.spans.contains(Key::HeadDim) && !self.failed.contains(&Key::HeadDim) {
            errors.push(at(
                Span::call_site(),
                "`head_dim` is required: write e.g. #[attention(head_dim = 64)] \
                 (an integer, a multiple of 8 in 8..=256)",
            ));
        }
        if let Some(d) = self.head_dim {
            self.spec.head_dim = d;
            self.spec.value_dim = self.value_dim.unwrap_or(d);
        }
    }

    /// The spec and where it was written.
    pub fn finish(self) -> ParsedSpec {
        ParsedSpec {
            spec: self.spec,
            spans: self.spans,
        }
    }
}

/// Looks through the invisible groups `macro_rules!` puts around `$x:literal` / `$x:expr`.
pub(super) fn peel(v: &syn::Expr) -> &syn::Expr {
    match v {
        syn::Expr::Group(g) => peel(&g.expr),
        other => other,
    }
}

/// A bare identifier value, e.g. `causal`.
pub(super) fn ident_of(v: &syn::Expr) -> Option<String> {
    match peel(v) {
        syn::Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => {
            p.path.get_ident().map(|i| i.to_string())
        }
        _ => None,
    }
}

/// The contents of a string literal value (for the "write it without quotes" hint).
pub(super) fn str_of(v: &syn::Expr) -> Option<String> {
    match peel(v) {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Some(s.value()),
        _ => None,
    }
}

/// A keyword value (`mask = causal`), spelt as in its [`Keyword`] table. The error lists the
/// spellings, each followed by its gloss.
fn keyword<T: Keyword>(v: &syn::Expr, key: Key, gloss: fn(T) -> &'static str) -> syn::Result<T> {
    if let Some(t) = ident_of(v).and_then(|id| T::from_keyword(&id)) {
        return Ok(t);
    }
    let choices: Vec<String> = T::ALL
        .iter()
        .map(|(t, s)| format!("`{s}`{}", gloss(*t)))
        .collect();
    let hint = value_hint(v, T::ALL.iter().map(|(_, s)| *s));
    Err(on(
        v,
        format!("`{}` must be {}{hint}", key.name(), one_of(&choices)),
    ))
}

fn no_gloss<T>(_: T) -> &'static str {
    ""
}

fn mask_gloss(m: Mask) -> &'static str {
    match m {
        Mask::Causal => " (token t sees tokens 1..=t)",
        Mask::None => " (every token sees the whole sequence)",
    }
}

fn rpe_gloss(r: Rpe) -> &'static str {
    match r {
        Rpe::None => " (no positional weights)",
        Rpe::Toeplitz => " (scores weighted by exp(b[s - t]), computed by FFT)",
    }
}

fn precision_gloss(p: Precision) -> &'static str {
    match p {
        Precision::Fp32 => " (3xTF32 on tensor cores: fp32 accuracy)",
        Precision::Tf32 => " (plain TF32 on tensor cores: about 1e-3 relative)",
    }
}

/// `update = ..`: a keyword, or `momentum(mu = ..)` (an additive update with momentum).
fn parse_update(v: &syn::Expr) -> syn::Result<(Update, Option<f32>)> {
    if let syn::Expr::Call(call) = peel(v) {
        if ident_of(&call.func).as_deref() == Some(Update::MOMENTUM) {
            return parse_momentum(call).map(|mu| (Update::Additive, Some(mu)));
        }
    }
    if ident_of(v).as_deref() == Some(Update::MOMENTUM) {
        return Err(on(
            v,
            "`momentum` needs its coefficient: write `update = momentum(mu = 0.9)` (mu in [0, 1))",
        ));
    }
    keyword(v, Key::Update, no_gloss)
        .map_err(|e| {
            let hint = "; or `momentum(mu = 0.9)` (the additive update with heavy-ball momentum)";
            syn::Error::new(e.span(), format!("{e}{hint}"))
        })
        .map(|u| (u, None))
}

/// `momentum(mu = ..)`: one named float argument in [0, 1).
fn parse_momentum(call: &syn::ExprCall) -> syn::Result<f32> {
    const USAGE: &str = "`momentum` takes one argument, `mu`, a float literal in [0, 1): \
                         e.g. `update = momentum(mu = 0.9)`; it is the additive update with \
                         heavy-ball momentum and does not combine with `gated` or `delta`";
    let [arg] = call.args.iter().collect::<Vec<_>>()[..] else {
        return Err(on(call, USAGE));
    };
    let syn::Expr::Assign(assign) = peel(arg) else {
        return Err(on(arg, USAGE));
    };
    if ident_of(&assign.left).as_deref() != Some("mu") {
        return Err(on(&assign.left, USAGE));
    }
    let mu = number_literal(&assign.right);
    match mu {
        Some(mu) if (0.0..1.0).contains(&mu) => Ok(mu),
        _ => Err(on(
            &assign.right,
            "`mu` must be a float literal in [0, 1) (0 is the plain additive update; at 1 the \
             momentum never decays and the state grows without bound), e.g. `mu = 0.9`",
        )),
    }
}

/// `short_conv = w`, w in 2..=8.
fn parse_short_conv(v: &syn::Expr) -> syn::Result<usize> {
    match int_literal(v) {
        Some(Ok(w)) if (2..=8).contains(&w) => Ok(w),
        _ => Err(on(
            v,
            "`short_conv` must be the convolution's width, an integer in 2..=8 (e.g. 4, as \
             flash-linear-attention's ShortConvolution)",
        )),
    }
}

fn layout_gloss(l: Layout) -> &'static str {
    match l {
        Layout::Bhnd => " (batch, heads, tokens, dim)",
        Layout::Bnhd => " (batch, tokens, heads, dim)",
    }
}

/// The value of an integer literal (no sign, any suffix), if `v` is one.
pub(super) fn int_literal(v: &syn::Expr) -> Option<syn::Result<usize>> {
    match peel(v) {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => Some(i.base10_parse::<usize>()),
        _ => None,
    }
}

fn parse_dim(v: &syn::Expr, key: Key) -> syn::Result<usize> {
    match int_literal(v) {
        Some(Ok(d)) if (8..=256).contains(&d) && d % 8 == 0 => Ok(d),
        _ => Err(on(
            v,
            format!(
                "`{}` must be an integer, a multiple of 8 in 8..=256 (e.g. 64)",
                key.name()
            ),
        )),
    }
}

/// The most heads `heads = H` accepts (CUDA launches one block row per batch x head).
pub const MAX_HEADS: usize = 1024;

fn parse_heads(v: &syn::Expr) -> syn::Result<usize> {
    match int_literal(v) {
        Some(Ok(h)) if (1..=MAX_HEADS).contains(&h) => Ok(h),
        _ => Err(on(
            v,
            format!(
                "`heads` must be an integer in 1..={MAX_HEADS}, the number of heads H of q, k \
                 and v (e.g. 8): it fixes H as `Const<H>` in every signature"
            ),
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

/// The value of a float or integer literal, if `v` is one.
fn number_literal(v: &syn::Expr) -> Option<f32> {
    match peel(v) {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Float(f),
            ..
        }) => f.base10_parse::<f32>().ok(),
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => i.base10_parse::<f32>().ok(),
        _ => None,
    }
}

fn parse_scale(v: &syn::Expr) -> syn::Result<Scale> {
    if ident_of(v).as_deref() == Some(Scale::AUTO) {
        return Ok(Scale::Auto);
    }
    let value = number_literal(v);
    match value {
        Some(s) if s.is_finite() && s > 0.0 => Ok(Scale::Value(s)),
        _ => Err(on(
            v,
            "`scale` must be `auto` (1/sqrt(head_dim)) or a positive, finite float literal such \
             as 0.125",
        )),
    }
}
