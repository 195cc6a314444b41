//! Build-time derivatives of the expression language: phi'(x) as an [`Expr`] of the same
//! language as phi, so both printers ([`crate::back::lower`]) print it exactly as they print phi.
//!
//! [`derivative`] differentiates symbolically and then [`simplify`]s (constant folding plus a few
//! exact identities), so the printed kernels stay small. Non-differentiable points follow
//! PyTorch's conventions: `|a|'` at 0 is 0, a tie in `max`/`min` splits the gradient evenly, and
//! an `if` takes the derivative of the branch taken. [`feature_map_derivative`] gives phi' for the
//! elementwise feature maps, hand-written where the symbolic form would be numerically poor or
//! would break a convention.

use crate::plan::elementwise;
use crate::spec::{BinOp, BinaryFn, CmpOp, Cond, Expr, FeatureMap, UnaryFn};

/// d e / d x, symbolic, then [`simplify`]d.
///
/// Rules (a' is d a / d x): the sum, product and quotient rules; `exp' = a' exp(a)`,
/// `ln' = a' / a`, `sqrt' = a' / (2 sqrt(a))`, `tanh' = a' (1 - tanh(a)^2)`,
/// `powi(a, n)' = n powi(a, n - 1) a'`, `powf(a, b)' = b powf(a, b - 1) a' + powf(a, b) ln(a) b'`
/// (only the first term when `b` has no `x`, so `powf(x, 2.5)` never takes `ln` of a negative
/// number). Kinks follow PyTorch: `|a|'` is `a'`, `-a'` or 0 at `a = 0`; `max`/`min` take the
/// derivative of the winning side and `(a' + b') / 2` at a tie; an `if` keeps its condition and
/// differentiates both branches.
pub fn derivative(e: &Expr) -> Expr {
    simplify(d(e))
}

/// Simplifies bottom-up: folds every subtree without [`Expr::Var`] to a literal (via
/// [`Expr::eval`], only when the result is finite, so a `NaN` or `inf` stays visible in the
/// printed code), and applies `a * 1`, `1 * a`, `a / 1`, `a + 0`, `0 + a`, `a - 0` → `a`;
/// `0 - a` → `-a`; `--a` → `a`; `powi(a, 1)` → `a`; an `if` with a constant condition or with
/// equal branches → the branch.
///
/// `0 * a` and `a * 0` → `0` is the symbolic convention (it differs from IEEE only when `a` is
/// infinite or NaN): a zero gradient stays zero, as in autodiff, where a term that does not
/// depend on `x` contributes nothing. Every other rewrite gives the same value as the original
/// wherever it is finite (up to the sign of a zero).
pub fn simplify(e: Expr) -> Expr {
    let e = simplify_children(e);
    if !has_var(&e) {
        let v = e.eval(0.0);
        if v.is_finite() {
            return Expr::Lit(v);
        }
    }
    identities(e)
}

/// phi'(x) for the elementwise feature maps; `None` for taylor2, dpfp, favor and softmax, whose
/// gradients are computed by dedicated code.
///
/// Built-in maps are hand-written: relu'(0) = 0 (PyTorch; the symbolic derivative of
/// `max(x, 0)` would give the tie's 0.5), and sigmoid' is `s (1 - s)` with
/// `s = 1 / (1 + exp(-x))`, finite for every finite `x` (when `exp(-x)` overflows, `s` is 0 and
/// so is the product; the quotient rule would give `inf / inf`). Closures get [`derivative`].
pub fn feature_map_derivative(map: &FeatureMap) -> Option<Expr> {
    let positive = || cond(CmpOp::Gt, Expr::Var, lit(0.0));
    Some(match map {
        FeatureMap::Identity => lit(1.0),
        FeatureMap::Relu => select(positive(), lit(1.0), lit(0.0)),
        FeatureMap::SquaredRelu => select(positive(), mul(lit(2.0), Expr::Var), lit(0.0)),
        FeatureMap::EluPlusOne => select(positive(), lit(1.0), unary(UnaryFn::Exp, Expr::Var)),
        FeatureMap::Sigmoid => {
            // The same `s` as phi itself, so forward and backward agree bit for bit on it.
            let s = elementwise(&FeatureMap::Sigmoid);
            mul(s.clone(), sub(lit(1.0), s))
        }
        FeatureMap::Closure(c) if derivative_size_bound(&c.body) <= MAX_DERIVATIVE_NODES => {
            derivative(&c.body)
        }
        // A closure whose symbolic derivative would be too large to print (nested `abs`,
        // `max` or `min` double it at each level): [`eval_derivative`] at run time instead.
        FeatureMap::Closure(_) => return None,
        FeatureMap::Taylor2
        | FeatureMap::Dpfp { .. }
        | FeatureMap::Favor { .. }
        | FeatureMap::Softmax => return None,
    })
}

/// The most nodes a printed derivative may have (before simplification).
pub const MAX_DERIVATIVE_NODES: usize = 20_000;

/// An upper bound on the node count of `d(e)` before simplification (saturating), computed
/// without building it: rules that use a derivative twice (`abs`, `max`, `min`) double it, so
/// 100 nested `abs` would need 2^100 nodes.
pub fn derivative_size_bound(e: &Expr) -> usize {
    bounds(e).1
}

/// (nodes of e, upper bound on nodes of d(e)).
fn bounds(e: &Expr) -> (usize, usize) {
    let plus = |xs: &[usize]| xs.iter().fold(0usize, |a, &b| a.saturating_add(b));
    let size = expr_size(e);
    if !has_var(e) {
        return (size, 1);
    }
    let d = match e {
        Expr::Var | Expr::Lit(_) => 1,
        Expr::Neg(a) | Expr::Powi(a, _) => {
            let (sa, da) = bounds(a);
            plus(&[sa, da, 8])
        }
        Expr::Unary(_, a) => {
            let (sa, da) = bounds(a);
            plus(&[sa, sa, da, da, 12])
        }
        Expr::Binary(_, a, b) | Expr::Binary2(_, a, b) => {
            let ((sa, da), (sb, db)) = (bounds(a), bounds(b));
            plus(&[sa, sa, sa, sb, sb, sb, da, da, db, db, 16])
        }
        Expr::If {
            cond,
            then,
            otherwise,
        } => plus(&[
            expr_size(&cond.lhs),
            expr_size(&cond.rhs),
            bounds(then).1,
            bounds(otherwise).1,
            2,
        ]),
    };
    (size, d)
}

/// Nodes of an expression (saturating).
fn expr_size(e: &Expr) -> usize {
    let one = |a: &Expr| expr_size(a).saturating_add(1);
    match e {
        Expr::Var | Expr::Lit(_) => 1,
        Expr::Neg(a) | Expr::Unary(_, a) | Expr::Powi(a, _) => one(a),
        Expr::Binary(_, a, b) | Expr::Binary2(_, a, b) => one(a).saturating_add(expr_size(b)),
        Expr::If {
            cond,
            then,
            otherwise,
        } => [&cond.lhs, &cond.rhs, then, otherwise]
            .iter()
            .fold(1usize, |n, a| n.saturating_add(expr_size(a))),
    }
}

/// phi'(x) by forward-mode differentiation (dual numbers) at run time, with the conventions of
/// [`derivative`]: the fallback for closures whose printed derivative would be too large, and
/// an independent check of the symbolic form. Returns (phi(x), phi'(x)).
pub fn eval_derivative(e: &Expr, x: f32) -> (f32, f32) {
    if !has_var(e) {
        return (e.eval(x), 0.0);
    }
    match e {
        Expr::Var => (x, 1.0),
        Expr::Lit(v) => (*v, 0.0),
        Expr::Neg(a) => {
            let (a, da) = eval_derivative(a, x);
            (-a, -da)
        }
        Expr::Binary(op, a, b) => {
            let ((a, da), (b, db)) = (eval_derivative(a, x), eval_derivative(b, x));
            match op {
                BinOp::Add => (a + b, da + db),
                BinOp::Sub => (a - b, da - db),
                BinOp::Mul => (a * b, da * b + a * db),
                BinOp::Div => (a / b, (da - a / b * db) / b),
            }
        }
        Expr::Unary(f, a) => {
            let (a, da) = eval_derivative(a, x);
            match f {
                UnaryFn::Exp => (a.exp(), da * a.exp()),
                UnaryFn::Ln => (a.ln(), da / a),
                UnaryFn::Sqrt => (a.sqrt(), da / (2.0 * a.sqrt())),
                UnaryFn::Tanh => (a.tanh(), da * (1.0 - a.tanh().powi(2))),
                UnaryFn::Abs if a > 0.0 => (a, da),
                UnaryFn::Abs if a < 0.0 => (-a, -da),
                UnaryFn::Abs => (a.abs(), 0.0),
            }
        }
        Expr::Binary2(BinaryFn::Powf, a, b) => {
            let ((a, da), (b, db)) = (eval_derivative(a, x), eval_derivative(b, x));
            let mut d = b * a.powf(b - 1.0) * da;
            if has_var_in_powf_exponent(e) {
                d += a.powf(b) * a.ln() * db;
            }
            (a.powf(b), d)
        }
        Expr::Binary2(f, a, b) => {
            let ((a, da), (b, db)) = (eval_derivative(a, x), eval_derivative(b, x));
            let a_wins = match f {
                BinaryFn::Min => a < b,
                _ => a > b,
            };
            let b_wins = match f {
                BinaryFn::Min => a > b,
                _ => a < b,
            };
            let value = e.eval(x);
            if a_wins {
                (value, da)
            } else if b_wins {
                (value, db)
            } else {
                (value, (da + db) / 2.0)
            }
        }
        Expr::Powi(a, n) => {
            let (a, da) = eval_derivative(a, x);
            let d = match *n {
                0 => 0.0,
                1 => da,
                n => n as f32 * a.powi(n - 1) * da,
            };
            (a.powi(*n), d)
        }
        Expr::If {
            cond,
            then,
            otherwise,
        } => {
            if cond.eval(x) {
                eval_derivative(then, x)
            } else {
                eval_derivative(otherwise, x)
            }
        }
    }
}

/// Whether `e` is `powf(a, b)` with `x` in `b`.
fn has_var_in_powf_exponent(e: &Expr) -> bool {
    matches!(e, Expr::Binary2(BinaryFn::Powf, _, b) if has_var(b))
}

/// Whether `x` occurs in the expression (in an `if`, its condition included).
pub fn has_var(e: &Expr) -> bool {
    match e {
        Expr::Var => true,
        Expr::Lit(_) => false,
        Expr::Neg(a) | Expr::Unary(_, a) | Expr::Powi(a, _) => has_var(a),
        Expr::Binary(_, a, b) | Expr::Binary2(_, a, b) => has_var(a) || has_var(b),
        Expr::If {
            cond,
            then,
            otherwise,
        } => cond_has_var(cond) || has_var(then) || has_var(otherwise),
    }
}

/// Whether `x` occurs on either side of the comparison.
pub fn cond_has_var(c: &Cond) -> bool {
    has_var(&c.lhs) || has_var(&c.rhs)
}

// ---------------------------------------------------------------------------------------------
// Differentiation (unsimplified; `derivative` simplifies once at the end).

/// The raw derivative.
fn d(e: &Expr) -> Expr {
    // A constant subtree contributes nothing; this also keeps its (possibly NaN) pieces, such as
    // `ln` of a negative constant, out of the derivative.
    if !has_var(e) {
        return lit(0.0);
    }
    match e {
        Expr::Var => lit(1.0),
        Expr::Lit(_) => lit(0.0),
        Expr::Neg(a) => neg(d(a)),
        Expr::Binary(op, a, b) => d_binary(*op, a, b),
        Expr::Unary(f, a) => d_unary(*f, a),
        Expr::Binary2(BinaryFn::Powf, a, b) => d_powf(a, b),
        Expr::Binary2(f, a, b) => d_extremum(*f, a, b),
        Expr::Powi(a, n) => d_powi(a, *n),
        // The condition only picks the branch: it is piecewise constant, so not differentiated.
        Expr::If {
            cond,
            then,
            otherwise,
        } => Expr::If {
            cond: cond.clone(),
            then: Box::new(d(then)),
            otherwise: Box::new(d(otherwise)),
        },
    }
}

/// Sum, difference, product and quotient rules.
fn d_binary(op: BinOp, a: &Expr, b: &Expr) -> Expr {
    let (da, db) = (d(a), d(b));
    let (a, b) = (a.clone(), b.clone());
    match op {
        BinOp::Add => add(da, db),
        BinOp::Sub => sub(da, db),
        BinOp::Mul => add(mul(da, b), mul(a, db)),
        // The quotient rule as (a' - (a / b) b') / b rather than (a' b - a b') / b^2: the same
        // value, no b^2 to overflow, and it folds to a' / b when b is constant.
        BinOp::Div => div(sub(da, mul(div(a, b.clone()), db)), b),
    }
}

/// The chain rule through the one-argument functions.
fn d_unary(f: UnaryFn, a: &Expr) -> Expr {
    let da = d(a);
    let a = a.clone();
    match f {
        UnaryFn::Exp => mul(da, unary(UnaryFn::Exp, a)),
        UnaryFn::Ln => div(da, a),
        UnaryFn::Sqrt => div(da, mul(lit(2.0), unary(UnaryFn::Sqrt, a))),
        UnaryFn::Tanh => mul(da, sub(lit(1.0), powi(unary(UnaryFn::Tanh, a), 2))),
        // sign(a) a' with sign(0) = 0 (PyTorch), written as a select so that a' is never
        // multiplied by 0 (an infinite a' at a = 0 still gives 0, not NaN).
        UnaryFn::Abs => {
            let below = select(
                cond(CmpOp::Lt, a.clone(), lit(0.0)),
                neg(da.clone()),
                lit(0.0),
            );
            select(cond(CmpOp::Gt, a, lit(0.0)), da, below)
        }
    }
}

/// `max`/`min`: the derivative of the side that wins; at a tie the gradient splits evenly
/// (PyTorch's convention for `torch.maximum` and `torch.minimum`).
fn d_extremum(f: BinaryFn, a: &Expr, b: &Expr) -> Expr {
    let (wins, loses) = match f {
        BinaryFn::Min => (CmpOp::Lt, CmpOp::Gt),
        _ => (CmpOp::Gt, CmpOp::Lt),
    };
    let (da, db) = (d(a), d(b));
    let tie = div(add(da.clone(), db.clone()), lit(2.0));
    let other = select(cond(loses, a.clone(), b.clone()), db, tie);
    select(cond(wins, a.clone(), b.clone()), da, other)
}

/// `powf(a, b)' = b powf(a, b - 1) a' + powf(a, b) ln(a) b'`, the second term only when `b`
/// depends on `x` (for a constant exponent it would be `0 * ln(a)`, NaN for `a < 0`).
fn d_powf(a: &Expr, b: &Expr) -> Expr {
    let base = mul(
        mul(b.clone(), powf(a.clone(), sub(b.clone(), lit(1.0)))),
        d(a),
    );
    if !has_var(b) {
        return base;
    }
    let exponent = mul(
        mul(powf(a.clone(), b.clone()), unary(UnaryFn::Ln, a.clone())),
        d(b),
    );
    add(base, exponent)
}

/// `powi(a, n)' = n powi(a, n - 1) a'`; 0 for `n = 0` and `a'` for `n = 1`.
fn d_powi(a: &Expr, n: i32) -> Expr {
    let da = d(a);
    match (n, n.checked_sub(1)) {
        (0, _) => lit(0.0),
        (1, _) => da,
        (_, Some(m)) => mul(mul(lit(n as f32), powi(a.clone(), m)), da),
        // n = i32::MIN: n - 1 does not fit, so n a^n / a.
        (_, None) => mul(div(mul(lit(n as f32), powi(a.clone(), n)), a.clone()), da),
    }
}

// ---------------------------------------------------------------------------------------------
// Simplification.

/// Simplifies every child (the condition of an `if` included), leaving the node itself.
fn simplify_children(e: Expr) -> Expr {
    let s = |a: Box<Expr>| Box::new(simplify(*a));
    match e {
        Expr::Var | Expr::Lit(_) => e,
        Expr::Neg(a) => Expr::Neg(s(a)),
        Expr::Binary(op, a, b) => Expr::Binary(op, s(a), s(b)),
        Expr::Unary(f, a) => Expr::Unary(f, s(a)),
        Expr::Binary2(f, a, b) => Expr::Binary2(f, s(a), s(b)),
        Expr::Powi(a, n) => Expr::Powi(s(a), n),
        Expr::If {
            cond,
            then,
            otherwise,
        } => Expr::If {
            cond: Box::new(Cond {
                op: cond.op,
                lhs: simplify(cond.lhs),
                rhs: simplify(cond.rhs),
            }),
            then: s(then),
            otherwise: s(otherwise),
        },
    }
}

/// The identities at one node whose children are already simplified.
fn identities(e: Expr) -> Expr {
    match e {
        Expr::Binary(op, a, b) => binary_identity(op, *a, *b),
        Expr::Neg(a) => match *a {
            Expr::Neg(inner) => *inner,
            a => neg(a),
        },
        Expr::Powi(a, 1) => *a,
        Expr::If {
            cond,
            then,
            otherwise,
        } => if_identity(*cond, *then, *otherwise),
        e => e,
    }
}

/// `a * 1`, `1 * a`, `a / 1`, `a + 0`, `0 + a`, `a - 0` → `a`; `0 * a`, `a * 0` → 0;
/// `0 - a` → `-a`.
fn binary_identity(op: BinOp, a: Expr, b: Expr) -> Expr {
    match op {
        BinOp::Mul if is_lit(&a, 0.0) || is_lit(&b, 0.0) => lit(0.0),
        BinOp::Mul | BinOp::Div if is_lit(&b, 1.0) => a,
        BinOp::Add | BinOp::Sub if is_lit(&b, 0.0) => a,
        BinOp::Mul if is_lit(&a, 1.0) => b,
        BinOp::Add if is_lit(&a, 0.0) => b,
        // Through `identities`, so `0 - (-a)` becomes `a`.
        BinOp::Sub if is_lit(&a, 0.0) => identities(neg(b)),
        _ => Expr::Binary(op, Box::new(a), Box::new(b)),
    }
}

/// An `if` whose condition is constant, or whose branches are equal, is its branch.
fn if_identity(c: Cond, then: Expr, otherwise: Expr) -> Expr {
    if !cond_has_var(&c) {
        return if c.eval(0.0) { then } else { otherwise };
    }
    if then == otherwise {
        return then;
    }
    select(c, then, otherwise)
}

/// Whether `e` is the literal `v` (`0.0` matches `-0.0` too).
fn is_lit(e: &Expr, v: f32) -> bool {
    matches!(e, Expr::Lit(w) if *w == v)
}

// ---------------------------------------------------------------------------------------------
// Constructors, so the rules above read like the formulas they implement.

fn lit(v: f32) -> Expr {
    Expr::Lit(v)
}

fn neg(a: Expr) -> Expr {
    Expr::Neg(Box::new(a))
}

fn add(a: Expr, b: Expr) -> Expr {
    Expr::Binary(BinOp::Add, Box::new(a), Box::new(b))
}

fn sub(a: Expr, b: Expr) -> Expr {
    Expr::Binary(BinOp::Sub, Box::new(a), Box::new(b))
}

fn mul(a: Expr, b: Expr) -> Expr {
    Expr::Binary(BinOp::Mul, Box::new(a), Box::new(b))
}

fn div(a: Expr, b: Expr) -> Expr {
    Expr::Binary(BinOp::Div, Box::new(a), Box::new(b))
}

fn unary(f: UnaryFn, a: Expr) -> Expr {
    Expr::Unary(f, Box::new(a))
}

fn powf(a: Expr, b: Expr) -> Expr {
    Expr::Binary2(BinaryFn::Powf, Box::new(a), Box::new(b))
}

fn powi(a: Expr, n: i32) -> Expr {
    Expr::Powi(Box::new(a), n)
}

fn cond(op: CmpOp, lhs: Expr, rhs: Expr) -> Cond {
    Cond { op, lhs, rhs }
}

fn select(c: Cond, then: Expr, otherwise: Expr) -> Expr {
    Expr::If {
        cond: Box::new(c),
        then: Box::new(then),
        otherwise: Box::new(otherwise),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Closure;
    use std::ops::{Add, Div, Mul, Neg, Sub};

    /// An expression under construction, with Rust's operators and method names, so the test
    /// cases read like the closures users write.
    #[derive(Clone, Debug)]
    struct E(Expr);

    fn x() -> E {
        E(Expr::Var)
    }

    fn c(v: f32) -> E {
        E(Expr::Lit(v))
    }

    impl From<f32> for E {
        fn from(v: f32) -> E {
            c(v)
        }
    }

    macro_rules! binop {
        ($trait:ident, $method:ident, $op:ident) => {
            impl<R: Into<E>> $trait<R> for E {
                type Output = E;
                fn $method(self, r: R) -> E {
                    E(Expr::Binary(
                        BinOp::$op,
                        Box::new(self.0),
                        Box::new(r.into().0),
                    ))
                }
            }
            impl $trait<E> for f32 {
                type Output = E;
                fn $method(self, r: E) -> E {
                    c(self).$method(r)
                }
            }
        };
    }
    binop!(Add, add, Add);
    binop!(Sub, sub, Sub);
    binop!(Mul, mul, Mul);
    binop!(Div, div, Div);

    impl Neg for E {
        type Output = E;
        fn neg(self) -> E {
            E(Expr::Neg(Box::new(self.0)))
        }
    }

    impl E {
        fn un(self, f: UnaryFn) -> E {
            E(Expr::Unary(f, Box::new(self.0)))
        }
        fn bin(self, f: BinaryFn, r: impl Into<E>) -> E {
            E(Expr::Binary2(f, Box::new(self.0), Box::new(r.into().0)))
        }
        fn exp(self) -> E {
            self.un(UnaryFn::Exp)
        }
        fn ln(self) -> E {
            self.un(UnaryFn::Ln)
        }
        fn sqrt(self) -> E {
            self.un(UnaryFn::Sqrt)
        }
        fn abs(self) -> E {
            self.un(UnaryFn::Abs)
        }
        fn tanh(self) -> E {
            self.un(UnaryFn::Tanh)
        }
        fn max(self, r: impl Into<E>) -> E {
            self.bin(BinaryFn::Max, r)
        }
        fn min(self, r: impl Into<E>) -> E {
            self.bin(BinaryFn::Min, r)
        }
        fn powf(self, r: impl Into<E>) -> E {
            self.bin(BinaryFn::Powf, r)
        }
        fn powi(self, n: i32) -> E {
            E(Expr::Powi(Box::new(self.0), n))
        }
    }

    /// `if lhs op rhs { then } else { otherwise }`.
    fn if_(lhs: E, op: CmpOp, rhs: impl Into<E>, then: impl Into<E>, otherwise: impl Into<E>) -> E {
        E(select(
            cond(op, lhs.0, rhs.into().0),
            then.into().0,
            otherwise.into().0,
        ))
    }

    /// The closure's source form, for failure messages.
    fn show(e: &Expr) -> String {
        FeatureMap::Closure(Closure {
            param: "x".into(),
            body: e.clone(),
        })
        .to_string()
    }

    /// [`Expr::eval`] in f64, for finite differences accurate far beyond f32.
    fn eval64(e: &Expr, x: f64) -> f64 {
        match e {
            Expr::Var => x,
            Expr::Lit(v) => f64::from(*v),
            Expr::Neg(a) => -eval64(a, x),
            Expr::Binary(op, a, b) => {
                let (a, b) = (eval64(a, x), eval64(b, x));
                match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                }
            }
            Expr::Unary(f, a) => {
                let a = eval64(a, x);
                match f {
                    UnaryFn::Exp => a.exp(),
                    UnaryFn::Ln => a.ln(),
                    UnaryFn::Sqrt => a.sqrt(),
                    UnaryFn::Abs => a.abs(),
                    UnaryFn::Tanh => a.tanh(),
                }
            }
            Expr::Binary2(f, a, b) => {
                let (a, b) = (eval64(a, x), eval64(b, x));
                match f {
                    BinaryFn::Max => a.max(b),
                    BinaryFn::Min => a.min(b),
                    BinaryFn::Powf => a.powf(b),
                }
            }
            Expr::Powi(a, n) => eval64(a, x).powi(*n),
            Expr::If {
                cond,
                then,
                otherwise,
            } => {
                let (l, r) = (eval64(&cond.lhs, x), eval64(&cond.rhs, x));
                let taken = match cond.op {
                    CmpOp::Lt => l < r,
                    CmpOp::Le => l <= r,
                    CmpOp::Gt => l > r,
                    CmpOp::Ge => l >= r,
                    CmpOp::Eq => l == r,
                    CmpOp::Ne => l != r,
                };
                eval64(if taken { then } else { otherwise }, x)
            }
        }
    }

    /// An expression and the points where it (or its derivative) is not smooth.
    struct Case {
        e: Expr,
        kinks: &'static [f64],
    }

    fn case(e: E, kinks: &'static [f64]) -> Case {
        Case { e: e.0, kinks }
    }

    /// Every node kind, alone and nested.
    fn cases() -> Vec<Case> {
        vec![
            case(x(), &[]),
            case(c(3.0), &[]),
            case(-x(), &[]),
            case(x() * x() + 3.0 * x() - 2.0, &[]),
            case(1.0 / x(), &[0.0]),
            case(x().exp(), &[]),
            case(x().ln(), &[0.0]),
            case(x().sqrt(), &[0.0]),
            case(x().abs(), &[0.0]),
            case(x().tanh(), &[]),
            case(x().max(0.0), &[0.0]),
            case(x().min(1.0), &[1.0]),
            case(x().powf(3.0), &[]),
            case(x().powf(2.5), &[0.0]),
            case(c(2.0).powf(x()), &[]),
            case(x().powf(x()), &[0.0]),
            case((1.0 + x() * x()).powf(x()), &[]),
            case(x().powi(3) - x().powi(-2), &[0.0]),
            case(x().powi(0) + x().powi(1) + x().powi(2), &[]),
            case(if_(x(), CmpOp::Lt, 1.0, x() * x(), 2.0 * x() - 1.0), &[1.0]),
            case(
                if_(x() * x(), CmpOp::Ge, 2.0, (x() * x()).sqrt(), -x()),
                &[-std::f64::consts::SQRT_2, std::f64::consts::SQRT_2],
            ),
            case(x() * (-(x() * x())).exp(), &[]),
            case((x().max(0.0) + 1.0).ln(), &[0.0]),
            case(x().abs().sqrt(), &[0.0]),
            case(x().tanh() / (1.0 + x() * x()), &[]),
            case(x().exp().max(x() * x()), &[-0.703_467_422_498_391_8]),
            case((x() * x() - 1.0).abs(), &[-1.0, 1.0]),
            case(
                (0.5 * x()).min(x().tanh()),
                &[-1.915_008_048_154_537, 0.0, 1.915_008_048_154_537],
            ),
            case(x() / (1.0 + x().abs()), &[0.0]),
            case(
                (x().powi(2) + 1.0).powf(0.5) * x().exp().tanh() - (c(2.0).ln() * x()),
                &[],
            ),
        ]
    }

    /// 20 points in [-2.95, 2.95], none on an integer.
    fn points() -> impl Iterator<Item = f64> {
        (0..20).map(|i| -2.95 + 0.3105 * f64::from(i))
    }

    /// Central difference in f64, `None` where the function is not finite around `x` (outside
    /// its domain).
    fn central_difference(e: &Expr, x: f64) -> Option<f64> {
        const H: f64 = 1e-5;
        let (lo, mid, hi) = (eval64(e, x - H), eval64(e, x), eval64(e, x + H));
        let finite = lo.is_finite() && mid.is_finite() && hi.is_finite();
        finite.then(|| (hi - lo) / (2.0 * H))
    }

    #[test]
    fn derivative_matches_finite_differences() {
        for Case { e, kinks } in cases() {
            let de = derivative(&e);
            let mut checked = 0;
            for p in points() {
                if kinks.iter().any(|k| (p - k).abs() < 1e-3) {
                    continue;
                }
                let Some(fd) = central_difference(&e, p) else {
                    continue;
                };
                let got = de.eval(p as f32);
                let tol = 1e-3 * fd.abs() + 1e-5;
                assert!(
                    (f64::from(got) - fd).abs() <= tol,
                    "d/dx {} at {p}: {} gives {got}, finite differences {fd}",
                    show(&e),
                    show(&de),
                );
                checked += 1;
            }
            assert!(checked >= 8, "{}: only {checked} points", show(&e));
        }
    }

    /// Equal, or both NaN.
    fn same(a: f32, b: f32) -> bool {
        a == b || (a.is_nan() && b.is_nan())
    }

    /// The dual-number fallback agrees with the printed derivative everywhere, kinks included
    /// (the conventions are the same).
    #[test]
    fn dual_numbers_agree_with_the_symbolic_derivative() {
        for Case { e, kinks } in cases() {
            let de = derivative(&e);
            for p in points().chain(kinks.iter().copied()) {
                let (want, (value, got)) = (de.eval(p as f32), eval_derivative(&e, p as f32));
                assert!(same(value, e.eval(p as f32)), "{} at {p}", show(&e));
                let close = (got - want).abs() <= 1e-5 * want.abs().max(1.0);
                assert!(
                    close || same(got, want),
                    "d/dx {} at {p}: dual {got}, symbolic {want}",
                    show(&e)
                );
            }
        }
    }

    /// 60 nested `abs` would print a derivative of 2^60 nodes: the bound sees it, the map falls
    /// back to dual numbers, which give sign(x).
    #[test]
    fn huge_derivatives_fall_back_to_dual_numbers() {
        let mut e = x();
        for _ in 0..60 {
            e = e.abs();
        }
        assert!(derivative_size_bound(&e.0) > MAX_DERIVATIVE_NODES);
        let map = FeatureMap::Closure(crate::spec::Closure {
            param: "x".into(),
            body: e.0.clone(),
        });
        assert!(feature_map_derivative(&map).is_none());
        assert_eq!(eval_derivative(&e.0, -2.0), (2.0, -1.0));
        assert_eq!(eval_derivative(&e.0, 0.0), (0.0, 0.0));
        // A small closure stays symbolic.
        assert!(derivative_size_bound(&(x() * x().exp()).0) <= MAX_DERIVATIVE_NODES);
    }

    #[test]
    fn simplify_keeps_values() {
        for Case { e, .. } in cases() {
            let raw = d(&e);
            let (simple, simple_raw) = (simplify(e.clone()), simplify(raw.clone()));
            for p in points().map(|p| p as f32).chain([0.0, 1.0, -1.0]) {
                let (want, got) = (e.eval(p), simple.eval(p));
                assert!(same(want, got), "{} at {p}: {want} vs {got}", show(&e));
                // 0 * a → 0 may differ where a is not finite: compare where the raw form is.
                let (want, got) = (raw.eval(p), simple_raw.eval(p));
                if want.is_finite() {
                    assert_eq!(want, got, "{} at {p}", show(&raw));
                }
            }
        }
    }

    #[test]
    fn simplify_folds_constants() {
        assert_eq!(derivative(&(x() * 3.0).0), Expr::Lit(3.0));
        assert_eq!(derivative(&(3.0 * x()).0), Expr::Lit(3.0));
        assert_eq!(derivative(&x().0), Expr::Lit(1.0));
        assert_eq!(derivative(&c(5.0).0), Expr::Lit(0.0));
        assert_eq!(derivative(&(c(2.0).exp() * 4.0).0), Expr::Lit(0.0));
        assert_eq!(derivative(&(x() / 4.0).0), Expr::Lit(0.25));
        assert_eq!(derivative(&(x() + 7.0).0), Expr::Lit(1.0));
        assert_eq!(derivative(&x().powi(2).0), (2.0 * x()).0);
        assert_eq!(simplify((c(2.0) * 3.0 + x() * 1.0).0), (6.0 + x()).0);
        assert_eq!(simplify((x().exp() * 0.0).0), Expr::Lit(0.0));
        assert_eq!(simplify((0.0 - x()).0), (-x()).0);
        assert_eq!(simplify((0.0 - -x()).0), Expr::Var);
        assert_eq!(simplify((-(-x())).0), Expr::Var);
        assert_eq!(simplify(x().powi(1).0), Expr::Var);
        assert_eq!(simplify((x() - 0.0 + 0.0).0), Expr::Var);
        assert_eq!(simplify((x() / 1.0).0), Expr::Var);
        assert_eq!(simplify(if_(x(), CmpOp::Lt, 0.0, x(), x()).0), Expr::Var);
        assert_eq!(simplify(if_(c(1.0), CmpOp::Lt, 2.0, x(), 0.0).0), Expr::Var);
        // Non-finite constants are not folded: they stay visible in the printed code.
        let nan = c(-1.0).ln().0;
        assert_eq!(simplify(nan.clone()), nan);
        let inf = (1.0 / c(0.0)).0;
        assert_eq!(simplify(inf.clone()), inf);
    }

    #[test]
    fn kink_conventions() {
        let relu = feature_map_derivative(&FeatureMap::Relu).unwrap();
        assert_eq!(relu.eval(0.0), 0.0);
        assert_eq!(relu.eval(2.0), 1.0);
        // The symbolic max splits the tie.
        let max = derivative(&x().max(0.0).0);
        assert_eq!(
            [max.eval(-1.0), max.eval(0.0), max.eval(1.0)],
            [0.0, 0.5, 1.0]
        );
        let min = derivative(&x().min(0.0).0);
        assert_eq!(
            [min.eval(-1.0), min.eval(0.0), min.eval(1.0)],
            [1.0, 0.5, 0.0]
        );
        let abs = derivative(&x().abs().0);
        assert_eq!(
            [abs.eval(-1.0), abs.eval(0.0), abs.eval(1.0)],
            [-1.0, 0.0, 1.0]
        );
        // |x^2 - 1| at its kinks and between them.
        let abs2 = derivative(&(x() * x() - 1.0).abs().0);
        assert_eq!(
            [abs2.eval(-1.0), abs2.eval(1.0), abs2.eval(0.5)],
            [0.0, 0.0, -1.0]
        );
        // The branch taken at the boundary: x < 1 is false at 1, so 2x - 1's slope.
        let branch = derivative(&if_(x(), CmpOp::Lt, 1.0, x() * x(), 2.0 * x() - 1.0).0);
        assert_eq!([branch.eval(0.5), branch.eval(1.0)], [1.0, 2.0]);
        let le = derivative(&if_(x(), CmpOp::Le, 0.0, 0.0, x()).0);
        assert_eq!([le.eval(0.0), le.eval(1e-30)], [0.0, 1.0]);
        // A constant exponent takes no ln: finite at 0 rather than 0 * ln(0).
        let pow = derivative(&x().powf(2.5).0);
        assert_eq!(pow.eval(0.0), 0.0);
        assert_eq!(pow.eval(4.0), 20.0);
    }

    #[test]
    fn sigmoid_derivative_is_finite() {
        let ds = feature_map_derivative(&FeatureMap::Sigmoid).unwrap();
        for p in [
            -100.0,
            -88.8,
            -20.0,
            0.0,
            20.0,
            88.8,
            100.0,
            f32::MAX,
            f32::MIN,
        ] {
            assert!(ds.eval(p).is_finite(), "sigmoid'({p}) = {}", ds.eval(p));
        }
        assert_eq!(ds.eval(0.0), 0.25);
        assert_eq!(ds.eval(-100.0), 0.0);
        assert_eq!(ds.eval(100.0), 0.0);
    }

    #[test]
    fn feature_maps_match_finite_differences() {
        let closure = FeatureMap::Closure(Closure {
            param: "x".into(),
            body: (x() * (-(x() * x())).exp()).0,
        });
        let maps = [
            FeatureMap::Identity,
            FeatureMap::Relu,
            FeatureMap::SquaredRelu,
            FeatureMap::EluPlusOne,
            FeatureMap::Sigmoid,
            closure,
        ];
        for map in maps {
            let dphi = feature_map_derivative(&map).unwrap();
            let phi = elementwise(&map);
            // Identity's elementwise form is plain x, so this also checks `elementwise` agrees.
            for p in points() {
                let fd = central_difference(&phi, p).unwrap();
                let got = f64::from(dphi.eval(p as f32));
                assert!(
                    (got - fd).abs() <= 1e-3 * fd.abs() + 1e-5,
                    "{map}' at {p}: {got} vs {fd}"
                );
            }
        }
        assert_eq!(
            feature_map_derivative(&FeatureMap::Identity),
            Some(Expr::Lit(1.0))
        );
        let squared = feature_map_derivative(&FeatureMap::SquaredRelu).unwrap();
        assert_eq!(
            [squared.eval(0.0), squared.eval(-1.0), squared.eval(1.5)],
            [0.0, 0.0, 3.0]
        );
        let elu = feature_map_derivative(&FeatureMap::EluPlusOne).unwrap();
        assert_eq!([elu.eval(0.0), elu.eval(1.0)], [1.0, 1.0]);
    }

    #[test]
    fn non_elementwise_maps_have_none() {
        for map in [
            FeatureMap::Taylor2,
            FeatureMap::Dpfp { nu: 2 },
            FeatureMap::Favor { features: 16 },
            FeatureMap::Softmax,
        ] {
            assert_eq!(feature_map_derivative(&map), None, "{map}");
        }
    }

    #[test]
    fn has_var_sees_conditions() {
        assert!(has_var(&x().0));
        assert!(!has_var(&(c(1.0) + 2.0).exp().0));
        assert!(has_var(&if_(x(), CmpOp::Gt, 0.0, 1.0, 2.0).0));
        assert!(!has_var(&if_(c(1.0), CmpOp::Gt, 0.0, 1.0, 2.0).0));
        // The condition still picks the branch: the derivative of a piecewise constant is 0.
        assert_eq!(
            derivative(&if_(x(), CmpOp::Gt, 0.0, 1.0, 2.0).0),
            Expr::Lit(0.0)
        );
    }
}
