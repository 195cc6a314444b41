//! Splitting the attribute into `key = value` items, each parsed on its own so that a syntax
//! error in one does not hide the errors of the others.

use super::hints::{suggest_key, unknown_key};
use super::keys::Key;
use super::{at, Errors};
use proc_macro2::{Delimiter, Spacing, Span, TokenStream, TokenTree};
use std::iter::Peekable;

/// One `key = value` argument, split off the attribute.
pub(super) struct Arg {
    /// The key as written (for its span).
    pub key: syn::Ident,
    /// Which key it is.
    pub which: Key,
    /// The value, parsed as an expression (values are checked per key later).
    pub value: syn::Expr,
}

/// A failed argument, with the key it was for when known (so it counts as written).
type ArgError = (Option<Key>, syn::Error);

fn is_punct(t: Option<&TokenTree>, c: char) -> bool {
    matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

/// Splits the attribute at its top-level commas. The commas between a closure's parameters
/// (`feature_map = |x, y| ..`) are not separators: that closure is an error of its own, reported
/// as such. Empty arguments (`,,` or a leading `,`) are errors; a trailing comma is fine.
pub(super) fn split_args(attr: TokenStream, errors: &mut Errors) -> Vec<Vec<TokenTree>> {
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
pub(super) fn parse_arg(segment: Vec<TokenTree>) -> Result<Arg, ArgError> {
    let mut it = segment.into_iter().peekable();
    let key = match it.next() {
        Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::None => {
            // `#[attention($args)]` from a macro: look inside the invisible group.
            let inner: Vec<TokenTree> = g.stream().into_iter().chain(it).collect();
            return parse_arg(inner);
        }
        first => key_ident(first).map_err(|e| (None, e))?,
    };
    let name = key.to_string();
    let Some(which) = Key::from_name(&name) else {
        // The key it most likely meant counts as written (so `head_dimm = 64` is one error,
        // not also "`head_dim` is required").
        let meant = suggest_key(&name).and_then(Key::from_name);
        return Err((meant, unknown_key(&key)));
    };
    let fail = |e: syn::Error| (Some(which), e);
    let eq = eq_sign(&key, &mut it).map_err(fail)?;
    let rest: TokenStream = it.collect();
    if rest.is_empty() {
        return Err(fail(at(
            eq,
            format!("`{name} =` needs a value: write `{name} = <value>`"),
        )));
    }
    check_size(&key, &rest).map_err(fail)?;
    let value: syn::Expr = syn::parse2(rest).map_err(fail)?;
    Ok(Arg { key, which, value })
}

/// How deep brackets may nest in a value. syn, the closure lowering, the planner and both
/// emitters recurse on the expression; past this a deep value could overflow the compiler's
/// stack, which aborts it without a message (syn overflows near 1000 on a 2 MiB stack).
pub(super) const MAX_NESTING: usize = 256;

/// How many tokens a value may have: a long flat chain (`x + x + ..`) nests as deeply in the
/// parsed expression as brackets do in the tokens.
const MAX_TOKENS: usize = 4096;

/// Rejects values too deep or too long to parse safely, before syn sees them.
fn check_size(key: &syn::Ident, value: &TokenStream) -> syn::Result<()> {
    let first = value.clone().into_iter().next();
    let span = first.map_or_else(Span::call_site, |t| t.span());
    match size(value, 0) {
        Some(n) if n <= MAX_TOKENS => Ok(()),
        Some(_) => Err(at(
            span,
            format!("the value of `{key}` is too long: at most {MAX_TOKENS} tokens"),
        )),
        None => Err(at(
            span,
            format!("the value of `{key}` nests too deeply: at most {MAX_NESTING} brackets"),
        )),
    }
}

/// A token as quoted in a message: as written, but a group too deep or long to print (printing
/// recurses) is abbreviated to its brackets.
fn shown(t: &TokenTree) -> String {
    match t {
        TokenTree::Group(g) if size(&g.stream(), 0).is_none_or(|n| n > MAX_TOKENS) => {
            match g.delimiter() {
                Delimiter::Parenthesis => "(..)",
                Delimiter::Brace => "{..}",
                Delimiter::Bracket => "[..]",
                Delimiter::None => "..",
            }
            .to_string()
        }
        other => other.to_string(),
    }
}

/// The number of tokens in `tokens` (groups counted with their contents), or `None` if its
/// brackets nest deeper than [`MAX_NESTING`] below `depth`.
fn size(tokens: &TokenStream, depth: usize) -> Option<usize> {
    if depth > MAX_NESTING {
        return None;
    }
    tokens.clone().into_iter().try_fold(0, |n, t| match t {
        TokenTree::Group(g) => Some(n + 1 + size(&g.stream(), depth + 1)?),
        _ => Some(n + 1),
    })
}

/// The argument's first token, which must be a key.
fn key_ident(first: Option<TokenTree>) -> syn::Result<syn::Ident> {
    match first {
        Some(TokenTree::Ident(k)) => Ok(k),
        Some(other) => Err(at(
            other.span(),
            format!(
                "expected a key such as `head_dim`, found `{}`: the spec is a list of \
                 `key = value` pairs",
                shown(&other)
            ),
        )),
        None => Err(at(Span::call_site(), "expected `key = value`")),
    }
}

/// The span of the lone `=` after `key` (`==` and `=>` are typos, not separators).
fn eq_sign(
    key: &syn::Ident,
    it: &mut Peekable<impl Iterator<Item = TokenTree>>,
) -> syn::Result<Span> {
    match it.next() {
        Some(TokenTree::Punct(p)) if p.as_char() == '=' => {
            let joined = p.spacing() == Spacing::Joint
                && matches!(it.peek(), Some(TokenTree::Punct(q)) if matches!(q.as_char(), '=' | '>'));
            if joined {
                return Err(at(
                    p.span(),
                    format!("expected a single `=` after `{key}`: write `{key} = <value>`"),
                ));
            }
            Ok(p.span())
        }
        None => Err(at(
            key.span(),
            format!("expected `{key} = <value>`: every spec entry is a `key = value` pair"),
        )),
        Some(other) => Err(at(
            other.span(),
            format!(
                "expected `=` after `{key}`, found `{}`: every spec entry is a \
                 `key = value` pair",
                shown(&other)
            ),
        )),
    }
}
