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

/// Every key, with its name as written.
const KEYS: [(&str, Key); 10] = [
    ("head_dim", Key::HeadDim),
    ("value_dim", Key::ValueDim),
    ("feature_map", Key::FeatureMap),
    ("mask", Key::Mask),
    ("update", Key::Update),
    ("normalize", Key::Normalize),
    ("qk_norm", Key::QkNorm),
    ("scale", Key::Scale),
    ("chunk", Key::Chunk),
    ("layout", Key::Layout),
];

/// What a closure body may contain, for error messages.
const CLOSURE_GRAMMAR: &str = "a feature-map closure may use its argument, float literals, \
    parentheses, `+ - * /`, unary `-`, the methods `exp ln sqrt abs tanh max min powi powf`, and \
    comparisons inside `if .. { .. } else { .. }`";

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

    /// Keeps the value of a successful parse, records the error of a failed one.
    fn ok<T>(&mut self, r: syn::Result<T>) -> Option<T> {
        r.map_err(|e| self.push(e)).ok()
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

fn err<T>(span: impl ToSpan, msg: impl std::fmt::Display) -> syn::Result<T> {
    Err(syn::Error::new(span.to_span(), msg))
}

/// Spans of syn nodes (whole node, not only its first token).
trait ToSpan {
    fn to_span(&self) -> Span;
}

impl ToSpan for Span {
    fn to_span(&self) -> Span {
        *self
    }
}

impl<T: syn::spanned::Spanned> ToSpan for &T {
    fn to_span(&self) -> Span {
        (*self).span()
    }
}

/// One `key = value` argument.
struct Arg {
    key: syn::Ident,
    value: syn::Expr,
}

impl syn::parse::Parse for Arg {
    fn parse(input: syn::parse::ParseStream) -> syn::Result<Self> {
        let key: syn::Ident = input.call(syn::ext::IdentExt::parse_any)?;
        if !input.peek(syn::Token![=]) {
            return Err(syn::Error::new(
                key.span(),
                format!("expected `{key} = <value>`: every spec entry is a `key = value` pair"),
            ));
        }
        input.parse::<syn::Token![=]>()?;
        let value: syn::Expr = input.parse()?;
        Ok(Arg { key, value })
    }
}

/// Parses and validates the arguments of `#[attention(...)]`.
///
/// Notes on the rules (DESIGN §2): `dpfp` alone means `dpfp(nu = 4)` and `favor` alone
/// `favor(features = 128)`; `normalize = sum` trusts closures to be non-negative (that is the
/// user's promise) and rejects `identity`, which is not.
pub fn parse_spec(attr: TokenStream) -> syn::Result<ParsedSpec> {
    use syn::parse::Parser;
    let args = syn::punctuated::Punctuated::<Arg, syn::Token![,]>::parse_terminated.parse2(attr)?;
    let mut errors = Errors::default();
    let mut spans = SpecSpans::default();
    let mut spec = Spec::with_head_dim(0);
    let mut head_dim = None;
    let mut value_dim = None;
    let mut seen: Vec<(Key, Span)> = Vec::new();
    for arg in &args {
        let name = arg.key.to_string();
        let Some(key) = KEYS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k) else {
            errors.push(unknown_key(&arg.key));
            continue;
        };
        if seen.iter().any(|(k, _)| *k == key) {
            errors.push(syn::Error::new(
                arg.key.span(),
                format!("`{name}` is given twice; give each key once"),
            ));
            continue;
        }
        seen.push((key, arg.key.span()));
        spans.insert(key, arg.key.span(), syn::spanned::Spanned::span(&arg.value));
        let v = &arg.value;
        match key {
            Key::HeadDim => head_dim = errors.ok(parse_dim(v, "head_dim")),
            Key::ValueDim => value_dim = errors.ok(parse_dim(v, "value_dim")),
            Key::FeatureMap => set(&mut errors, &mut spec.feature_map, parse_feature_map(v)),
            Key::Mask => set(
                &mut errors,
                &mut spec.mask,
                keyword(v, "mask", &[("causal", Mask::Causal), ("none", Mask::None)]),
            ),
            Key::Update => set(
                &mut errors,
                &mut spec.update,
                keyword(
                    v,
                    "update",
                    &[
                        ("additive", Update::Additive),
                        ("gated", Update::Gated),
                        ("delta", Update::Delta),
                        ("gated_delta", Update::GatedDelta),
                    ],
                ),
            ),
            Key::Normalize => set(
                &mut errors,
                &mut spec.normalize,
                keyword(
                    v,
                    "normalize",
                    &[("none", Normalize::None), ("sum", Normalize::Sum)],
                ),
            ),
            Key::QkNorm => set(
                &mut errors,
                &mut spec.qk_norm,
                keyword(v, "qk_norm", &[("none", QkNorm::None), ("l2", QkNorm::L2)]),
            ),
            Key::Scale => set(&mut errors, &mut spec.scale, parse_scale(v)),
            Key::Chunk => set(&mut errors, &mut spec.chunk, parse_chunk(v)),
            Key::Layout => set(
                &mut errors,
                &mut spec.layout,
                keyword(
                    v,
                    "layout",
                    &[("bhnd", Layout::Bhnd), ("bnhd", Layout::Bnhd)],
                ),
            ),
        }
    }
    let head_written = seen.iter().any(|(k, _)| *k == Key::HeadDim);
    if !head_written {
        errors.push(syn::Error::new(
            Span::call_site(),
            "`head_dim` is required: write e.g. #[attention(head_dim = 64)] \
             (an integer, a multiple of 8 in 8..=256)",
        ));
    }
    if let Some(d) = head_dim {
        spec.head_dim = d;
        spec.value_dim = value_dim.unwrap_or(d);
    }
    check_combinations(&spec, &spans, &seen, &mut errors);
    errors.finish()?;
    Ok(ParsedSpec { spec, spans })
}

fn set<T>(errors: &mut Errors, slot: &mut T, value: syn::Result<T>) {
    if let Some(v) = errors.ok(value) {
        *slot = v;
    }
}

/// Rules between keys, checked only between keys that parsed (so one typo does not cascade).
fn check_combinations(spec: &Spec, spans: &SpecSpans, seen: &[(Key, Span)], errors: &mut Errors) {
    let written = |k: Key| seen.iter().any(|(s, _)| *s == k);
    let mut rule = |cond: bool, key: Key, msg: &str| {
        if cond && written(key) {
            errors.push(syn::Error::new(spans.value(key), msg));
        }
    };
    let causal_only = !matches!(spec.update, Update::Additive);
    rule(
        spec.mask == Mask::None && causal_only,
        Key::Mask,
        "`mask = none` works only with `update = additive`: gates and the delta rule are \
         defined in token order, so they are causal; use `mask = causal`",
    );
    let delta = matches!(spec.update, Update::Delta | Update::GatedDelta);
    rule(
        spec.normalize == Normalize::Sum && delta,
        Key::Normalize,
        "`normalize = sum` cannot be used with delta updates (the delta rule's state is not a \
         sum of keys); use `normalize = none`",
    );
    rule(
        spec.normalize == Normalize::Sum && spec.feature_map == FeatureMap::Identity,
        Key::Normalize,
        "`normalize = sum` needs a non-negative feature map and `identity` is not one; choose \
         e.g. `feature_map = elu_plus_one`, `relu` or `sigmoid` (closures are trusted to be \
         non-negative)",
    );
    rule(
        spec.normalize == Normalize::Sum && spec.feature_map == FeatureMap::Softmax,
        Key::Normalize,
        "`normalize = sum` does not apply to `feature_map = softmax`, which normalises itself; \
         remove it",
    );
    rule(
        spec.feature_map == FeatureMap::Softmax && spec.update != Update::Additive,
        Key::Update,
        "`feature_map = softmax` is exact softmax attention, which has no recurrent update; \
         remove `update` (or use a linear feature map)",
    );
}

fn unknown_key(key: &syn::Ident) -> syn::Error {
    let name = key.to_string();
    let all: Vec<&str> = KEYS.iter().map(|(n, _)| *n).collect();
    let near = all
        .iter()
        .filter(|k| edit_distance(k, &name) <= 2 || k.starts_with(&name) || name.starts_with(*k))
        .min_by_key(|k| edit_distance(k, &name));
    let hint = near.map_or(String::new(), |k| format!("; did you mean `{k}`?"));
    syn::Error::new(
        key.span(),
        format!(
            "unknown key `{name}`: the keys are {}{hint}",
            all.join(", ")
        ),
    )
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
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

fn keyword<T: Copy>(v: &syn::Expr, key: &str, allowed: &[(&str, T)]) -> syn::Result<T> {
    let names: Vec<String> = allowed.iter().map(|(n, _)| format!("`{n}`")).collect();
    let found = ident_of(v).and_then(|id| allowed.iter().find(|(n, _)| *n == id));
    match found {
        Some((_, t)) => Ok(*t),
        None => err(v, format!("`{key}` must be one of {}", names.join(", "))),
    }
}

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
    let msg = format!("`{key}` must be an integer, a multiple of 8 in 8..=256 (e.g. 64)");
    match int_literal(v) {
        Some(Ok(d)) if (8..=256).contains(&d) && d % 8 == 0 => Ok(d),
        _ => err(v, msg),
    }
}

fn parse_chunk(v: &syn::Expr) -> syn::Result<usize> {
    match int_literal(v) {
        Some(Ok(c)) if (16..=256).contains(&c) && c.is_power_of_two() => Ok(c),
        _ => err(
            v,
            "`chunk` must be a power of two in 16..=256: 16, 32, 64, 128 or 256",
        ),
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
        _ => err(
            v,
            "`scale` must be `auto` (1/sqrt(head_dim)) or a positive, finite float literal such as 0.125",
        ),
    }
}

fn parse_feature_map(v: &syn::Expr) -> syn::Result<FeatureMap> {
    const ALLOWED: &str = "`feature_map` must be one of `identity`, `elu_plus_one`, `relu`, \
        `squared_relu`, `sigmoid`, a closure `|x| ...`, `taylor2`, `dpfp(nu = 4)`, \
        `favor(features = 128)`, `softmax`";
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
            _ => return err(v, ALLOWED),
        });
    }
    match peel(v) {
        syn::Expr::Closure(c) => parse_closure(c).map(FeatureMap::Closure),
        syn::Expr::Call(call) => {
            let name = ident_of(&call.func);
            match name.as_deref() {
                Some("dpfp") => {
                    let nu = named_int_arg(call, "nu")?;
                    if !(1..=16).contains(&nu) {
                        return err(&call.args, "`dpfp(nu = ..)` needs nu in 1..=16");
                    }
                    Ok(FeatureMap::Dpfp { nu })
                }
                Some("favor") => {
                    let m = named_int_arg(call, "features")?;
                    if !(8..=1024).contains(&m) || m % 8 != 0 {
                        return err(
                            &call.args,
                            "`favor(features = ..)` needs a multiple of 8 in 8..=1024",
                        );
                    }
                    Ok(FeatureMap::Favor { features: m })
                }
                _ => err(v, ALLOWED),
            }
        }
        _ => err(v, ALLOWED),
    }
}

/// The single `name = <integer>` argument of `dpfp(..)` / `favor(..)`.
fn named_int_arg(call: &syn::ExprCall, name: &str) -> syn::Result<usize> {
    let func = ident_of(&call.func).unwrap_or_default();
    let msg = format!("write `{func}({name} = <integer>)`");
    let mut args = call.args.iter();
    match (args.next(), args.next()) {
        (Some(syn::Expr::Assign(a)), None) if ident_of(&a.left).as_deref() == Some(name) => {
            match int_literal(&a.right) {
                Some(Ok(n)) => Ok(n),
                _ => err(&a.right, msg),
            }
        }
        _ => err(&call.args, msg),
    }
}

fn parse_closure(c: &syn::ExprClosure) -> syn::Result<Closure> {
    if c.inputs.len() != 1 {
        return err(
            &c.inputs,
            "a feature-map closure takes exactly one f32 argument, e.g. `|x| x.max(0.0)`",
        );
    }
    if let Some(m) = &c.movability {
        return err(m, "write the closure as `|x| expr`");
    }
    if let Some(a) = &c.asyncness {
        return err(a, "write the closure as `|x| expr`");
    }
    if let Some(m) = &c.capture {
        return err(m, "write the closure as `|x| expr`: it captures nothing");
    }
    if let syn::ReturnType::Type(_, ty) = &c.output {
        if !is_f32(ty) {
            return err(ty, "a feature-map closure returns f32");
        }
    }
    let param = match &c.inputs[0] {
        syn::Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.to_string(),
        syn::Pat::Type(t) => {
            if !is_f32(&t.ty) {
                return err(
                    &t.ty,
                    "the closure's argument is an f32: write `|x: f32|` or `|x|`",
                );
            }
            match &*t.pat {
                syn::Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => {
                    p.ident.to_string()
                }
                other => return err(other, "the closure's argument must be a plain name"),
            }
        }
        other => {
            return err(
                other,
                "the closure's argument must be a plain name, e.g. `x`",
            )
        }
    };
    let body = lower_expr(&c.body, &param)?;
    Ok(Closure { param, body })
}

fn is_f32(ty: &syn::Type) -> bool {
    matches!(ty, syn::Type::Path(p) if p.qself.is_none() && p.path.is_ident("f32"))
}

fn lower_expr(e: &syn::Expr, param: &str) -> syn::Result<Expr> {
    let sub = |e: &syn::Expr| lower_expr(e, param).map(Box::new);
    match e {
        syn::Expr::Paren(p) => lower_expr(&p.expr, param),
        syn::Expr::Group(g) => lower_expr(&g.expr, param),
        syn::Expr::Path(_) => match ident_of(e) {
            Some(id) if id == param => Ok(Expr::Var),
            _ => err(
                e,
                format!("unknown name in the closure: it may only use its argument `{param}`; {CLOSURE_GRAMMAR}"),
            ),
        },
        syn::Expr::Lit(l) => match &l.lit {
            syn::Lit::Float(f) => Ok(Expr::Lit(f.base10_parse::<f32>()?)),
            syn::Lit::Int(i) => Ok(Expr::Lit(i.base10_parse::<f32>()?)),
            _ => err(e, format!("only numeric literals are allowed; {CLOSURE_GRAMMAR}")),
        },
        syn::Expr::Unary(u) => match u.op {
            syn::UnOp::Neg(_) => Ok(Expr::Neg(sub(&u.expr)?)),
            _ => err(&u.op, format!("only unary `-` is allowed; {CLOSURE_GRAMMAR}")),
        },
        syn::Expr::Binary(b) => {
            let op = match b.op {
                syn::BinOp::Add(_) => BinOp::Add,
                syn::BinOp::Sub(_) => BinOp::Sub,
                syn::BinOp::Mul(_) => BinOp::Mul,
                syn::BinOp::Div(_) => BinOp::Div,
                _ if cmp_op(&b.op).is_some() => {
                    return err(
                        &b.op,
                        "comparisons are allowed only as the condition of `if .. { .. } else { .. }`",
                    )
                }
                _ => return err(&b.op, format!("operator not allowed; {CLOSURE_GRAMMAR}")),
            };
            Ok(Expr::Binary(op, sub(&b.left)?, sub(&b.right)?))
        }
        syn::Expr::MethodCall(m) => lower_method(m, param),
        syn::Expr::If(i) => lower_if(i, param),
        syn::Expr::Block(b) if b.label.is_none() => lower_block(&b.block, param),
        _ => err(e, format!("not allowed in a feature-map closure; {CLOSURE_GRAMMAR}")),
    }
}

fn lower_method(m: &syn::ExprMethodCall, param: &str) -> syn::Result<Expr> {
    if let Some(t) = &m.turbofish {
        return err(t, "no type arguments are allowed here");
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
            _ => err(&m.args, format!("`{name}` takes no arguments")),
        };
    }
    let binary = match name.as_str() {
        "max" => Some(BinaryFn::Max),
        "min" => Some(BinaryFn::Min),
        "powf" => Some(BinaryFn::Powf),
        _ => None,
    };
    if let Some(f) = binary {
        return match args.as_slice() {
            [a] => Ok(Expr::Binary2(f, recv, Box::new(lower_expr(a, param)?))),
            _ => err(&m.method, format!("`{name}` takes one argument")),
        };
    }
    if name == "powi" {
        let n = match args.as_slice() {
            [a] => int_exponent(a),
            _ => None,
        };
        return match n {
            Some(n) => Ok(Expr::Powi(recv, n)),
            None => err(
                &m.method,
                "`powi` takes one integer literal, e.g. `x.powi(2)`",
            ),
        };
    }
    err(
        &m.method,
        format!("method `{name}` is not allowed; {CLOSURE_GRAMMAR}"),
    )
}

/// An integer literal, possibly negated, for `powi`.
fn int_exponent(e: &syn::Expr) -> Option<i32> {
    match peel(e) {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => i.base10_parse::<i32>().ok(),
        syn::Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) => int_exponent(expr).map(|n| -n),
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

fn lower_if(i: &syn::ExprIf, param: &str) -> syn::Result<Expr> {
    let cond = match &*i.cond {
        syn::Expr::Binary(b) => match cmp_op(&b.op) {
            Some(op) => Cond {
                op,
                lhs: lower_expr(&b.left, param)?,
                rhs: lower_expr(&b.right, param)?,
            },
            None => {
                return err(
                    &i.cond,
                    "the condition must be one comparison, e.g. `x > 0.0`",
                )
            }
        },
        other => {
            return err(
                other,
                "the condition must be one comparison, e.g. `x > 0.0`",
            )
        }
    };
    let then = lower_block(&i.then_branch, param)?;
    let Some((_, otherwise)) = &i.else_branch else {
        return err(
            i.if_token.span,
            "`if` needs an `else` branch: the closure must give a value for every input",
        );
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
        _ => err(
            b.brace_token.span.join(),
            "a block here holds exactly one expression",
        ),
    }
}

/// Parses a spec from text, e.g. `"head_dim = 64, update = gated"` (for tests and tools).
pub fn parse_spec_str(text: &str) -> syn::Result<ParsedSpec> {
    let tokens: TokenStream = syn::parse_str(text)?;
    parse_spec(tokens)
}
