//! What both printers share (naga's `back` module): the lowering of the expression language
//! (closure feature maps, and the built-in elementwise maps as expressions, see
//! [`crate::plan::elementwise`]) over a small syntax trait each backend implements, and the
//! operator symbols, which Rust and C spell alike.

use crate::spec::{BinOp, BinaryFn, CmpOp, Expr, UnaryFn};

/// How a backend spells the pieces of an expression. Every composite is fully parenthesised by
/// the backend, so precedence never depends on the target language.
pub trait ExprSyntax {
    /// The printed form (tokens for Rust, a string for C).
    type Out;
    /// The variable `x`.
    fn var(&self) -> Self::Out;
    /// A float literal that reads back to the same value.
    fn lit(&self, v: f32) -> Self::Out;
    /// `-a`.
    fn neg(&self, a: Self::Out) -> Self::Out;
    /// `a op b` for `+ - * /` (the symbol is [`binary_symbol`]).
    fn binary(&self, op: BinOp, a: Self::Out, b: Self::Out) -> Self::Out;
    /// `exp(a)`, `ln(a)`, ...
    fn unary(&self, f: UnaryFn, a: Self::Out) -> Self::Out;
    /// `max(a, b)`, `min(a, b)`, `powf(a, b)`.
    fn binary_fn(&self, f: BinaryFn, a: Self::Out, b: Self::Out) -> Self::Out;
    /// `a` to an integer power.
    fn powi(&self, a: Self::Out, n: i32) -> Self::Out;
    /// `if lhs op rhs { then } else { otherwise }` (the symbol is [`CmpOp::symbol`]).
    fn select(
        &self,
        op: CmpOp,
        lhs: Self::Out,
        rhs: Self::Out,
        then: Self::Out,
        otherwise: Self::Out,
    ) -> Self::Out;
}

/// Lowers an expression of `x` with a backend's syntax.
pub fn lower<S: ExprSyntax>(s: &S, e: &Expr) -> S::Out {
    match e {
        Expr::Var => s.var(),
        Expr::Lit(v) => s.lit(*v),
        Expr::Neg(a) => s.neg(lower(s, a)),
        Expr::Binary(op, a, b) => s.binary(*op, lower(s, a), lower(s, b)),
        Expr::Unary(f, a) => s.unary(*f, lower(s, a)),
        Expr::Binary2(f, a, b) => s.binary_fn(*f, lower(s, a), lower(s, b)),
        Expr::Powi(a, n) => s.powi(lower(s, a), *n),
        Expr::If {
            cond,
            then,
            otherwise,
        } => s.select(
            cond.op,
            lower(s, &cond.lhs),
            lower(s, &cond.rhs),
            lower(s, then),
            lower(s, otherwise),
        ),
    }
}

/// The symbol of an arithmetic operator, the same in Rust and C.
pub fn binary_symbol(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "+",
        BinOp::Sub => "-",
        BinOp::Mul => "*",
        BinOp::Div => "/",
    }
}
