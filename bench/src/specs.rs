//! The benchmarked variants (dk = dv = 64), each at chunk 32, 64 and 128, and one entry point
//! that runs any of them on one set of inputs.

use attnc::prelude::*;

/// A token tensor: (B, H, N, 64), every axis a runtime size.
pub type Tok = Tensor<(usize, usize, usize, Const<64>), f32, Cpu>;
/// A per-token tensor (beta, g): (B, H, N).
pub type PerTok = Tensor<(usize, usize, usize), f32, Cpu>;
/// One token of every head: (B, H, 64).
pub type Head = Tensor<(usize, usize, Const<64>), f32, Cpu>;
/// One scalar of every head: (B, H).
pub type HeadScalar = Tensor<(usize, usize), f32, Cpu>;

/// The variants of issue #5's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Causal, identity map, no normaliser.
    Plain,
    /// Causal, elu+1, sum normaliser.
    Elu,
    /// Gated (RetNet / simple GLA).
    Gated,
    /// DeltaNet (l2 q/k).
    Delta,
    /// Gated DeltaNet (l2 q/k).
    GatedDelta,
}

impl Variant {
    /// All of them, in table order.
    pub const ALL: [Variant; 5] = [
        Variant::Plain,
        Variant::Elu,
        Variant::Gated,
        Variant::Delta,
        Variant::GatedDelta,
    ];

    /// A short name for tables and files.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Elu => "elu+1 sum",
            Variant::Gated => "gated",
            Variant::Delta => "delta",
            Variant::GatedDelta => "gated delta",
        }
    }

    /// Whether the state carries `z`.
    pub fn normalized(self) -> bool {
        self == Variant::Elu
    }
}

/// Inputs of one shape: q, k, v standard normal; beta in (0, 1); g = log(sigmoid(x + 3)).
pub struct Inputs {
    pub q: Tok,
    pub k: Tok,
    pub v: Tok,
    pub beta: PerTok,
    pub g: PerTok,
}

impl Inputs {
    /// Random inputs of shape (b, h, n, 64).
    pub fn random(b: usize, h: usize, n: usize, seed: u64) -> Inputs {
        let dev = Cpu::seed_from_u64(seed);
        let tok = || -> Tok { dev.sample_normal_like(&(b, h, n, Const)) };
        let (q, k, v) = (tok(), tok(), tok());
        let x: PerTok = dev.sample_normal_like(&(b, h, n));
        let beta = dev.tensor_from_vec(
            x.as_vec()
                .iter()
                .map(|x| 1.0 / (1.0 + (-x).exp()))
                .collect(),
            (b, h, n),
        );
        let g = dev.tensor_from_vec(
            x.as_vec()
                .iter()
                .map(|x| -(1.0 + (-(x + 3.0)).exp()).ln())
                .collect(),
            (b, h, n),
        );
        Inputs { q, k, v, beta, g }
    }
}

macro_rules! specs_at_chunk {
    ($m:ident, $c:literal) => {
        /// The variants at this chunk size.
        pub mod $m {
            use attnc::prelude::*;

            #[attention(head_dim = 64, chunk = $c)]
            pub struct Plain;
            #[attention(head_dim = 64, feature_map = elu_plus_one, normalize = sum, chunk = $c)]
            pub struct Elu;
            #[attention(head_dim = 64, update = gated, chunk = $c)]
            pub struct Gated;
            #[attention(head_dim = 64, update = delta, qk_norm = l2, chunk = $c)]
            pub struct Delta;
            #[attention(head_dim = 64, update = gated_delta, qk_norm = l2, chunk = $c)]
            pub struct GatedDelta;

            /// `forward` of a variant.
            pub fn forward(v: super::Variant, x: &super::Inputs) -> Result<super::Tok, Error> {
                use super::Variant::*;
                match v {
                    Plain => self::Plain::forward(x.q.clone(), x.k.clone(), x.v.clone()),
                    Elu => self::Elu::forward(x.q.clone(), x.k.clone(), x.v.clone()),
                    Gated => {
                        self::Gated::forward(x.q.clone(), x.k.clone(), x.v.clone(), x.g.clone())
                    }
                    Delta => {
                        self::Delta::forward(x.q.clone(), x.k.clone(), x.v.clone(), x.beta.clone())
                    }
                    GatedDelta => self::GatedDelta::forward(
                        x.q.clone(),
                        x.k.clone(),
                        x.v.clone(),
                        x.beta.clone(),
                        x.g.clone(),
                    ),
                }
            }
        }
    };
}

specs_at_chunk!(c32, 32);
specs_at_chunk!(c64, 64);
specs_at_chunk!(c128, 128);

/// The chunk sizes benchmarked.
pub const CHUNKS: [usize; 3] = [32, 64, 128];

/// `forward` of a variant at a chunk size from [`CHUNKS`].
pub fn forward(v: Variant, chunk: usize, x: &Inputs) -> Result<Tok, Error> {
    match chunk {
        32 => c32::forward(v, x),
        128 => c128::forward(v, x),
        _ => c64::forward(v, x),
    }
}

/// The state after a whole sequence (chunk 64), for decoding from it.
pub type St = State<usize, usize, 64, 64>;

/// `forward_with_state` at chunk 64.
pub fn prefill(v: Variant, x: &Inputs) -> Result<St, Error> {
    use Variant::*;
    let (_, st) = match v {
        Plain => c64::Plain::forward_with_state(x.q.clone(), x.k.clone(), x.v.clone(), None)?,
        Elu => c64::Elu::forward_with_state(x.q.clone(), x.k.clone(), x.v.clone(), None)?,
        Gated => c64::Gated::forward_with_state(
            x.q.clone(),
            x.k.clone(),
            x.v.clone(),
            x.g.clone(),
            None,
        )?,
        Delta => c64::Delta::forward_with_state(
            x.q.clone(),
            x.k.clone(),
            x.v.clone(),
            x.beta.clone(),
            None,
        )?,
        GatedDelta => c64::GatedDelta::forward_with_state(
            x.q.clone(),
            x.k.clone(),
            x.v.clone(),
            x.beta.clone(),
            x.g.clone(),
            None,
        )?,
    };
    Ok(st)
}

/// One decoding token of every head.
pub struct Token {
    pub q: Head,
    pub k: Head,
    pub v: Head,
    pub beta: HeadScalar,
    pub g: HeadScalar,
}

/// `step` of a variant.
pub fn step(v: Variant, st: &mut St, t: &Token) -> Result<Head, Error> {
    use Variant::*;
    match v {
        Plain => c64::Plain::step(st, &t.q, &t.k, &t.v),
        Elu => c64::Elu::step(st, &t.q, &t.k, &t.v),
        Gated => c64::Gated::step(st, &t.q, &t.k, &t.v, &t.g),
        Delta => c64::Delta::step(st, &t.q, &t.k, &t.v, &t.beta),
        GatedDelta => c64::GatedDelta::step(st, &t.q, &t.k, &t.v, &t.beta, &t.g),
    }
}

/// The decoding state of the variants (d = 64).
pub type Dec = DecodeState<usize, usize, 64, 64>;

/// `decode_step` of a variant: `step` on a state that owns its buffers.
pub fn decode_step(v: Variant, st: &mut Dec, t: &Token) -> Result<Head, Error> {
    use Variant::*;
    match v {
        Plain => c64::Plain::decode_step(st, &t.q, &t.k, &t.v),
        Elu => c64::Elu::decode_step(st, &t.q, &t.k, &t.v),
        Gated => c64::Gated::decode_step(st, &t.q, &t.k, &t.v, &t.g),
        Delta => c64::Delta::decode_step(st, &t.q, &t.k, &t.v, &t.beta),
        GatedDelta => c64::GatedDelta::decode_step(st, &t.q, &t.k, &t.v, &t.beta, &t.g),
    }
}

/// Tokens `0..count` of the inputs, one per decoding step.
pub fn tokens(x: &Inputs, count: usize) -> Vec<Token> {
    let (b, h, n, _) = *x.q.shape();
    let (q, k, v, beta, g) = (
        x.q.as_vec(),
        x.k.as_vec(),
        x.v.as_vec(),
        x.beta.as_vec(),
        x.g.as_vec(),
    );
    let dev = Cpu::default();
    (0..count.min(n))
        .map(|t| {
            let rows = |src: &[f32], d: usize| -> Vec<f32> {
                (0..b * h)
                    .flat_map(|bh| src[(bh * n + t) * d..(bh * n + t + 1) * d].to_vec())
                    .collect()
            };
            Token {
                q: dev.tensor_from_vec(rows(&q, 64), (b, h, Const)),
                k: dev.tensor_from_vec(rows(&k, 64), (b, h, Const)),
                v: dev.tensor_from_vec(rows(&v, 64), (b, h, Const)),
                beta: dev.tensor_from_vec(rows(&beta, 1), (b, h)),
                g: dev.tensor_from_vec(rows(&g, 1), (b, h)),
            }
        })
        .collect()
}

/// Exact causal softmax attention (flash-style tiles of 64), d = 64.
#[attention(head_dim = 64, feature_map = softmax, chunk = 64)]
pub struct Softmax;

/// `forward` of [`Softmax`].
pub fn softmax_forward(x: &Inputs) -> Result<Tok, Error> {
    Softmax::forward(x.q.clone(), x.k.clone(), x.v.clone())
}
