//! Feature-map closures `|x| expr`, lowered to the small [`Expr`] tree every backend can emit.
//! Anything outside that grammar is an error at the offending token.

use super::args::MAX_NESTING;
use super::keys::peel;
use super::{at, on};
use crate::spec::*;
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;

/// What a closure body may contain, for error messages.
const CLOSURE_GRAMMAR: &str = "a feature-map closure may use its argument, float literals, \
    parentheses, `+ - * /`, unary `-`, the methods `exp ln sqrt abs tanh max min powi powf`, and \
    comparisons inside `if .. { .. } else { .. }`";

/// Lowers `|x| body` (optionally `|x: f32| -> f32 body`).
pub(super) fn parse_closure(c: &syn::ExprClosure) -> syn::Result<Closure> {
    check_plain(c)?;
    let input = one_input(c)?;
    if let syn::ReturnType::Type(_, ty) = &c.output {
        if !is_f32(ty) {
            return Err(on(
                ty,
                "a feature-map closure returns f32: write `-> f32` or nothing",
            ));
        }
    }
    let param = param_name(input)?;
    let scope = Scope {
        param: &param,
        depth: 0,
        start: c.or1_token.span,
    };
    let body = lower_expr(&c.body, scope)?;
    Ok(Closure { param, body })
}

/// Rejects closure decorations: attributes, `for<..>`, `const`, `static`, `async`, `move`.
fn check_plain(c: &syn::ExprClosure) -> syn::Result<()> {
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
    match &c.capture {
        Some(m) => Err(on(
            m,
            "write the closure as `|x| expr`, without `move`: it captures nothing",
        )),
        None => Ok(()),
    }
}

/// The closure's only parameter.
fn one_input(c: &syn::ExprClosure) -> syn::Result<&syn::Pat> {
    const ONE_ARG: &str =
        "a feature-map closure takes exactly one f32 argument, e.g. `|x| x.max(0.0)`";
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
    Ok(first)
}

/// The parameter's name, `x` in `|x|` or `|x: f32|`.
fn param_name(input: &syn::Pat) -> syn::Result<String> {
    match input {
        syn::Pat::Type(t) if !is_f32(&t.ty) => Err(on(
            &t.ty,
            "the closure's argument is an f32: write `|x: f32|` or `|x|`",
        )),
        syn::Pat::Type(t) => plain_name(&t.pat),
        other => plain_name(other),
    }
}

/// A parameter pattern that is just a name (no `ref`, `@` pattern or attributes).
fn plain_name(pat: &syn::Pat) -> syn::Result<String> {
    match pat {
        syn::Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() && p.attrs.is_empty() => {
            Ok(p.ident.to_string())
        }
        other => Err(on(
            other,
            "the closure's argument must be a plain name, e.g. `x`",
        )),
    }
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

/// Where the lowering is: the closure's parameter and how many operations deep.
#[derive(Clone, Copy)]
struct Scope<'a> {
    param: &'a str,
    depth: usize,
    /// The closure's first `|`, where a too-deep body is reported: the span of a deep
    /// sub-expression would cost a walk as deep as the one being cut short.
    start: Span,
}

/// How many operations deep a closure may nest. The planner, both emitters and `Display`
/// recurse on the tree, and `Display` writes up to two brackets per level, which must stay
/// within the parser's own bracket limit so a printed spec parses back.
const MAX_DEPTH: usize = MAX_NESTING / 2;

impl Scope<'_> {
    /// The scope one operation further in, or an error past [`MAX_DEPTH`].
    fn deeper(self) -> syn::Result<Self> {
        if self.depth >= MAX_DEPTH {
            return Err(at(
                self.start,
                format!(
                    "this closure nests more than {MAX_DEPTH} operations deep; write it with fewer"
                ),
            ));
        }
        Ok(Scope {
            depth: self.depth + 1,
            ..self
        })
    }
}

/// Lowers one expression of the closure body. Brackets and blocks are transparent; every
/// other node is one level deeper.
fn lower_expr(e: &syn::Expr, s: Scope<'_>) -> syn::Result<Expr> {
    match e {
        syn::Expr::Paren(p) => lower_expr(&p.expr, s),
        syn::Expr::Group(g) => lower_expr(&g.expr, s),
        syn::Expr::Block(b) if b.label.is_none() && b.attrs.is_empty() => lower_block(&b.block, s),
        _ => lower_node(e, s.deeper()?),
    }
}

/// Lowers one operation (or leaf) of the closure body.
fn lower_node(e: &syn::Expr, s: Scope<'_>) -> syn::Result<Expr> {
    let sub = |e: &syn::Expr| lower_expr(e, s).map(Box::new);
    match e {
        syn::Expr::Path(p) => lower_path(e, p, s.param),
        syn::Expr::Lit(l) => closure_literal(l),
        syn::Expr::Unary(u) => match u.op {
            syn::UnOp::Neg(_) => Ok(Expr::Neg(sub(&u.expr)?)),
            _ => Err(on(
                u.op,
                format!("only unary `-` is allowed; {CLOSURE_GRAMMAR}"),
            )),
        },
        syn::Expr::Binary(b) => Ok(Expr::Binary(
            arith_op(&b.op)?,
            sub(&b.left)?,
            sub(&b.right)?,
        )),
        syn::Expr::MethodCall(m) => lower_method(m, s),
        syn::Expr::If(i) => lower_if(i, s),
        _ => Err(not_allowed(e)),
    }
}

/// The parameter; any other name or path is an error.
fn lower_path(e: &syn::Expr, p: &syn::ExprPath, param: &str) -> syn::Result<Expr> {
    match p.path.get_ident() {
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
    }
}

/// `+ - * /`; comparisons belong in an `if` condition, other operators nowhere.
fn arith_op(op: &syn::BinOp) -> syn::Result<BinOp> {
    match op {
        syn::BinOp::Add(_) => Ok(BinOp::Add),
        syn::BinOp::Sub(_) => Ok(BinOp::Sub),
        syn::BinOp::Mul(_) => Ok(BinOp::Mul),
        syn::BinOp::Div(_) => Ok(BinOp::Div),
        _ if cmp_op(op).is_some() => Err(on(
            op,
            "comparisons are allowed only as the condition of `if .. { .. } else { .. }`",
        )),
        _ => {
            let text = op.to_token_stream().to_string().replace(' ', "");
            Err(on(
                op,
                format!("operator `{text}` is not allowed; {CLOSURE_GRAMMAR}"),
            ))
        }
    }
}

/// The error for an expression outside the closure grammar, at its most telling token.
fn not_allowed(e: &syn::Expr) -> syn::Error {
    match e {
        syn::Expr::Call(c) => on(
            &c.func,
            format!(
                "function calls are not allowed; call the allowed methods on a value instead, \
                 e.g. `x.exp()`; {CLOSURE_GRAMMAR}"
            ),
        ),
        syn::Expr::Cast(c) => on(
            c.as_token,
            format!("casts are not allowed: the closure computes in f32; {CLOSURE_GRAMMAR}"),
        ),
        syn::Expr::Assign(a) => on(
            a.eq_token,
            format!("assignment is not allowed; {CLOSURE_GRAMMAR}"),
        ),
        syn::Expr::Field(f) => on(
            &f.member,
            format!("field access is not allowed; {CLOSURE_GRAMMAR}"),
        ),
        syn::Expr::Macro(m) => on(
            &m.mac.path,
            format!("macros are not allowed; {CLOSURE_GRAMMAR}"),
        ),
        _ => on(
            e,
            format!("this is not allowed in a feature-map closure; {CLOSURE_GRAMMAR}"),
        ),
    }
}

/// `x.exp()` and the other one-argument methods, `x.max(y)` and the other two-argument ones,
/// and `x.powi(n)` with an integer literal `n`.
fn lower_method(m: &syn::ExprMethodCall, s: Scope<'_>) -> syn::Result<Expr> {
    if let Some(t) = &m.turbofish {
        return Err(on(t, "no type arguments are allowed here"));
    }
    let recv = Box::new(lower_expr(&m.receiver, s)?);
    let name = m.method.to_string();
    let args: Vec<&syn::Expr> = m.args.iter().collect();
    if let Some(f) = UnaryFn::from_keyword(&name) {
        return match args.as_slice() {
            [] => Ok(Expr::Unary(f, recv)),
            _ => Err(on(
                &m.args,
                format!("`{name}` takes no arguments: write `x.{name}()`"),
            )),
        };
    }
    if let Some(f) = BinaryFn::from_keyword(&name) {
        let example = if f == BinaryFn::Powf { "1.5" } else { "0.0" };
        return match args.as_slice() {
            [a] => Ok(Expr::Binary2(f, recv, Box::new(lower_expr(a, s)?))),
            _ => Err(on(
                &m.method,
                format!("`{name}` takes one argument, e.g. `x.{name}({example})`"),
            )),
        };
    }
    if name == "powi" {
        return lower_powi(m, recv, &args);
    }
    Err(on(
        &m.method,
        format!("method `{name}` is not allowed; {CLOSURE_GRAMMAR}"),
    ))
}

/// `recv.powi(n)`: one integer literal argument.
fn lower_powi(m: &syn::ExprMethodCall, recv: Box<Expr>, args: &[&syn::Expr]) -> syn::Result<Expr> {
    match args {
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
    }
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

fn lower_if(i: &syn::ExprIf, s: Scope<'_>) -> syn::Result<Expr> {
    const ONE_COMPARISON: &str = "the condition must be one comparison (`<`, `<=`, `>`, `>=`, \
        `==` or `!=`) of two expressions, e.g. `x > 0.0`";
    let cond = match unparen(&i.cond) {
        syn::Expr::Binary(b) => match cmp_op(&b.op) {
            Some(op) => Cond {
                op,
                lhs: lower_expr(&b.left, s)?,
                rhs: lower_expr(&b.right, s)?,
            },
            None => return Err(on(b.op, ONE_COMPARISON)),
        },
        syn::Expr::Let(l) => return Err(on(l.let_token, ONE_COMPARISON)),
        other => return Err(on(other, ONE_COMPARISON)),
    };
    let then = lower_block(&i.then_branch, s)?;
    let Some((_, otherwise)) = &i.else_branch else {
        return Err(at(
            i.if_token.span,
            "`if` needs an `else` branch: the closure must give a value for every input",
        ));
    };
    Ok(Expr::If {
        cond: Box::new(cond),
        then: Box::new(then),
        otherwise: Box::new(lower_expr(otherwise, s)?),
    })
}

fn lower_block(b: &syn::Block, s: Scope<'_>) -> syn::Result<Expr> {
    match b.stmts.as_slice() {
        [syn::Stmt::Expr(e, None)] => lower_expr(e, s),
        _ => Err(at(
            b.brace_token.span.join(),
            "a block here holds exactly one expression, with no `let` or `;`",
        )),
    }
}
