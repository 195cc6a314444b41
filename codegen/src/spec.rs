//! The validated attention spec: plain data, no parser dependencies.
//!
//! A [`Spec`] is what `#[attention(...)]` means once parsed and checked. It is built by
//! [`crate::parse`] (feature `syn`) at macro-expansion time and rebuilt at run time by the
//! generated `spec()` function, so tools can print and inspect it.

use std::fmt;

/// A fully validated attention spec. Every field has its default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// dk: query/key head dimension.
    pub head_dim: usize,
    /// dv: value head dimension.
    pub value_dim: usize,
    /// phi, applied to queries and keys.
    pub feature_map: FeatureMap,
    /// Which tokens each query sees.
    pub mask: Mask,
    /// How the recurrent state is updated.
    pub update: Update,
    /// Optional sum normaliser.
    pub normalize: Normalize,
    /// Optional per-token L2 normalisation of q and k before the feature map.
    pub qk_norm: QkNorm,
    /// The factor applied to the feature-mapped query.
    pub scale: Scale,
    /// Chunk length (tile length for softmax).
    pub chunk: usize,
    /// Axis order of q, k, v, o (and beta, g).
    pub layout: Layout,
    /// The head count H when the spec fixes it (`heads = H`): H is then `Const<H>` in every
    /// generated signature, so tensors with their axes in the wrong order do not compile.
    /// `None`: H is any `Dim`, checked at run time against q's.
    pub heads: Option<usize>,
    /// `update = momentum(mu = ..)`: the additive update with heavy-ball momentum (Momentum
    /// Transformer): `m_t = mu m_{t-1} + k~_t v_t^T`, `S_t = S_{t-1} + m_t`. `update` stays
    /// [`Update::Additive`] when this is `Some`; mu is in [0, 1).
    pub momentum: Option<f32>,
    /// `short_conv = w`: a depthwise causal convolution of width w (2..=8) over the sequence on
    /// q, k and v, then SiLU, before `qk_norm` and the feature map.
    pub short_conv: Option<usize>,
    /// `rpe = toeplitz`: relative positional weights `exp(b_{s-t})` on every score, computed by
    /// FFT (forward and backward only: no recurrent step).
    pub rpe: Rpe,
    /// The arithmetic of the CUDA kernels' products on tensor cores (sm_80+). The CPU always
    /// computes in fp32.
    pub precision: Precision,
}

/// How CUDA's products use tensor cores (sm_80 and later; older GPUs always compute in fp32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// fp32 accuracy: 3xTF32 on tensor cores (each operand split into two TF32 halves, three
    /// products), within DESIGN's 1e-4 of the fp32 reference.
    Fp32,
    /// Plain TF32 on tensor cores (10-bit mantissas, fp32 accumulation): about 3x the product
    /// throughput of `fp32`, relative errors of about 1e-3 (flash-linear-attention's own tests
    /// allow an RMS ratio of 5e-3).
    Tf32,
}

/// Relative positional encoding of the scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpe {
    /// None.
    None,
    /// Kernelized attention with a Toeplitz weight `exp(b_{s-t})` (Luo et al. 2021).
    Toeplitz,
}

/// The feature map phi.
#[derive(Clone, Debug, PartialEq)]
pub enum FeatureMap {
    /// phi(x) = x.
    Identity,
    /// phi(x) = x + 1 if x > 0 else e^x.
    EluPlusOne,
    /// phi(x) = max(x, 0).
    Relu,
    /// phi(x) = max(x, 0)^2.
    SquaredRelu,
    /// phi(x) = 1 / (1 + e^-x).
    Sigmoid,
    /// A user closure `|x| expr`, applied elementwise.
    Closure(Closure),
    /// Based's second-order Taylor map, F = 1 + d + d(d+1)/2.
    Taylor2,
    /// Deterministic parameter-free projection, F = 2 d nu.
    Dpfp {
        /// Number of rolls.
        nu: usize,
    },
    /// Performer's FAVOR+ positive random features, F = features:
    /// `exp(w_i . x' - |x'|^2 / 2) / sqrt(F)` with `x' = x / dk^(1/4)` and the projection w
    /// (F x dk) a runtime input (the stabiliser is 0; see `attnc::favor`).
    Favor {
        /// Number of random features m.
        features: usize,
    },
    /// Exact softmax attention (no feature map; flash-style tiling).
    Softmax,
}

/// A user feature map `|x| body`, kept as a small expression tree so every backend can lower it.
#[derive(Clone, Debug, PartialEq)]
pub struct Closure {
    /// The parameter's name as written (for printing).
    pub param: String,
    /// The body, in terms of [`Expr::Var`].
    pub body: Expr,
}

/// A scalar f32 expression over one variable.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// The closure's argument.
    Var,
    /// A float literal.
    Lit(f32),
    /// `-a`.
    Neg(Box<Expr>),
    /// `a op b`.
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// A one-argument method call `a.exp()`.
    Unary(UnaryFn, Box<Expr>),
    /// `a.max(b)`, `a.min(b)`, `a.powf(b)`.
    Binary2(BinaryFn, Box<Expr>, Box<Expr>),
    /// `a.powi(n)`.
    Powi(Box<Expr>, i32),
    /// `if cond { then } else { otherwise }`.
    If {
        /// The condition.
        cond: Box<Cond>,
        /// Value when true.
        then: Box<Expr>,
        /// Value when false.
        otherwise: Box<Expr>,
    },
}

/// A comparison, only allowed as an `if` condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Cond {
    /// The comparison.
    pub op: CmpOp,
    /// Left side.
    pub lhs: Expr,
    /// Right side.
    pub rhs: Expr,
}

/// Arithmetic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// One-argument methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryFn {
    /// `exp`
    Exp,
    /// `ln`
    Ln,
    /// `sqrt`
    Sqrt,
    /// `abs`
    Abs,
    /// `tanh`
    Tanh,
}

/// Two-argument methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryFn {
    /// `max`
    Max,
    /// `min`
    Min,
    /// `powf`
    Powf,
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

/// Which keys a query attends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mask {
    /// Token t sees tokens 1..=t.
    Causal,
    /// Every token sees the whole sequence.
    None,
}

/// The state update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// S += k v^T.
    Additive,
    /// S = exp(g) S + k v^T.
    Gated,
    /// The delta rule (DeltaNet).
    Delta,
    /// The gated delta rule (Gated DeltaNet).
    GatedDelta,
}

/// Output normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalize {
    /// Raw output.
    None,
    /// Divide by q . z + 1e-6 with z the running sum of keys.
    Sum,
}

/// Per-token normalisation of q and k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    /// None.
    None,
    /// Divide by the L2 norm (eps 1e-6).
    L2,
}

/// The query scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// 1 / sqrt(head_dim).
    Auto,
    /// A fixed factor.
    Value(f32),
}

/// Axis order of the token tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// (batch, heads, tokens, dim): heads first.
    Bhnd,
    /// (batch, tokens, heads, dim): tokens first, as flash-linear-attention.
    Bnhd,
}

impl Spec {
    /// A spec with every key at its default, for the given head dim.
    pub fn with_head_dim(head_dim: usize) -> Spec {
        Spec {
            head_dim,
            value_dim: head_dim,
            feature_map: FeatureMap::Identity,
            mask: Mask::Causal,
            update: Update::Additive,
            normalize: Normalize::None,
            qk_norm: QkNorm::None,
            scale: Scale::Auto,
            chunk: 64,
            layout: Layout::Bhnd,
            heads: None,
            momentum: None,
            short_conv: None,
            rpe: Rpe::None,
            precision: Precision::Fp32,
        }
    }

    /// Whether the spec uses a system that runs around the generated chunk program (momentum,
    /// short convolutions, rpe): see [`Spec::base`].
    pub fn has_systems(&self) -> bool {
        self.momentum.is_some() || self.short_conv.is_some() || self.rpe != Rpe::None
    }

    /// Rows of each convolution tail a state carries: `w - 1` for `short_conv = w`, else 0.
    pub fn conv_tail(&self) -> usize {
        self.short_conv.map_or(0, |w| w - 1)
    }

    /// The spec without its systems (momentum, short_conv, rpe): the chunk program the
    /// generated kernel runs, and whose feature map the systems' runtime kernels apply.
    pub fn base(&self) -> Spec {
        Spec {
            momentum: None,
            short_conv: None,
            rpe: Rpe::None,
            ..self.clone()
        }
    }

    /// F, the dimension of the feature-mapped queries and keys (rows of the state).
    pub fn feature_dim(&self) -> usize {
        let d = self.head_dim;
        match &self.feature_map {
            FeatureMap::Taylor2 => 1 + d + d * (d + 1) / 2,
            FeatureMap::Dpfp { nu } => 2 * d * nu,
            FeatureMap::Favor { features } => *features,
            _ => d,
        }
    }

    /// The numeric query scale.
    pub fn scale_value(&self) -> f32 {
        match self.scale {
            Scale::Auto => 1.0 / (self.head_dim as f32).sqrt(),
            Scale::Value(s) => s,
        }
    }

    /// Whether the update takes per-token log-decays `g`.
    pub fn has_gate(&self) -> bool {
        matches!(self.update, Update::Gated | Update::GatedDelta)
    }

    /// Whether the update takes per-token write strengths `beta`.
    pub fn has_beta(&self) -> bool {
        matches!(self.update, Update::Delta | Update::GatedDelta)
    }
}

impl Expr {
    /// Evaluates the expression at `x` (the reference semantics every backend must match).
    pub fn eval(&self, x: f32) -> f32 {
        match self {
            Expr::Var => x,
            Expr::Lit(v) => *v,
            Expr::Neg(a) => -a.eval(x),
            Expr::Binary(op, a, b) => {
                let (a, b) = (a.eval(x), b.eval(x));
                match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                }
            }
            Expr::Unary(f, a) => {
                let a = a.eval(x);
                match f {
                    UnaryFn::Exp => a.exp(),
                    UnaryFn::Ln => a.ln(),
                    UnaryFn::Sqrt => a.sqrt(),
                    UnaryFn::Abs => a.abs(),
                    UnaryFn::Tanh => a.tanh(),
                }
            }
            Expr::Binary2(f, a, b) => {
                let (a, b) = (a.eval(x), b.eval(x));
                match f {
                    BinaryFn::Max => a.max(b),
                    BinaryFn::Min => a.min(b),
                    BinaryFn::Powf => a.powf(b),
                }
            }
            Expr::Powi(a, n) => a.eval(x).powi(*n),
            Expr::If {
                cond,
                then,
                otherwise,
            } => {
                if cond.eval(x) {
                    then.eval(x)
                } else {
                    otherwise.eval(x)
                }
            }
        }
    }
}

impl Cond {
    /// Evaluates the comparison at `x`.
    pub fn eval(&self, x: f32) -> bool {
        let (a, b) = (self.lhs.eval(x), self.rhs.eval(x));
        match self.op {
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

impl FeatureMap {
    /// The maps written as a bare name, each with the map the name means (`dpfp` and `favor` at
    /// their default sizes), in the order of the README's key table: the one table of their spellings.
    pub const NAMED: &'static [(&'static str, FeatureMap)] = &[
        ("identity", FeatureMap::Identity),
        ("elu_plus_one", FeatureMap::EluPlusOne),
        ("relu", FeatureMap::Relu),
        ("squared_relu", FeatureMap::SquaredRelu),
        ("sigmoid", FeatureMap::Sigmoid),
        ("taylor2", FeatureMap::Taylor2),
        ("dpfp", FeatureMap::Dpfp { nu: 4 }),
        ("favor", FeatureMap::Favor { features: 128 }),
        ("softmax", FeatureMap::Softmax),
    ];

    /// The map written as the bare name `name` (`dpfp` means `dpfp(nu = 4)`).
    pub fn from_name(name: &str) -> Option<FeatureMap> {
        let named = FeatureMap::NAMED.iter().find(|(n, _)| *n == name);
        named.map(|(_, m)| m.clone())
    }

    /// The name this map is written with (`dpfp` whatever its `nu`); `None` for a closure.
    pub fn name(&self) -> Option<&'static str> {
        let kind = std::mem::discriminant(self);
        let named = FeatureMap::NAMED
            .iter()
            .find(|(_, m)| std::mem::discriminant(m) == kind);
        named.map(|(n, _)| *n)
    }

    /// Applies an elementwise map to one value; `None` for maps that are not elementwise.
    pub fn eval_elementwise(&self, x: f32) -> Option<f32> {
        Some(match self {
            FeatureMap::Identity => x,
            FeatureMap::EluPlusOne => {
                if x > 0.0 {
                    x + 1.0
                } else {
                    x.exp()
                }
            }
            FeatureMap::Relu => x.max(0.0),
            FeatureMap::SquaredRelu => {
                let r = x.max(0.0);
                r * r
            }
            FeatureMap::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            FeatureMap::Closure(c) => c.body.eval(x),
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Printing: a spec prints as the attribute arguments that produce it (every key explicit).

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "head_dim = {}, value_dim = {}, feature_map = {}, mask = {}, update = {}, \
             normalize = {}, qk_norm = {}, scale = {}, chunk = {}, layout = {}",
            self.head_dim,
            self.value_dim,
            self.feature_map,
            self.mask,
            DisplayUpdate(self),
            self.normalize,
            self.qk_norm,
            self.scale,
            self.chunk,
            self.layout
        )?;
        if let Some(h) = self.heads {
            write!(f, ", heads = {h}")?;
        }
        if let Some(w) = self.short_conv {
            write!(f, ", short_conv = {w}")?;
        }
        if self.rpe != Rpe::None {
            write!(f, ", rpe = {}", self.rpe)?;
        }
        match self.precision {
            Precision::Fp32 => Ok(()),
            p => write!(f, ", precision = {p}"),
        }
    }
}

/// `update = ..` as written: `momentum(mu = ..)` or the update's keyword.
struct DisplayUpdate<'a>(&'a Spec);

impl fmt::Display for DisplayUpdate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.momentum {
            Some(mu) => write!(f, "{}(mu = {mu:?})", Update::MOMENTUM),
            None => write!(f, "{}", self.0.update),
        }
    }
}

impl Update {
    /// How the momentum update is written (`update = momentum(mu = 0.9)`).
    pub const MOMENTUM: &'static str = "momentum";
}

impl fmt::Display for FeatureMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name().unwrap_or_default();
        match self {
            FeatureMap::Closure(c) => write!(f, "|{}| {}", c.param, DisplayExpr(&c.body, &c.param)),
            FeatureMap::Dpfp { nu } => write!(f, "{name}(nu = {nu})"),
            FeatureMap::Favor { features } => write!(f, "{name}(features = {features})"),
            _ => f.write_str(name),
        }
    }
}

/// Prints an expression with full parentheses, naming the variable as the user did.
struct DisplayExpr<'a>(&'a Expr, &'a str);

impl<'a> fmt::Display for DisplayExpr<'a> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let var = self.1;
        let sub = |e: &'a Expr| DisplayExpr(e, var);
        match self.0 {
            Expr::Var => f.write_str(var),
            Expr::Lit(v) => write!(f, "{v:?}"),
            Expr::Neg(a) => write!(f, "(-{})", sub(a)),
            Expr::Binary(op, a, b) => {
                let op = match op {
                    BinOp::Add => "+",
                    BinOp::Sub => "-",
                    BinOp::Mul => "*",
                    BinOp::Div => "/",
                };
                write!(f, "({} {op} {})", sub(a), sub(b))
            }
            Expr::Unary(u, a) => write!(f, "{}.{}()", sub(a), u.name()),
            Expr::Binary2(b, x, y) => write!(f, "{}.{}({})", sub(x), b.name(), sub(y)),
            Expr::Powi(a, n) => write!(f, "{}.powi({n})", sub(a)),
            Expr::If {
                cond,
                then,
                otherwise,
            } => write!(
                f,
                "(if {} {} {} {{ {} }} else {{ {} }})",
                sub(&cond.lhs),
                cond.op.symbol(),
                sub(&cond.rhs),
                sub(then),
                sub(otherwise)
            ),
        }
    }
}

impl UnaryFn {
    /// The method name as written in Rust.
    pub fn name(self) -> &'static str {
        self.keyword()
    }
}

impl BinaryFn {
    /// The method name as written in Rust.
    pub fn name(self) -> &'static str {
        self.keyword()
    }
}

impl CmpOp {
    /// The operator as written in Rust.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }
}

/// An enum spelt as a bare word: a keyword value (`mask = causal`) or a closure's method
/// (`x.exp()`). Its table of spellings is the one place they live: the parser matches it, its
/// errors list it, `Display` prints it.
pub trait Keyword: Copy + PartialEq + Sized + 'static {
    /// Every variant with its spelling, in the order error messages list them.
    const ALL: &'static [(Self, &'static str)];

    /// The spelling of `self`.
    fn keyword(self) -> &'static str;

    /// The variant spelt `text`, if any.
    fn from_keyword(text: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, s)| *s == text).map(|(v, _)| *v)
    }
}

/// Implements [`Keyword`] and `Display` from one table (the `match` keeps it exhaustive).
macro_rules! keyword_enum {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl Keyword for $ty {
            const ALL: &'static [(Self, &'static str)] = &[$(($ty::$variant, $text)),*];

            fn keyword(self) -> &'static str {
                match self { $($ty::$variant => $text),* }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.keyword())
            }
        }
    };
}

keyword_enum!(Mask { Causal => "causal", None => "none" });
keyword_enum!(Update { Additive => "additive", Gated => "gated", Delta => "delta", GatedDelta => "gated_delta" });
keyword_enum!(Normalize { None => "none", Sum => "sum" });
keyword_enum!(QkNorm { None => "none", L2 => "l2" });
keyword_enum!(Rpe { None => "none", Toeplitz => "toeplitz" });
keyword_enum!(Precision { Fp32 => "fp32", Tf32 => "tf32" });
keyword_enum!(Layout { Bhnd => "bhnd", Bnhd => "bnhd" });
keyword_enum!(UnaryFn { Exp => "exp", Ln => "ln", Sqrt => "sqrt", Abs => "abs", Tanh => "tanh" });
keyword_enum!(BinaryFn { Max => "max", Min => "min", Powf => "powf" });

impl Scale {
    /// How [`Scale::Auto`] is written.
    pub const AUTO: &'static str = "auto";
}

impl fmt::Display for Scale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scale::Auto => f.write_str(Scale::AUTO),
            Scale::Value(v) => write!(f, "{v:?}"),
        }
    }
}
