//! The kernel plan: a spec lowered to dims plus straight-line programs of tile operations.
//!
//! A *pass* is a list of [`Op`]s run once per chunk, chunks in sequence order, with the state
//! (`S`, `z`) carried from chunk to chunk. A causal spec has one pass; a non-causal one has two
//! (first the whole-sequence state, then every output from it). The *step program* is the causal
//! pass itself run on a chunk of one token: decoding is the same algorithm, not a second one.
//!
//! Backends lower each op once (the CPU emitter to calls of `attnc_runtime::tile`); a new update
//! rule is a new op sequence, not a new backend.

use crate::spec::{FeatureMap, Mask, Normalize, QkNorm, Spec, Update};

/// A tile (or vector) of the chunk program. Shapes for a chunk of `C` tokens:
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// Which part of a product a [`Op::MatMul`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tri {
    /// All of it.
    Full,
    /// The lower triangle (diagonal included) of the output; the rest is zero (causal mask).
    LowerOut,
    /// The left operand is lower triangular; skip its upper part.
    LowerA,
}

/// One tile operation. Ops read and write named tiles; `rows` (the chunk's live token count) is
/// implicit.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Copy this chunk's rows of an input into a tile (rows past the end are zero).
    Load {
        /// Destination tile.
        dst: Tile,
        /// Source input.
        src: Input,
    },
    /// `x <- x / sqrt(|x|^2 + 1e-6)` per row.
    L2Norm(Tile),
    /// `x <- phi(x)` elementwise.
    FeatureMap(Tile),
    /// `dst <- phi(src)` for feature maps that expand each row from dk to F values (taylor2,
    /// dpfp, favor). FAVOR+ also reads the projection w (F x DK), an input of the whole call
    /// ([`Plan::uses_projection`]): `dst[t][i] = exp(w_i . x'_t - |x'_t|^2 / 2) / sqrt(F)` with
    /// `x' = src_t / DK^(1/4)` (the stabiliser is 0; see `attnc_runtime::favor`).
    Expand {
        /// Raw rows, `C x DK`.
        src: Tile,
        /// Features, `C x F`.
        dst: Tile,
    },
    /// `x <- scale * x`.
    Scale(Tile),
    /// `G <- cumsum(G)` within the chunk.
    CumSum(Tile),
    /// `dst <- src^T`.
    Transpose {
        /// Source.
        src: Tile,
        /// Destination.
        dst: Tile,
    },
    /// `dst (= or +=) a · b`.
    MatMul {
        /// Output.
        dst: Tile,
        /// Left operand.
        a: Tile,
        /// Right operand.
        b: Tile,
        /// Triangular structure.
        tri: Tri,
        /// Add to `dst` instead of overwriting it.
        accumulate: bool,
    },
    /// `dst[t] <- sum_s src[t][s]`.
    RowSums {
        /// Destination vector.
        dst: Tile,
        /// Source tile.
        src: Tile,
    },
    /// `dst[t] (= or +=) rows[t] · vec`.
    DotRows {
        /// Destination vector.
        dst: Tile,
        /// Tile whose rows are dotted.
        rows: Tile,
        /// The vector.
        vec: Tile,
        /// Add instead of overwrite.
        accumulate: bool,
    },
    /// `dst += sum_t src[t]`.
    AddColSums {
        /// Destination vector.
        dst: Tile,
        /// Source tile.
        src: Tile,
    },
    /// `dst[t] /= den[t] + 1e-6`.
    DivideRows {
        /// Tile whose rows are divided.
        dst: Tile,
        /// The denominators.
        den: Tile,
    },
    /// `A[t][s] *= exp(G_t - G_s)` for s <= t.
    DecayScores {
        /// The scores.
        dst: Tile,
        /// Cumulative log-decays.
        gates: Tile,
    },
    /// `x[t] *= exp(G_t)`.
    DecayRows {
        /// Tile whose rows decay.
        dst: Tile,
        /// Cumulative log-decays.
        gates: Tile,
    },
    /// `x[:, s] *= exp(G_last - G_s)`.
    DecayColsToEnd {
        /// Tile whose columns decay.
        dst: Tile,
        /// Cumulative log-decays.
        gates: Tile,
    },
    /// `x *= exp(G_last)`.
    DecayAll {
        /// Tile that decays.
        dst: Tile,
        /// Cumulative log-decays.
        gates: Tile,
    },
    /// `dst <- src - dst`.
    SubFrom {
        /// Tile overwritten with the difference.
        dst: Tile,
        /// The minuend.
        src: Tile,
    },
    /// Forward substitution for the delta rule's `(I + strict_lower(diag(beta) L)) X = diag(beta) R`,
    /// in place: on entry `dst` holds `R`, on exit `X`; row t is
    /// `X_t = beta_t (R_t - sum_{s<t} L_ts X_s)`.
    Solve {
        /// Right-hand side in, solution out.
        dst: Tile,
        /// The (decayed) key-key products; only the strict lower triangle is read.
        lower: Tile,
        /// The write strengths.
        beta: Tile,
    },
    /// The recurrent step (one token: row 0 of `k`, `v`, `q`, `o`) in one pass over the state:
    /// `S <- exp(g) S + k^T v` (no decay without `gates`), then `o = q S`. One pass instead of
    /// a product to read and another to update halves the state traffic of a step.
    StepUpdate {
        /// The `F x DV` state.
        s: Tile,
        /// The key features, `1 x F`.
        k: Tile,
        /// The values written, `1 x DV`.
        v: Tile,
        /// The query features, `1 x F`.
        q: Tile,
        /// The output, `1 x DV`.
        o: Tile,
        /// The token's log-decay, for gated updates.
        gates: Option<Tile>,
    },
    /// Softmax: `m = -inf`, `l = 0`, `O = 0` before the first key tile.
    SoftmaxInit {
        /// Running maxima.
        max: Tile,
        /// Running sums.
        sum: Tile,
        /// Output accumulator.
        acc: Tile,
    },
    /// Softmax, on the diagonal key tile of a causal spec: scores above the diagonal become -inf.
    MaskAboveDiagonal(Tile),
    /// Softmax, one key tile of the online (FlashAttention) update, per query row t:
    /// `m' = max(m, max_s A_ts)`, `P_ts = exp(A_ts - m')`, `l = l exp(m - m') + sum_s P_ts`,
    /// `O_t *= exp(m - m')`, `m = m'`; the scores are replaced by P.
    OnlineSoftmax {
        /// Scores in, probabilities out.
        scores: Tile,
        /// Running maxima.
        max: Tile,
        /// Running sums.
        sum: Tile,
        /// Output accumulator.
        acc: Tile,
    },
    /// Write this chunk's rows of a tile to the output.
    Store(Tile),
    /// `dst <- src`, the whole tile.
    Copy {
        /// Destination.
        dst: Tile,
        /// Source.
        src: Tile,
    },
    /// `x <- 0`, the whole tile.
    Zero(Tile),
    /// `dst += src`, the whole tile.
    AddTo {
        /// Accumulator.
        dst: Tile,
        /// Addend.
        src: Tile,
    },
    /// Phased programs: write a tile to this chunk's slot of the workspace, for a later phase.
    Spill(Tile),
    /// Phased programs: read a tile back from this chunk's slot of the workspace.
    Fill(Tile),
    /// Phased programs: write `s` (and `z`) to this chunk's slot of the per-chunk states.
    SaveChunkState {
        /// The `F x DV` tile.
        s: Tile,
        /// The `F` vector, for `normalize = sum`.
        z: Option<Tile>,
    },
    /// Phased programs: read this chunk's slot of the per-chunk states into `s` (and `z`).
    LoadChunkState {
        /// The `F x DV` tile.
        s: Tile,
        /// The `F` vector, for `normalize = sum`.
        z: Option<Tile>,
    },
    /// Phased programs: read the (final) state of the call into `s` (and `z`).
    ReadState {
        /// The `F x DV` tile.
        s: Tile,
        /// The `F` vector, for `normalize = sum`.
        z: Option<Tile>,
    },
}

/// The chunk program split into three phases (flash-linear-attention's strategy), so chunks run
/// in parallel and only a short scan is sequential:
///
/// - `intra`: per (batch, head, chunk), in parallel: feature maps, the chunk's own contribution
///   to the state (and for delta rules the WY factors), spilled to the workspace;
/// - `scan`: per (batch, head) and column block of the state, chunks in order: the incoming
///   state of every chunk (saved), then the state after it. `S` and `z` start from the initial
///   state and end as the final state;
/// - `output`: per (batch, head, chunk), in parallel: the outputs from the chunk's incoming
///   state (or, for `mask = none`, from the final state).
///
/// Tiles whose columns are value columns (`S`, `Ds`, `V`, `U`, `X`, `O`) are column blocks of
/// the state in `scan`.
#[derive(Clone, Debug, PartialEq)]
pub struct Phased {
    /// Phase (a), per chunk.
    pub intra: Vec<Op>,
    /// Phase (b), per chunk in sequence order.
    pub scan: Vec<Op>,
    /// Phase (c), per chunk.
    pub output: Vec<Op>,
}

/// Exact softmax attention as a tiled program (FlashAttention's method): for each query tile,
/// `prologue`; for each key tile (up to the diagonal when causal), `body`; then `epilogue`.
/// Nothing N x N is ever materialised: the scores of one query tile x key tile at a time.
#[derive(Clone, Debug, PartialEq)]
pub struct Tiled {
    /// Whether query tile i sees key tiles 0..=i only (with the diagonal tile masked).
    pub causal: bool,
    /// Per query tile, before its key tiles.
    pub prologue: Vec<Op>,
    /// Per key tile.
    pub body: Vec<Op>,
    /// Ops applied on the diagonal key tile only, after `body`'s scores (causal masking).
    pub diagonal: Vec<Op>,
    /// Per key tile, after the diagonal ops.
    pub update: Vec<Op>,
    /// Per query tile, after its key tiles.
    pub epilogue: Vec<Op>,
}

/// The kernel plan of one spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Key dim dk.
    pub dk: usize,
    /// Value dim dv.
    pub dv: usize,
    /// Feature dim F.
    pub f: usize,
    /// Chunk length C.
    pub chunk: usize,
    /// The query scale.
    pub scale: f32,
    /// The elementwise feature map.
    pub feature_map: FeatureMap,
    /// Whether the kernel takes `beta`.
    pub uses_beta: bool,
    /// Whether the kernel takes `g`.
    pub uses_gates: bool,
    /// Whether the kernel takes FAVOR+'s projection w (F x DK), read by [`Op::Expand`].
    pub uses_projection: bool,
    /// Whether the state carries `z`.
    pub normalized: bool,
    /// The chunk program: passes over the sequence, each a list of ops per chunk.
    pub passes: Vec<Vec<Op>>,
    /// The step program: one causal pass over a chunk of one token.
    pub step: Vec<Op>,
    /// For `feature_map = softmax`: the tiled program (then `passes` and `step` are empty).
    pub softmax: Option<Tiled>,
    /// The chunk program in three phases, for backends that run chunks in parallel (CUDA).
    /// `None` for softmax.
    pub phased: Option<Phased>,
}

impl Plan {
    /// Plans a validated spec: every spec that validates has a kernel.
    pub fn new(spec: &Spec) -> Plan {
        if spec.feature_map == FeatureMap::Softmax {
            return Plan {
                dk: spec.head_dim,
                dv: spec.value_dim,
                f: spec.head_dim,
                chunk: spec.chunk,
                scale: spec.scale_value(),
                feature_map: FeatureMap::Softmax,
                uses_beta: false,
                uses_gates: false,
                uses_projection: false,
                normalized: false,
                passes: Vec::new(),
                step: Vec::new(),
                softmax: Some(softmax_program(spec)),
                phased: None,
            };
        }
        let causal = match spec.update {
            Update::Additive | Update::Gated => causal_pass(spec),
            Update::Delta | Update::GatedDelta => delta_pass(spec),
        };
        let step = step_program(spec);
        let passes = match spec.mask {
            Mask::Causal => vec![causal.clone()],
            Mask::None => vec![state_pass(spec), output_pass(spec)],
        };
        Plan {
            dk: spec.head_dim,
            dv: spec.value_dim,
            f: spec.feature_dim(),
            chunk: spec.chunk,
            scale: spec.scale_value(),
            feature_map: spec.feature_map.clone(),
            uses_beta: spec.has_beta(),
            uses_gates: spec.has_gate(),
            uses_projection: matches!(spec.feature_map, FeatureMap::Favor { .. }),
            normalized: spec.normalize == Normalize::Sum,
            passes,
            step,
            softmax: None,
            phased: Some(phased_program(spec)),
        }
    }

    /// Whether a tile is used anywhere in the plan (the emitter allocates only those).
    pub fn uses(&self, tile: Tile) -> bool {
        self.passes
            .iter()
            .chain(std::iter::once(&self.step))
            .chain(
                self.softmax
                    .iter()
                    .flat_map(|t| [&t.prologue, &t.body, &t.diagonal, &t.update, &t.epilogue]),
            )
            .flatten()
            .any(|op| op.tiles().contains(&tile))
    }
}

impl Op {
    /// The tiles this op reads or writes.
    pub fn tiles(&self) -> Vec<Tile> {
        match *self {
            Op::Load { dst, .. } => vec![dst],
            Op::L2Norm(t)
            | Op::FeatureMap(t)
            | Op::Scale(t)
            | Op::CumSum(t)
            | Op::Store(t)
            | Op::Zero(t)
            | Op::Spill(t)
            | Op::Fill(t)
            | Op::MaskAboveDiagonal(t) => vec![t],
            Op::Copy { dst, src } | Op::AddTo { dst, src } => vec![dst, src],
            Op::SaveChunkState { s, z } | Op::LoadChunkState { s, z } | Op::ReadState { s, z } => {
                std::iter::once(s).chain(z).collect()
            }
            Op::StepUpdate {
                s,
                k,
                v,
                q,
                o,
                gates,
            } => [s, k, v, q, o].into_iter().chain(gates).collect(),
            Op::SoftmaxInit { max, sum, acc } => vec![max, sum, acc],
            Op::OnlineSoftmax {
                scores,
                max,
                sum,
                acc,
            } => vec![scores, max, sum, acc],
            Op::Transpose { src, dst } | Op::Expand { src, dst } => vec![src, dst],
            Op::MatMul { dst, a, b, .. } => vec![dst, a, b],
            Op::RowSums { dst, src } | Op::AddColSums { dst, src } => vec![dst, src],
            Op::DotRows { dst, rows, vec, .. } => vec![dst, rows, vec],
            Op::DivideRows { dst, den } => vec![dst, den],
            Op::SubFrom { dst, src } => vec![dst, src],
            Op::Solve { dst, lower, beta } => vec![dst, lower, beta],
            Op::DecayScores { dst, gates }
            | Op::DecayRows { dst, gates }
            | Op::DecayColsToEnd { dst, gates }
            | Op::DecayAll { dst, gates } => vec![dst, gates],
        }
    }
}

/// Whether the feature map turns dk values into F != dk features (computed row by row).
pub fn expands(map: &FeatureMap) -> bool {
    matches!(
        map,
        FeatureMap::Taylor2 | FeatureMap::Dpfp { .. } | FeatureMap::Favor { .. }
    )
}

/// Load q or k, then normalise and feature-map it (and scale queries).
fn prologue(spec: &Spec, dst: Tile, src: Input) -> Vec<Op> {
    let raw = match (expands(&spec.feature_map), dst) {
        (true, Tile::Q) => Tile::Qx,
        (true, _) => Tile::Kx,
        (false, _) => dst,
    };
    let mut ops = vec![Op::Load { dst: raw, src }];
    if spec.qk_norm == QkNorm::L2 {
        ops.push(Op::L2Norm(raw));
    }
    if raw != dst {
        ops.push(Op::Expand { src: raw, dst });
    } else if spec.feature_map != FeatureMap::Identity {
        ops.push(Op::FeatureMap(dst));
    }
    if dst == Tile::Q {
        ops.push(Op::Scale(dst));
    }
    ops
}

/// What every causal chunk program starts with: load and feature-map q, k; load v (and beta,
/// and the cumulative gates), `Kt = K^T`, causal scores `A = tril(Q K^T)`.
fn causal_scores(spec: &Spec) -> Vec<Op> {
    scores(spec, true)
}

/// Load and feature-map q, k (and, with `load_values`, v and beta); the cumulative gates;
/// `Kt = K^T`; the causal scores `A = tril(Q K^T)`.
fn scores(spec: &Spec, load_values: bool) -> Vec<Op> {
    let mut ops = prologue(spec, Tile::Q, Input::Q);
    ops.extend(prologue(spec, Tile::K, Input::K));
    if load_values {
        ops.push(Op::Load {
            dst: Tile::V,
            src: Input::V,
        });
        if spec.has_beta() {
            ops.push(Op::Load {
                dst: Tile::Beta,
                src: Input::Beta,
            });
        }
    }
    if spec.has_gate() {
        ops.extend(gates());
    }
    ops.push(Op::Transpose {
        src: Tile::K,
        dst: Tile::Kt,
    });
    ops.push(Op::MatMul {
        dst: Tile::A,
        a: Tile::Q,
        b: Tile::Kt,
        tri: Tri::LowerOut,
        accumulate: false,
    });
    ops
}

/// Gated updates: decay the scores between tokens inside the chunk (`A ⊙ Γ`) and the queries
/// from the chunk start (`diag(exp G) Q`).
fn decay_scores_and_queries() -> [Op; 2] {
    [
        Op::DecayScores {
            dst: Tile::A,
            gates: Tile::G,
        },
        Op::DecayRows {
            dst: Tile::Q,
            gates: Tile::G,
        },
    ]
}

/// The causal chunk program (DESIGN §3, additive and gated), per chunk with incoming state S, z:
///
/// ```text
/// A   = tril(Q K^T)                          scores, token t sees s <= t
/// den = rowsum(A) + Q z                      normaliser (z and q undecayed, as §3.5 states)
/// A  *= exp(G_t - G_s)                       gated: decay between tokens inside the chunk
/// O   = A V + diag(exp G) Q S                intra-chunk + incoming state
/// O  /= den + 1e-6
/// z  += sum_t K_t;  S = exp(G_last) S + (K^T diag(exp(G_last - G))) V
/// ```
fn causal_pass(spec: &Spec) -> Vec<Op> {
    let gated = spec.has_gate();
    let normalized = spec.normalize == Normalize::Sum;
    let mut ops = causal_scores(spec);
    if normalized {
        ops.push(Op::RowSums {
            dst: Tile::Den,
            src: Tile::A,
        });
        ops.push(Op::DotRows {
            dst: Tile::Den,
            rows: Tile::Q,
            vec: Tile::Z,
            accumulate: true,
        });
        ops.push(Op::AddColSums {
            dst: Tile::Z,
            src: Tile::K,
        });
    }
    if gated {
        ops.extend(decay_scores_and_queries());
    }
    ops.push(Op::MatMul {
        dst: Tile::O,
        a: Tile::A,
        b: Tile::V,
        tri: Tri::LowerA,
        accumulate: false,
    });
    ops.push(Op::MatMul {
        dst: Tile::O,
        a: Tile::Q,
        b: Tile::S,
        tri: Tri::Full,
        accumulate: true,
    });
    if normalized {
        ops.push(Op::DivideRows {
            dst: Tile::O,
            den: Tile::Den,
        });
    }
    if gated {
        ops.push(Op::DecayAll {
            dst: Tile::S,
            gates: Tile::G,
        });
        ops.push(Op::DecayColsToEnd {
            dst: Tile::Kt,
            gates: Tile::G,
        });
    }
    ops.push(Op::MatMul {
        dst: Tile::S,
        a: Tile::Kt,
        b: Tile::V,
        tri: Tri::Full,
        accumulate: true,
    });
    ops.push(Op::Store(Tile::O));
    ops
}

/// The step program, the recurrent form of DESIGN §3 for one token (flash-linear-attention's
/// `fused_recurrent`), so each step passes over the state once (twice for delta rules):
///
/// ```text
/// z  += k;  den = q z                        normaliser (z undecayed, as §3.5 states)
/// u   = exp(g) k S;  u = beta (v - u)        delta rules: what the decayed state mispredicts
/// S   = exp(g) S + k^T u;  o = q S           one pass (u = v for additive and gated updates)
/// o  /= den + 1e-6
/// ```
fn step_program(spec: &Spec) -> Vec<Op> {
    let mut ops = prologue(spec, Tile::Q, Input::Q);
    ops.extend(prologue(spec, Tile::K, Input::K));
    ops.push(Op::Load {
        dst: Tile::V,
        src: Input::V,
    });
    // One token: the cumulative log-decay is the token's own.
    let gates = spec.has_gate().then_some(Tile::G);
    if let Some(g) = gates {
        ops.push(Op::Load {
            dst: g,
            src: Input::G,
        });
    }
    if spec.normalize == Normalize::Sum {
        ops.push(Op::AddColSums {
            dst: Tile::Z,
            src: Tile::K,
        });
        ops.push(Op::DotRows {
            dst: Tile::Den,
            rows: Tile::Q,
            vec: Tile::Z,
            accumulate: false,
        });
    }
    let written = if spec.has_beta() {
        ops.extend(delta_correction(gates));
        Tile::U
    } else {
        Tile::V
    };
    ops.push(Op::StepUpdate {
        s: Tile::S,
        k: Tile::K,
        v: written,
        q: Tile::Q,
        o: Tile::O,
        gates,
    });
    if spec.normalize == Normalize::Sum {
        ops.push(Op::DivideRows {
            dst: Tile::O,
            den: Tile::Den,
        });
    }
    ops.push(Op::Store(Tile::O));
    ops
}

/// The delta rule's write for one token: `U = beta (v - exp(g) k S)`. With one row the
/// substitution reads no key-key products and only scales by beta.
fn delta_correction(gates: Option<Tile>) -> Vec<Op> {
    let mut ops = vec![
        Op::Load {
            dst: Tile::Beta,
            src: Input::Beta,
        },
        Op::MatMul {
            dst: Tile::U,
            a: Tile::K,
            b: Tile::S,
            tri: Tri::Full,
            accumulate: false,
        },
    ];
    if let Some(g) = gates {
        ops.push(Op::DecayRows {
            dst: Tile::U,
            gates: g,
        });
    }
    ops.push(Op::SubFrom {
        dst: Tile::U,
        src: Tile::V,
    });
    ops.push(Op::Solve {
        dst: Tile::U,
        lower: Tile::Kk,
        beta: Tile::Beta,
    });
    ops
}

/// Non-causal, first pass: the whole-sequence state `S += K^T V`, `z += sum K`.
fn state_pass(spec: &Spec) -> Vec<Op> {
    let mut ops = prologue(spec, Tile::K, Input::K);
    ops.push(Op::Load {
        dst: Tile::V,
        src: Input::V,
    });
    if spec.normalize == Normalize::Sum {
        ops.push(Op::AddColSums {
            dst: Tile::Z,
            src: Tile::K,
        });
    }
    ops.push(Op::Transpose {
        src: Tile::K,
        dst: Tile::Kt,
    });
    ops.push(Op::MatMul {
        dst: Tile::S,
        a: Tile::Kt,
        b: Tile::V,
        tri: Tri::Full,
        accumulate: true,
    });
    ops
}

/// Non-causal, second pass: every output from the final state, `O = Q S / (Q z + 1e-6)`.
fn output_pass(spec: &Spec) -> Vec<Op> {
    let mut ops = prologue(spec, Tile::Q, Input::Q);
    ops.push(Op::MatMul {
        dst: Tile::O,
        a: Tile::Q,
        b: Tile::S,
        tri: Tri::Full,
        accumulate: false,
    });
    if spec.normalize == Normalize::Sum {
        ops.push(Op::DotRows {
            dst: Tile::Den,
            rows: Tile::Q,
            vec: Tile::Z,
            accumulate: false,
        });
        ops.push(Op::DivideRows {
            dst: Tile::O,
            den: Tile::Den,
        });
    }
    ops.push(Op::Store(Tile::O));
    ops
}

/// The delta rule's chunk program (the WY/UT form of Yang et al. 2024, solved by substitution),
/// per chunk with incoming state S; Γ_ts = exp(G_t - G_s) and exp(G) are 1 without gates:
///
/// ```text
/// A  = tril(Q K^T) ⊙ Γ                       causal scores
/// L  = (K K^T) ⊙ Γ                           only its strict lower triangle is used
/// R  = V - diag(exp G) K S                   what the incoming state fails to predict
/// U  : (I + strict_lower(diag(beta) L)) U = diag(beta) R     forward substitution
/// O  = A U + diag(exp G) Q S
/// S  = exp(G_last) S + (K^T diag(exp(G_last - G))) U
/// ```
///
/// No inverse is formed: substitution on the unit lower-triangular system is backward stable,
/// where forming `T = (I + ...)^-1` first can amplify rounding at large chunks.
fn delta_pass(spec: &Spec) -> Vec<Op> {
    let gated = spec.has_gate();
    let mut ops = causal_scores(spec);
    ops.push(Op::MatMul {
        dst: Tile::Kk,
        a: Tile::K,
        b: Tile::Kt,
        tri: Tri::LowerOut,
        accumulate: false,
    });
    ops.push(Op::MatMul {
        dst: Tile::U,
        a: Tile::K,
        b: Tile::S,
        tri: Tri::Full,
        accumulate: false,
    });
    if gated {
        for dst in [Tile::A, Tile::Kk] {
            ops.push(Op::DecayScores {
                dst,
                gates: Tile::G,
            });
        }
        for dst in [Tile::U, Tile::Q] {
            ops.push(Op::DecayRows {
                dst,
                gates: Tile::G,
            });
        }
    }
    ops.push(Op::SubFrom {
        dst: Tile::U,
        src: Tile::V,
    });
    ops.push(Op::Solve {
        dst: Tile::U,
        lower: Tile::Kk,
        beta: Tile::Beta,
    });
    ops.push(Op::MatMul {
        dst: Tile::O,
        a: Tile::A,
        b: Tile::U,
        tri: Tri::LowerA,
        accumulate: false,
    });
    ops.push(Op::MatMul {
        dst: Tile::O,
        a: Tile::Q,
        b: Tile::S,
        tri: Tri::Full,
        accumulate: true,
    });
    if gated {
        ops.push(Op::DecayAll {
            dst: Tile::S,
            gates: Tile::G,
        });
        ops.push(Op::DecayColsToEnd {
            dst: Tile::Kt,
            gates: Tile::G,
        });
    }
    ops.push(Op::MatMul {
        dst: Tile::S,
        a: Tile::Kt,
        b: Tile::U,
        tri: Tri::Full,
        accumulate: true,
    });
    ops.push(Op::Store(Tile::O));
    ops
}

/// Exact softmax attention, `o_t = sum_s softmax_s(scale q_t . k_s) v_s`, tiled by `chunk`.
fn softmax_program(spec: &Spec) -> Tiled {
    let mut prologue = vec![Op::Load {
        dst: Tile::Q,
        src: Input::Q,
    }];
    if spec.qk_norm == QkNorm::L2 {
        prologue.push(Op::L2Norm(Tile::Q));
    }
    prologue.push(Op::Scale(Tile::Q));
    prologue.push(Op::SoftmaxInit {
        max: Tile::Max,
        sum: Tile::Den,
        acc: Tile::O,
    });
    let mut body = vec![Op::Load {
        dst: Tile::K,
        src: Input::K,
    }];
    if spec.qk_norm == QkNorm::L2 {
        body.push(Op::L2Norm(Tile::K));
    }
    body.extend([
        Op::Load {
            dst: Tile::V,
            src: Input::V,
        },
        Op::Transpose {
            src: Tile::K,
            dst: Tile::Kt,
        },
        Op::MatMul {
            dst: Tile::A,
            a: Tile::Q,
            b: Tile::Kt,
            tri: Tri::Full,
            accumulate: false,
        },
    ]);
    let update = vec![
        Op::OnlineSoftmax {
            scores: Tile::A,
            max: Tile::Max,
            sum: Tile::Den,
            acc: Tile::O,
        },
        Op::MatMul {
            dst: Tile::O,
            a: Tile::A,
            b: Tile::V,
            tri: Tri::Full,
            accumulate: true,
        },
    ];
    let epilogue = vec![
        Op::DivideRows {
            dst: Tile::O,
            den: Tile::Den,
        },
        Op::Store(Tile::O),
    ];
    Tiled {
        causal: spec.mask == Mask::Causal,
        prologue,
        body,
        diagonal: vec![Op::MaskAboveDiagonal(Tile::A)],
        update,
        epilogue,
    }
}

/// The three-phase form of the chunk program (see [`Phased`]).
fn phased_program(spec: &Spec) -> Phased {
    match (spec.update, spec.mask) {
        (Update::Delta | Update::GatedDelta, _) => delta_phases(spec),
        (_, Mask::None) => bidirectional_phases(spec),
        _ => causal_phases(spec),
    }
}

/// `z` of the state, when the spec normalises.
fn z_of(spec: &Spec, z: Tile) -> Option<Tile> {
    (spec.normalize == Normalize::Sum).then_some(z)
}

/// Load `g` and turn it into cumulative sums within the chunk.
fn gates() -> [Op; 2] {
    [
        Op::Load {
            dst: Tile::G,
            src: Input::G,
        },
        Op::CumSum(Tile::G),
    ]
}

/// Phase (a) of additive and gated updates, causal or not: the chunk's own state contribution
/// `Ds = K^T diag(exp(G_last - G)) V` and `Dz = sum_t K_t`, saved as the chunk's state slot.
fn contribution(spec: &Spec) -> Vec<Op> {
    let mut ops = prologue(spec, Tile::K, Input::K);
    ops.push(Op::Load {
        dst: Tile::V,
        src: Input::V,
    });
    ops.push(Op::Transpose {
        src: Tile::K,
        dst: Tile::Kt,
    });
    if spec.has_gate() {
        ops.extend(gates());
        ops.push(Op::Spill(Tile::G));
        ops.push(Op::DecayColsToEnd {
            dst: Tile::Kt,
            gates: Tile::G,
        });
    }
    ops.push(Op::MatMul {
        dst: Tile::Ds,
        a: Tile::Kt,
        b: Tile::V,
        tri: Tri::Full,
        accumulate: false,
    });
    if spec.normalize == Normalize::Sum {
        ops.push(Op::Zero(Tile::Dz));
        ops.push(Op::AddColSums {
            dst: Tile::Dz,
            src: Tile::K,
        });
    }
    ops.push(Op::SaveChunkState {
        s: Tile::Ds,
        z: z_of(spec, Tile::Dz),
    });
    ops
}

/// Causal additive and gated updates:
///
/// ```text
/// (a) Ds = K^T diag(exp(G_last - G)) V,  Dz = sum_t K_t             -> chunk slot
/// (b) slot <- (S, z);  S = exp(G_last) S + Ds;  z += Dz               chunks in order
/// (c) (S, z) <- slot;  the causal pass's outputs from them
/// ```
fn causal_phases(spec: &Spec) -> Phased {
    let gated = spec.has_gate();
    let mut scan = vec![
        Op::LoadChunkState {
            s: Tile::Ds,
            z: z_of(spec, Tile::Dz),
        },
        Op::SaveChunkState {
            s: Tile::S,
            z: z_of(spec, Tile::Z),
        },
    ];
    if gated {
        scan.push(Op::Fill(Tile::G));
        scan.push(Op::DecayAll {
            dst: Tile::S,
            gates: Tile::G,
        });
    }
    scan.push(Op::AddTo {
        dst: Tile::S,
        src: Tile::Ds,
    });
    if spec.normalize == Normalize::Sum {
        scan.push(Op::AddTo {
            dst: Tile::Z,
            src: Tile::Dz,
        });
    }
    // (c): the causal pass up to its outputs, from the chunk's incoming state.
    let mut output = causal_scores(spec);
    output.push(Op::LoadChunkState {
        s: Tile::S,
        z: z_of(spec, Tile::Z),
    });
    output.extend(
        causal_pass(spec)
            .into_iter()
            .skip_while(|op| !matches!(op, Op::MatMul { dst: Tile::A, .. }))
            .skip(1)
            .filter(|op| !writes_state(op)),
    );
    Phased {
        intra: contribution(spec),
        scan,
        output,
    }
}

/// Whether an op of a sequential pass updates the carried state (phase (b)'s job).
fn writes_state(op: &Op) -> bool {
    match op {
        Op::AddColSums { dst, .. } => *dst == Tile::Z,
        Op::DecayAll { dst, .. } => *dst == Tile::S,
        Op::DecayColsToEnd { .. } => true,
        Op::MatMul { dst, .. } => *dst == Tile::S,
        _ => false,
    }
}

/// `mask = none`: (a) each chunk's `K^T V`; (b) their sum, the final state; (c) every output
/// from the final state.
fn bidirectional_phases(spec: &Spec) -> Phased {
    let mut scan = vec![
        Op::LoadChunkState {
            s: Tile::Ds,
            z: z_of(spec, Tile::Dz),
        },
        Op::AddTo {
            dst: Tile::S,
            src: Tile::Ds,
        },
    ];
    if spec.normalize == Normalize::Sum {
        scan.push(Op::AddTo {
            dst: Tile::Z,
            src: Tile::Dz,
        });
    }
    let mut output = vec![Op::ReadState {
        s: Tile::S,
        z: z_of(spec, Tile::Z),
    }];
    output.extend(output_pass(spec));
    Phased {
        intra: contribution(spec),
        scan,
        output,
    }
}

/// Delta and gated delta rules, in the WY form flash-linear-attention uses; `U = T diag(beta) V`
/// and `W = T diag(beta) diag(exp G) K` with `T = (I + strict_lower(diag(beta) L))^-1`, both by
/// forward substitution (no inverse is formed):
///
/// ```text
/// (a) L = (K K^T) ⊙ Γ;  W, U by substitution;  Kt = K^T diag(exp(G_last - G))   -> spilled
/// (b) X = U - W S   (the corrected values);  slot <- S;  S = exp(G_last) S + Kt X
/// (c) S <- slot;  O = (tril(Q K^T) ⊙ Γ) X + diag(exp G) Q S
/// ```
fn delta_phases(spec: &Spec) -> Phased {
    let gated = spec.has_gate();
    let mut intra = prologue(spec, Tile::K, Input::K);
    intra.push(Op::Load {
        dst: Tile::V,
        src: Input::V,
    });
    intra.push(Op::Load {
        dst: Tile::Beta,
        src: Input::Beta,
    });
    if gated {
        intra.extend(gates());
        intra.push(Op::Spill(Tile::G));
    }
    intra.push(Op::Transpose {
        src: Tile::K,
        dst: Tile::Kt,
    });
    intra.push(Op::MatMul {
        dst: Tile::Kk,
        a: Tile::K,
        b: Tile::Kt,
        tri: Tri::LowerOut,
        accumulate: false,
    });
    intra.push(Op::Copy {
        dst: Tile::W,
        src: Tile::K,
    });
    if gated {
        intra.push(Op::DecayScores {
            dst: Tile::Kk,
            gates: Tile::G,
        });
        intra.push(Op::DecayRows {
            dst: Tile::W,
            gates: Tile::G,
        });
        intra.push(Op::DecayColsToEnd {
            dst: Tile::Kt,
            gates: Tile::G,
        });
    }
    intra.push(Op::Copy {
        dst: Tile::U,
        src: Tile::V,
    });
    for dst in [Tile::W, Tile::U] {
        intra.push(Op::Solve {
            dst,
            lower: Tile::Kk,
            beta: Tile::Beta,
        });
    }
    intra.extend([Tile::W, Tile::U, Tile::Kt].map(Op::Spill));

    let mut scan = [Tile::W, Tile::U, Tile::Kt].map(Op::Fill).to_vec();
    scan.extend([
        Op::MatMul {
            dst: Tile::X,
            a: Tile::W,
            b: Tile::S,
            tri: Tri::Full,
            accumulate: false,
        },
        Op::SubFrom {
            dst: Tile::X,
            src: Tile::U,
        },
        Op::Spill(Tile::X),
        Op::SaveChunkState {
            s: Tile::S,
            z: None,
        },
    ]);
    if gated {
        scan.push(Op::Fill(Tile::G));
        scan.push(Op::DecayAll {
            dst: Tile::S,
            gates: Tile::G,
        });
    }
    scan.push(Op::MatMul {
        dst: Tile::S,
        a: Tile::Kt,
        b: Tile::X,
        tri: Tri::Full,
        accumulate: true,
    });

    let mut output = scores(spec, false);
    if gated {
        output.extend(decay_scores_and_queries());
    }
    output.extend([
        Op::Fill(Tile::X),
        Op::LoadChunkState {
            s: Tile::S,
            z: None,
        },
        Op::MatMul {
            dst: Tile::O,
            a: Tile::A,
            b: Tile::X,
            tri: Tri::LowerA,
            accumulate: false,
        },
        Op::MatMul {
            dst: Tile::O,
            a: Tile::Q,
            b: Tile::S,
            tri: Tri::Full,
            accumulate: true,
        },
        Op::Store(Tile::O),
    ]);
    Phased {
        intra,
        scan,
        output,
    }
}
