//! `feature_map = ..`: a name from [`FeatureMap::NAMED`], `dpfp(nu = ..)`, `favor(features = ..)`
//! or a closure.

use super::closure::parse_closure;
use super::hints::value_hint;
use super::keys::{ident_of, int_literal, peel};
use super::{at, on, one_of};
use crate::spec::FeatureMap;
use proc_macro2::TokenStream;
use quote::ToTokens;

/// Parses the value of `feature_map`.
pub(super) fn parse_feature_map(v: &syn::Expr) -> syn::Result<FeatureMap> {
    if let Some(id) = ident_of(v) {
        return FeatureMap::from_name(&id).ok_or_else(|| unknown(v));
    }
    match peel(v) {
        syn::Expr::Closure(c) => parse_closure(c).map(FeatureMap::Closure),
        syn::Expr::Call(call) => parse_call(call, v),
        syn::Expr::Lit(_) => Err(unknown(v)),
        _ => Err(on(v, allowed())),
    }
}

/// What `feature_map` accepts, for error messages: every named map (the sized ones at their
/// defaults), closures listed after the elementwise maps.
fn allowed() -> String {
    let named = FeatureMap::NAMED.iter();
    let mut choices: Vec<String> = named.clone().map(|(_, m)| format!("`{m}`")).collect();
    let elementwise = named
        .take_while(|(_, m)| m.eval_elementwise(0.0).is_some())
        .count();
    choices.insert(elementwise, "a closure `|x| ...`".to_string());
    format!("`feature_map` must be one of {}", one_of(&choices))
}

/// The error for a name or literal that is no feature map, with a hint if it is close to one.
fn unknown(v: &syn::Expr) -> syn::Error {
    let hint = value_hint(v, FeatureMap::NAMED.iter().map(|(n, _)| *n));
    on(v, format!("{}{hint}", allowed()))
}

/// `dpfp(nu = ..)` or `favor(features = ..)`; the other named maps take no arguments.
fn parse_call(call: &syn::ExprCall, v: &syn::Expr) -> syn::Result<FeatureMap> {
    let Some(name) = ident_of(&call.func) else {
        return Err(on(v, allowed()));
    };
    match FeatureMap::from_name(&name) {
        Some(FeatureMap::Dpfp { nu }) => parse_dpfp(call, &name, nu),
        Some(FeatureMap::Favor { features }) => parse_favor(call, &name, features),
        Some(_) => {
            let msg = format!("`{name}` takes no arguments: write `feature_map = {name}`");
            Err(if call.args.is_empty() {
                at(call.paren_token.span.join(), msg)
            } else {
                on(&call.args, msg)
            })
        }
        None => Err(on(v, allowed())),
    }
}

/// `dpfp(nu = ..)`, nu in 1..=16.
fn parse_dpfp(call: &syn::ExprCall, name: &str, default: usize) -> syn::Result<FeatureMap> {
    let (nu, lit) = named_int_arg(call, name, "nu", default)?;
    if !(1..=16).contains(&nu) {
        return Err(on(
            lit,
            "`dpfp(nu = ..)` needs nu in 1..=16 (its feature dimension is \
             2 * head_dim * nu), e.g. `dpfp(nu = 4)`",
        ));
    }
    Ok(FeatureMap::Dpfp { nu })
}

/// `favor(features = ..)`, a multiple of 8 in 8..=4096.
fn parse_favor(call: &syn::ExprCall, name: &str, default: usize) -> syn::Result<FeatureMap> {
    let (m, lit) = named_int_arg(call, name, "features", default)?;
    if !(8..=4096).contains(&m) || m % 8 != 0 {
        return Err(on(
            lit,
            "`favor(features = ..)` needs a multiple of 8 in 8..=4096, e.g. \
             `favor(features = 128)`",
        ));
    }
    Ok(FeatureMap::Favor { features: m })
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
