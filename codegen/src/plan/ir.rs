//! The kernel IR: tiles, inputs and tile operations.
//!
//! An [`Op`] is generic over its operands. The program builders ([`super::build`]) write ops over
//! bare [`Tile`] names; resolution ([`super::resolve`]) maps every operand to an [`Operand`] that
//! carries everything a printer needs: the tile's shape, which of its rows and columns are live,
//! and where it lives on the target. Emitters only spell resolved ops.

use crate::abi::Tri;

/// A tile (or vector) of a chunk program. Shapes for a chunk of `C` tokens are in
/// [`super::resolve`]; the names are the spelling both printers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tile {
    /// Queries, `C x F` (raw, then feature-mapped and scaled in place).
    Q,
    /// Raw queries `C x DK`, for feature maps that expand dk to F.
    Qx,
    /// Raw keys `C x DK`, for feature maps that expand dk to F.
    Kx,
    /// Keys, `C x F`.
    K,
    /// Values, `C x DV`.
    V,
    /// Keys transposed, `F x C`.
    Kt,
    /// Intra-chunk scores, `C x C`.
    A,
    /// Outputs, `C x DV`.
    O,
    /// The carried state, `F x DV`.
    S,
    /// The carried key sum, `F` (normalize = sum).
    Z,
    /// Per-token log-decays, `C`, turned into cumulative sums within the chunk.
    G,
    /// Per-token normaliser denominators, `C` (softmax: the running sums l).
    Den,
    /// Softmax: the running row maxima m, `C`.
    Max,
    /// Per-token write strengths beta, `C` (delta updates).
    Beta,
    /// Key-key products `K K^T`, `C x C` (delta updates).
    Kk,
    /// The delta rule's new values `U`, `C x DV` (delta updates).
    U,
    /// Phased programs: one chunk's own contribution to the state, `F x DV`.
    Ds,
    /// Phased programs: one chunk's own contribution to `z`, `F`.
    Dz,
    /// Phased delta programs: the WY factor `W = T diag(beta) diag(exp G) K`, `C x F`.
    W,
    /// Phased delta programs: the corrected values `U - W S` ("v_new"), `C x DV`.
    X,
    /// Momentum's buffer m, `F x DV` (`update = momentum(..)`).
    M,
    /// Momentum's buffer n for the key sum, `F` (`update = momentum(..)`, `normalize = sum`).
    Mz,
}

impl Tile {
    /// Every tile, in declaration order.
    pub const ALL: [Tile; 22] = [
        Tile::Q,
        Tile::Qx,
        Tile::Kx,
        Tile::K,
        Tile::V,
        Tile::Kt,
        Tile::A,
        Tile::O,
        Tile::S,
        Tile::Z,
        Tile::G,
        Tile::Den,
        Tile::Max,
        Tile::Beta,
        Tile::Kk,
        Tile::U,
        Tile::Ds,
        Tile::Dz,
        Tile::W,
        Tile::X,
        Tile::M,
        Tile::Mz,
    ];

    /// The tile's name in generated code (both backends).
    pub fn name(self) -> &'static str {
        match self {
            Tile::Q => "q",
            Tile::Qx => "qx",
            Tile::Kx => "kx",
            Tile::K => "k",
            Tile::V => "v",
            Tile::Kt => "kt",
            Tile::A => "a",
            Tile::O => "o",
            Tile::S => "s",
            Tile::Z => "z",
            Tile::G => "g",
            Tile::Den => "den",
            Tile::Max => "max",
            Tile::Beta => "beta",
            Tile::Kk => "kk",
            Tile::U => "u",
            Tile::Ds => "ds",
            Tile::Dz => "dz",
            Tile::W => "w",
            Tile::X => "x",
            Tile::M => "m",
            Tile::Mz => "mz",
        }
    }

    /// Whether the tile is one row of values (`1 x N`) rather than a matrix.
    pub fn is_vector(self) -> bool {
        matches!(
            self,
            Tile::Z | Tile::Dz | Tile::Mz | Tile::G | Tile::Den | Tile::Max | Tile::Beta
        )
    }

    /// Whether the tile's columns are the state's value columns (column-blocked in a CUDA
    /// scan, where one block carries `CB` of the `DV` columns).
    pub fn has_value_columns(self) -> bool {
        matches!(
            self,
            Tile::S | Tile::Ds | Tile::M | Tile::V | Tile::U | Tile::X | Tile::O
        )
    }
}

/// A per-token input of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// Queries.
    Q,
    /// Keys.
    K,
    /// Values.
    V,
    /// Log-decays g.
    G,
    /// Write strengths beta.
    Beta,
}

impl Input {
    /// The kernel parameter's name (both backends).
    pub fn name(self) -> &'static str {
        match self {
            Input::Q => "q",
            Input::K => "k",
            Input::V => "v",
            Input::G => "g",
            Input::Beta => "beta",
        }
    }

    /// Whether the input has one scalar per token (beta, g) rather than a row.
    pub fn is_scalar(self) -> bool {
        matches!(self, Input::G | Input::Beta)
    }
}

/// Which part of a tile's rows (or columns) holds data in the current chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extent {
    /// The chunk's live tokens: `rows` (the last chunk may be short).
    Rows,
    /// Softmax: the key tile's live tokens, `krows`.
    KeyRows,
    /// All of the dimension, always.
    Full(Dim),
}

/// One dimension of a tile, with what it measures (printers may spell it symbolically).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dim {
    /// Its size.
    pub n: usize,
    /// What it measures.
    pub of: DimOf,
}

/// What a [`Dim`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DimOf {
    /// Tokens of a chunk (`C`; 1 in the step program).
    Chunk,
    /// The feature dim F.
    Features,
    /// The raw key dim dk.
    KeyDim,
    /// Value columns: dv, or a column block of it.
    ValueCols,
    /// A vector's single row.
    One,
}

/// Which feature map an [`Op::Expand`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Expansion {
    /// Based's second-order Taylor map.
    Taylor2,
    /// DPFP with `nu` rolls.
    Dpfp {
        /// Number of rolls.
        nu: usize,
    },
    /// FAVOR+: reads the projection w, an input of the whole call.
    Favor,
}

/// Where a spilled tile lives in a chunk's `work` slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Offset in floats from the slot's start.
    pub offset: usize,
    /// Row length of the tile in the slot (full width: `DV` for value columns).
    pub row_len: usize,
}

impl Slot {
    /// A slot not yet assigned: the builders write it, resolution replaces it (and validation
    /// rejects any left).
    pub const UNASSIGNED: Slot = Slot {
        offset: usize::MAX,
        row_len: 0,
    };
}

/// One tile operation, over operands `T` (a [`Tile`] when built, an [`Operand`] when resolved).
/// `rows` (the chunk's live token count) is implicit.
#[derive(Clone, Debug, PartialEq)]
pub enum Op<T> {
    /// Copy this chunk's rows of an input into a tile (rows past the end are zero). With
    /// `short_conv` ([`crate::abi::Signature::conv`]) the CUDA printer loads q, k and v
    /// convolved and through SiLU, reading the w - 1 rows before the chunk (or the carried
    /// tail): the convolution is fused into the load.
    Load {
        /// Destination tile.
        dst: T,
        /// Source input.
        src: Input,
        /// Read in place (no copy) when the chunk is whole: nothing writes `dst` after the load
        /// and before the next one. Decided per target when the plan is resolved (the CPU's
        /// inputs are already in tile layout; CUDA stages every tile in shared memory).
        in_place: bool,
    },
    /// `x <- x / sqrt(|x|^2 + eps)` per row.
    L2Norm {
        /// The rows normalised in place.
        t: T,
        /// Added to the squared norm.
        eps: f32,
    },
    /// `x <- phi(x)` elementwise (the spec's elementwise map).
    FeatureMap(T),
    /// `dst <- phi(src)` for feature maps that expand each row from dk to F values.
    Expand {
        /// Raw rows, `C x DK`.
        src: T,
        /// Features, `C x F`.
        dst: T,
        /// Which map.
        map: Expansion,
    },
    /// `x <- factor * x`.
    Scale {
        /// The rows scaled in place.
        t: T,
        /// The factor.
        factor: f32,
    },
    /// `G <- cumsum(G)` within the chunk.
    CumSum(T),
    /// `dst <- src^T`.
    Transpose {
        /// Source.
        src: T,
        /// Destination.
        dst: T,
    },
    /// `dst (= or +=) a · b`.
    MatMul {
        /// Output.
        dst: T,
        /// Left operand.
        a: T,
        /// Right operand.
        b: T,
        /// Triangular structure.
        tri: Tri,
        /// Add to `dst` instead of overwriting it.
        accumulate: bool,
    },
    /// `dst (= or +=) a · bᵀ`, `b` stored as it is (N x K): the product over a key tile that a
    /// target with [`super::resolve::Target::READS_TRANSPOSED`] puts in place of a `Transpose`
    /// and a [`Op::MatMul`] (see [`super::fold_transposes`]).
    MatMulBt {
        /// Output.
        dst: T,
        /// Left operand.
        a: T,
        /// Right operand, transposed.
        b: T,
        /// Triangular structure.
        tri: Tri,
        /// Add to `dst` instead of overwriting it.
        accumulate: bool,
    },
    /// `dst[t] <- sum_s src[t][s]`.
    RowSums {
        /// Destination vector.
        dst: T,
        /// Source tile.
        src: T,
    },
    /// `dst[t] (= or +=) rows[t] · vec`.
    DotRows {
        /// Destination vector.
        dst: T,
        /// Tile whose rows are dotted.
        rows: T,
        /// The vector.
        vec: T,
        /// Add instead of overwrite.
        accumulate: bool,
    },
    /// `dst += sum_t src[t]`.
    AddColSums {
        /// Destination vector.
        dst: T,
        /// Source tile.
        src: T,
    },
    /// `dst[t] /= den[t] + eps`.
    DivideRows {
        /// Tile whose rows are divided.
        dst: T,
        /// The denominators.
        den: T,
        /// Added to each denominator.
        eps: f32,
    },
    /// `A[t][s] *= exp(G_t - G_s)` for s <= t.
    DecayScores {
        /// The scores.
        dst: T,
        /// Cumulative log-decays.
        gates: T,
    },
    /// `x[t] *= exp(G_t)`.
    DecayRows {
        /// Tile whose rows decay.
        dst: T,
        /// Cumulative log-decays.
        gates: T,
    },
    /// `x[:, s] *= exp(G_last - G_s)`.
    DecayColsToEnd {
        /// Tile whose columns decay.
        dst: T,
        /// Cumulative log-decays.
        gates: T,
    },
    /// `x *= exp(G_last)`.
    DecayAll {
        /// Tile that decays.
        dst: T,
        /// Cumulative log-decays.
        gates: T,
    },
    /// `dst <- src - dst`.
    SubFrom {
        /// Tile overwritten with the difference.
        dst: T,
        /// The minuend.
        src: T,
    },
    /// Forward substitution for the delta rule's `(I + strict_lower(diag(beta) L)) X = diag(beta) R`,
    /// in place: on entry `dst` holds `R`, on exit `X`; row t is
    /// `X_t = beta_t (R_t - sum_{s<t} L_ts X_s)`.
    Solve {
        /// Right-hand side in, solution out.
        dst: T,
        /// The (decayed) key-key products; only the strict lower triangle is read.
        lower: T,
        /// The write strengths.
        beta: T,
    },
    /// The recurrent step (one token: row 0 of `k`, `v`, `q`, `o`) in one pass over the state:
    /// `S <- exp(g) S + k^T v` (no decay without `gates`), then `o = q S`.
    StepUpdate {
        /// The `F x DV` state.
        s: T,
        /// The key features, `1 x F`.
        k: T,
        /// The values written, `1 x DV`.
        v: T,
        /// The query features, `1 x F`.
        q: T,
        /// The output, `1 x DV`.
        o: T,
        /// The token's log-decay, for gated updates.
        gates: Option<T>,
    },
    /// The recurrent step of `update = momentum(mu)` (one token: row 0 of `k`, `v`, `q`, `o`):
    /// `m <- mu m + k^T v`, `S <- S + m`, then `o = q S`.
    MomentumStep {
        /// The `F x DV` state.
        s: T,
        /// Momentum's `F x DV` buffer.
        m: T,
        /// The key features, `1 x F`.
        k: T,
        /// The values, `1 x DV`.
        v: T,
        /// The query features, `1 x F`.
        q: T,
        /// The output, `1 x DV`.
        o: T,
        /// The momentum coefficient, in [0, 1).
        mu: f32,
    },
    /// The key sum of `update = momentum(mu)` (one token): `n <- mu n + k`, `z <- z + n`.
    MomentumKeySum {
        /// The key sum `z`, `F`.
        z: T,
        /// Momentum's buffer `n`, `F`.
        n: T,
        /// The key features, `1 x F`.
        k: T,
        /// The momentum coefficient.
        mu: f32,
    },
    /// Softmax: `m = -inf`, `l = 0`, `O = 0` before the first key tile.
    SoftmaxInit {
        /// Running maxima.
        max: T,
        /// Running sums.
        sum: T,
        /// Output accumulator.
        acc: T,
    },
    /// Softmax, on the diagonal key tile of a causal spec: scores above the diagonal become -inf.
    MaskAboveDiagonal(T),
    /// Softmax, one key tile of the online (FlashAttention) update, per query row t:
    /// `m' = max(m, max_s A_ts)`, `P_ts = exp(A_ts - m')`, `l = l exp(m - m') + sum_s P_ts`,
    /// `O_t *= exp(m - m')`, `m = m'`; the scores are replaced by P.
    OnlineSoftmax {
        /// Scores in, probabilities out.
        scores: T,
        /// Running maxima.
        max: T,
        /// Running sums.
        sum: T,
        /// Output accumulator.
        acc: T,
    },
    /// Write this chunk's rows of a tile to the output.
    Store(T),
    /// `dst <- src`, the whole tile.
    Copy {
        /// Destination.
        dst: T,
        /// Source.
        src: T,
    },
    /// `x <- 0`, the whole tile.
    Zero(T),
    /// `dst += src`, the whole tile.
    AddTo {
        /// Accumulator.
        dst: T,
        /// Addend.
        src: T,
    },
    /// Phased programs: write a tile to this chunk's slot of the workspace, for a later phase.
    Spill {
        /// The tile.
        t: T,
        /// Its place in the slot (set by resolution).
        slot: Slot,
    },
    /// Phased programs: read a tile back from this chunk's slot of the workspace.
    Fill {
        /// The tile.
        t: T,
        /// Its place in the slot (set by resolution).
        slot: Slot,
    },
    /// Phased programs: write `s` (and `z`) to this chunk's slot of the per-chunk states.
    SaveChunkState {
        /// The `F x DV` tile.
        s: T,
        /// The `F` vector, for `normalize = sum`.
        z: Option<T>,
    },
    /// Phased programs: read this chunk's slot of the per-chunk states into `s` (and `z`).
    LoadChunkState {
        /// The `F x DV` tile.
        s: T,
        /// The `F` vector, for `normalize = sum`.
        z: Option<T>,
    },
    /// Phased programs: read the (final) state of the call into `s` (and `z`).
    ReadState {
        /// The `F x DV` tile.
        s: T,
        /// The `F` vector, for `normalize = sum`.
        z: Option<T>,
    },
}

/// How an op touches one of its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Read,
    /// Overwritten without being read.
    Write,
    /// Read, then written.
    Update,
}

impl<T: Copy> Op<T> {
    /// Every operand with how the op touches it (the validator's view of data flow).
    pub fn operands(&self) -> Vec<(T, Access)> {
        use Access::{Read as R, Update as U, Write as W};
        let acc = |a: bool| if a { U } else { W };
        match *self {
            Op::Load { dst, .. } => vec![(dst, W)],
            Op::L2Norm { t, .. }
            | Op::FeatureMap(t)
            | Op::Scale { t, .. }
            | Op::CumSum(t)
            | Op::MaskAboveDiagonal(t) => vec![(t, U)],
            Op::Store(t) | Op::Spill { t, .. } => vec![(t, R)],
            Op::Zero(t) | Op::Fill { t, .. } => vec![(t, W)],
            Op::Expand { src, dst, .. } | Op::Transpose { src, dst } | Op::Copy { dst, src } => {
                vec![(src, R), (dst, W)]
            }
            Op::MatMul {
                dst,
                a,
                b,
                accumulate,
                ..
            }
            | Op::MatMulBt {
                dst,
                a,
                b,
                accumulate,
                ..
            } => vec![(a, R), (b, R), (dst, acc(accumulate))],
            Op::RowSums { dst, src } => vec![(src, R), (dst, W)],
            Op::DotRows {
                dst,
                rows,
                vec,
                accumulate,
            } => vec![(rows, R), (vec, R), (dst, acc(accumulate))],
            Op::AddColSums { dst, src } | Op::AddTo { dst, src } | Op::SubFrom { dst, src } => {
                vec![(src, R), (dst, U)]
            }
            Op::DivideRows { dst, den, .. } => vec![(den, R), (dst, U)],
            Op::DecayScores { dst, gates }
            | Op::DecayRows { dst, gates }
            | Op::DecayColsToEnd { dst, gates }
            | Op::DecayAll { dst, gates } => vec![(gates, R), (dst, U)],
            Op::Solve { dst, lower, beta } => vec![(lower, R), (beta, R), (dst, U)],
            Op::StepUpdate {
                s,
                k,
                v,
                q,
                o,
                gates,
            } => {
                let mut v = vec![(k, R), (v, R), (q, R)];
                v.extend(gates.map(|g| (g, R)));
                v.extend([(s, U), (o, W)]);
                v
            }
            Op::MomentumStep {
                s, m, k, v, q, o, ..
            } => vec![(k, R), (v, R), (q, R), (m, U), (s, U), (o, W)],
            Op::MomentumKeySum { z, n, k, .. } => vec![(k, R), (n, U), (z, U)],
            Op::SoftmaxInit { max, sum, acc } => vec![(max, W), (sum, W), (acc, W)],
            Op::OnlineSoftmax {
                scores,
                max,
                sum,
                acc,
            } => vec![(scores, U), (max, U), (sum, U), (acc, U)],
            Op::SaveChunkState { s, z } => {
                std::iter::once((s, R)).chain(z.map(|z| (z, R))).collect()
            }
            Op::LoadChunkState { s, z } | Op::ReadState { s, z } => {
                std::iter::once((s, W)).chain(z.map(|z| (z, W))).collect()
            }
        }
    }

    /// The same op over other operands.
    pub fn map<U>(&self, mut f: impl FnMut(T) -> U) -> Op<U> {
        match self.try_map(|t| Ok::<U, std::convert::Infallible>(f(t))) {
            Ok(op) => op,
            Err(never) => match never {},
        }
    }

    /// The same op over other operands, or the first error of `f`.
    pub fn try_map<U, E>(&self, mut f: impl FnMut(T) -> Result<U, E>) -> Result<Op<U>, E> {
        Ok(match *self {
            Op::Load { dst, src, in_place } => Op::Load {
                dst: f(dst)?,
                src,
                in_place,
            },
            Op::L2Norm { t, eps } => Op::L2Norm { t: f(t)?, eps },
            Op::FeatureMap(t) => Op::FeatureMap(f(t)?),
            Op::Expand { src, dst, map } => Op::Expand {
                src: f(src)?,
                dst: f(dst)?,
                map,
            },
            Op::Scale { t, factor } => Op::Scale { t: f(t)?, factor },
            Op::CumSum(t) => Op::CumSum(f(t)?),
            Op::Transpose { src, dst } => Op::Transpose {
                src: f(src)?,
                dst: f(dst)?,
            },
            Op::MatMul {
                dst,
                a,
                b,
                tri,
                accumulate,
            } => Op::MatMul {
                dst: f(dst)?,
                a: f(a)?,
                b: f(b)?,
                tri,
                accumulate,
            },
            Op::MatMulBt {
                dst,
                a,
                b,
                tri,
                accumulate,
            } => Op::MatMulBt {
                dst: f(dst)?,
                a: f(a)?,
                b: f(b)?,
                tri,
                accumulate,
            },
            Op::RowSums { dst, src } => Op::RowSums {
                dst: f(dst)?,
                src: f(src)?,
            },
            Op::DotRows {
                dst,
                rows,
                vec,
                accumulate,
            } => Op::DotRows {
                dst: f(dst)?,
                rows: f(rows)?,
                vec: f(vec)?,
                accumulate,
            },
            Op::AddColSums { dst, src } => Op::AddColSums {
                dst: f(dst)?,
                src: f(src)?,
            },
            Op::DivideRows { dst, den, eps } => Op::DivideRows {
                dst: f(dst)?,
                den: f(den)?,
                eps,
            },
            Op::DecayScores { dst, gates } => Op::DecayScores {
                dst: f(dst)?,
                gates: f(gates)?,
            },
            Op::DecayRows { dst, gates } => Op::DecayRows {
                dst: f(dst)?,
                gates: f(gates)?,
            },
            Op::DecayColsToEnd { dst, gates } => Op::DecayColsToEnd {
                dst: f(dst)?,
                gates: f(gates)?,
            },
            Op::DecayAll { dst, gates } => Op::DecayAll {
                dst: f(dst)?,
                gates: f(gates)?,
            },
            Op::SubFrom { dst, src } => Op::SubFrom {
                dst: f(dst)?,
                src: f(src)?,
            },
            Op::Solve { dst, lower, beta } => Op::Solve {
                dst: f(dst)?,
                lower: f(lower)?,
                beta: f(beta)?,
            },
            Op::StepUpdate {
                s,
                k,
                v,
                q,
                o,
                gates,
            } => Op::StepUpdate {
                s: f(s)?,
                k: f(k)?,
                v: f(v)?,
                q: f(q)?,
                o: f(o)?,
                gates: gates.map(&mut f).transpose()?,
            },
            Op::MomentumStep {
                s,
                m,
                k,
                v,
                q,
                o,
                mu,
            } => Op::MomentumStep {
                s: f(s)?,
                m: f(m)?,
                k: f(k)?,
                v: f(v)?,
                q: f(q)?,
                o: f(o)?,
                mu,
            },
            Op::MomentumKeySum { z, n, k, mu } => Op::MomentumKeySum {
                z: f(z)?,
                n: f(n)?,
                k: f(k)?,
                mu,
            },
            Op::SoftmaxInit { max, sum, acc } => Op::SoftmaxInit {
                max: f(max)?,
                sum: f(sum)?,
                acc: f(acc)?,
            },
            Op::MaskAboveDiagonal(t) => Op::MaskAboveDiagonal(f(t)?),
            Op::OnlineSoftmax {
                scores,
                max,
                sum,
                acc,
            } => Op::OnlineSoftmax {
                scores: f(scores)?,
                max: f(max)?,
                sum: f(sum)?,
                acc: f(acc)?,
            },
            Op::Store(t) => Op::Store(f(t)?),
            Op::Copy { dst, src } => Op::Copy {
                dst: f(dst)?,
                src: f(src)?,
            },
            Op::Zero(t) => Op::Zero(f(t)?),
            Op::AddTo { dst, src } => Op::AddTo {
                dst: f(dst)?,
                src: f(src)?,
            },
            Op::Spill { t, slot } => Op::Spill { t: f(t)?, slot },
            Op::Fill { t, slot } => Op::Fill { t: f(t)?, slot },
            Op::SaveChunkState { s, z } => Op::SaveChunkState {
                s: f(s)?,
                z: z.map(&mut f).transpose()?,
            },
            Op::LoadChunkState { s, z } => Op::LoadChunkState {
                s: f(s)?,
                z: z.map(&mut f).transpose()?,
            },
            Op::ReadState { s, z } => Op::ReadState {
                s: f(s)?,
                z: z.map(&mut f).transpose()?,
            },
        })
    }
}

/// The distance between rows of a CUDA tile `cols` wide, in floats: the least `p >= cols` with
/// `p = 4 (mod 8)` when `cols` is a multiple of 4 (at least 8), else `cols`. Shared memory has 32
/// banks of 4 bytes, and rows a multiple of 32 floats apart would put a column in one bank: with
/// this pitch a tensor-core A fragment (8 rows x 4 columns) reads 32 banks and a B fragment (4
/// rows x 8 columns) at most two words per bank. The CUDA tile library's `attnc::pitch` is the
/// same rule.
pub fn cuda_pitch(cols: usize) -> usize {
    if !cols.is_multiple_of(4) || cols < 8 {
        cols
    } else {
        cols + (12 - cols % 8) % 8
    }
}

/// A resolved operand: the tile and every fact about it a printer needs. `P` is the target's
/// memory place ([`CpuPlace`] or [`CudaPlace`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operand<P> {
    /// Which tile.
    pub tile: Tile,
    /// Rows of the tile as declared.
    pub rows: Dim,
    /// Columns of the tile as declared.
    pub cols: Dim,
    /// Which rows hold data in the current chunk.
    pub live_rows: Extent,
    /// Which columns hold data in the current chunk.
    pub live_cols: Extent,
    /// Where it lives.
    pub place: P,
}

impl<P> Operand<P> {
    /// Floats in the tile.
    pub fn len(&self) -> usize {
        self.rows.n * self.cols.n
    }

    /// Floats the tile takes in a CUDA block: its rows [`cuda_pitch`] floats apart.
    pub fn cuda_footprint(&self) -> usize {
        self.rows.n * cuda_pitch(self.cols.n)
    }

    /// Whether the tile holds no floats (never, for a planned tile).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a tile lives in a CPU kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuPlace {
    /// The task's state buffer (`S`, `z` of a sequential program or a scan), viewed as a tile.
    Task,
    /// A stack array bound by `&mut` (small tiles).
    Stack,
    /// A heap tile allocated once per call, bound by `&mut` (chunk tiles: no thread stack
    /// overflows at chunk 256).
    Heap,
    /// A per-token vector held by value as `[f32; N]`.
    Local,
}

/// Where a tile lives in a CUDA kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CudaPlace {
    /// Dynamic shared memory, at this float offset.
    Shared(usize),
    /// The block's global scratch area, at this float offset (tiles over the shared budget).
    Scratch(usize),
}
