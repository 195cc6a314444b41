//! The programs of a spec, as ops over bare tile names (attnc's numerical meaning, chunkwise).
//!
//! Every program is assembled from named sub-sequences (`scores`, `normalizer`, `outputs`,
//! `state_update`, ...), so the sequential pass and the phases of the chunk-parallel schedule
//! share their pieces by name rather than by slicing one another.

use super::ir::{Expansion, Input, Op, Slot, Tile};
use crate::abi::Tri;
use crate::spec::{FeatureMap, Mask, Normalize, QkNorm, Rpe, Spec, Update};

/// Added to the normaliser's denominator (`normalize = sum`).
pub const NORMALIZER_EPS: f32 = 1e-6;
/// Added to the squared norm by `qk_norm = l2`.
pub const L2_EPS: f32 = 1e-6;

/// A built op: operands are tile names.
pub type BuiltOp = Op<Tile>;

/// The linear-attention programs of one spec, before resolution.
pub struct LinearPrograms {
    /// The sequential chunk program: one pass (causal) or two (state, then outputs).
    pub passes: Vec<Vec<BuiltOp>>,
    /// The step program: one token, the recurrent form.
    pub step: Vec<BuiltOp>,
    /// Phase (a) of the chunk-parallel schedule.
    pub intra: Vec<BuiltOp>,
    /// Phase (b).
    pub scan: Vec<BuiltOp>,
    /// Phase (c).
    pub output: Vec<BuiltOp>,
    /// Additive and gated updates on CUDA: phase (b) with each chunk's contribution computed
    /// inside it (flash-linear-attention's `chunk_fwd_h`), so there is no phase (a) and each
    /// chunk's state goes to memory once.
    pub fused_scan: Option<Vec<BuiltOp>>,
    /// `rpe = toeplitz` on CUDA: per chunk, the features of q and k and the values, spilled to
    /// the workspace for the FFT kernel; and whether it is causal.
    pub rpe: Option<(Vec<BuiltOp>, bool)>,
}

/// Exact softmax attention, before resolution: for each query tile `prologue`; for each key
/// tile (up to the diagonal when causal) `body`, then on the diagonal tile `diagonal`, then
/// `update`; then `epilogue`.
pub struct SoftmaxProgram {
    /// Whether query tile i sees key tiles 0..=i only.
    pub causal: bool,
    /// Per query tile, before its key tiles.
    pub prologue: Vec<BuiltOp>,
    /// Per key tile.
    pub body: Vec<BuiltOp>,
    /// On the diagonal key tile only, after `body`.
    pub diagonal: Vec<BuiltOp>,
    /// Per key tile, after the diagonal ops.
    pub update: Vec<BuiltOp>,
    /// Per query tile, after its key tiles.
    pub epilogue: Vec<BuiltOp>,
}

/// The expanding map of a spec, if its feature map turns dk values into F others.
pub fn expansion(map: &FeatureMap) -> Option<Expansion> {
    match map {
        FeatureMap::Taylor2 => Some(Expansion::Taylor2),
        FeatureMap::Dpfp { nu } => Some(Expansion::Dpfp { nu: *nu }),
        FeatureMap::Favor { .. } => Some(Expansion::Favor),
        _ => None,
    }
}

fn load(dst: Tile, src: Input) -> BuiltOp {
    Op::Load {
        dst,
        src,
        in_place: false,
    }
}

fn matmul(dst: Tile, a: Tile, b: Tile, tri: Tri, accumulate: bool) -> BuiltOp {
    Op::MatMul {
        dst,
        a,
        b,
        tri,
        accumulate,
    }
}

fn normalized(spec: &Spec) -> bool {
    spec.normalize == Normalize::Sum
}

/// `z` of the state, when the spec normalises.
fn z_of(spec: &Spec, z: Tile) -> Option<Tile> {
    normalized(spec).then_some(z)
}

/// Load q or k, then normalise and feature-map it (and scale queries).
fn features(spec: &Spec, dst: Tile, src: Input) -> Vec<BuiltOp> {
    let expand = expansion(&spec.feature_map);
    let raw = match (expand, dst) {
        (Some(_), Tile::Q) => Tile::Qx,
        (Some(_), _) => Tile::Kx,
        (None, _) => dst,
    };
    let mut ops = vec![load(raw, src)];
    if spec.qk_norm == QkNorm::L2 {
        ops.push(Op::L2Norm {
            t: raw,
            eps: L2_EPS,
        });
    }
    if let Some(map) = expand {
        ops.push(Op::Expand { src: raw, dst, map });
    } else if spec.feature_map != FeatureMap::Identity {
        ops.push(Op::FeatureMap(dst));
    }
    if dst == Tile::Q {
        ops.push(Op::Scale {
            t: dst,
            factor: spec.scale_value(),
        });
    }
    ops
}

/// Load `g` and turn it into cumulative sums within the chunk.
fn gates() -> [BuiltOp; 2] {
    [load(Tile::G, Input::G), Op::CumSum(Tile::G)]
}

/// Features of q and k (and, with `values`, v and beta loaded); the cumulative gates;
/// `Kt = K^T`; the causal scores `A = tril(Q K^T)`.
fn scores(spec: &Spec, values: bool) -> Vec<BuiltOp> {
    let mut ops = features(spec, Tile::Q, Input::Q);
    ops.extend(features(spec, Tile::K, Input::K));
    if values {
        ops.push(load(Tile::V, Input::V));
        if spec.has_beta() {
            ops.push(load(Tile::Beta, Input::Beta));
        }
    }
    if spec.has_gate() {
        ops.extend(gates());
    }
    ops.push(Op::Transpose {
        src: Tile::K,
        dst: Tile::Kt,
    });
    ops.push(matmul(Tile::A, Tile::Q, Tile::Kt, Tri::LowerOut, false));
    ops
}

/// The normaliser's denominators from the incoming `z`: `den = rowsum(A) + Q z` (z and q
/// undecayed, as the normaliser is defined).
fn denominators() -> [BuiltOp; 2] {
    [
        Op::RowSums {
            dst: Tile::Den,
            src: Tile::A,
        },
        Op::DotRows {
            dst: Tile::Den,
            rows: Tile::Q,
            vec: Tile::Z,
            accumulate: true,
        },
    ]
}

/// `z += sum_t K_t`.
fn key_sum(z: Tile) -> BuiltOp {
    Op::AddColSums {
        dst: z,
        src: Tile::K,
    }
}

/// Gated updates: decay the scores between tokens inside the chunk (`A ⊙ Γ`) and the queries
/// from the chunk start (`diag(exp G) Q`).
fn decay_scores_and_queries() -> [BuiltOp; 2] {
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

/// `O = Q S + A values`: the incoming state, then the chunk's own tokens. `fetch` (the values'
/// load, in phase (c)) comes between the two products, when Q and K are dead, so on CUDA the
/// values take their place: four 64 x 64 tiles alive at once instead of five.
fn outputs(values: Tile, fetch: Option<BuiltOp>) -> Vec<BuiltOp> {
    let mut ops = vec![matmul(Tile::O, Tile::Q, Tile::S, Tri::Full, false)];
    ops.extend(fetch);
    ops.push(matmul(Tile::O, Tile::A, values, Tri::LowerA, true));
    ops
}

/// `O /= den + eps`.
fn divide() -> BuiltOp {
    Op::DivideRows {
        dst: Tile::O,
        den: Tile::Den,
        eps: NORMALIZER_EPS,
    }
}

/// `S = exp(G_last) S + (K^T diag(exp(G_last - G))) values` (no decay without gates).
fn state_update(spec: &Spec, values: Tile) -> Vec<BuiltOp> {
    let mut ops = Vec::new();
    if spec.has_gate() {
        ops.push(Op::DecayAll {
            dst: Tile::S,
            gates: Tile::G,
        });
        ops.push(Op::DecayColsToEnd {
            dst: Tile::Kt,
            gates: Tile::G,
        });
    }
    ops.push(matmul(Tile::S, Tile::Kt, values, Tri::Full, true));
    ops
}

/// The outputs of a causal additive or gated chunk from its incoming state (S, z), up to the
/// store; shared by the sequential pass and phase (c) (which loads V late, as `fetch`).
fn causal_outputs(spec: &Spec, fetch: Option<BuiltOp>) -> Vec<BuiltOp> {
    let mut ops = Vec::new();
    if normalized(spec) {
        ops.extend(denominators());
    }
    if spec.has_gate() {
        ops.extend(decay_scores_and_queries());
    }
    ops.extend(outputs(Tile::V, fetch));
    if normalized(spec) {
        ops.push(divide());
    }
    ops
}

/// The causal chunk program (additive and gated), per chunk with incoming state S, z:
///
/// ```text
/// A   = tril(Q K^T)                          scores, token t sees s <= t
/// den = rowsum(A) + Q z;  z += sum_t K_t     normaliser
/// A  *= exp(G_t - G_s)                       gated: decay between tokens inside the chunk
/// O   = diag(exp G) Q S + A V                incoming state + intra-chunk
/// O  /= den + 1e-6
/// S   = exp(G_last) S + (K^T diag(exp(G_last - G))) V
/// ```
fn causal_pass(spec: &Spec) -> Vec<BuiltOp> {
    let mut ops = scores(spec, true);
    let mut outputs = causal_outputs(spec, None);
    if normalized(spec) {
        // z advances once the denominators have read the incoming z.
        outputs.insert(2, key_sum(Tile::Z));
    }
    ops.extend(outputs);
    ops.extend(state_update(spec, Tile::V));
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
fn delta_pass(spec: &Spec) -> Vec<BuiltOp> {
    let mut ops = scores(spec, true);
    ops.push(matmul(Tile::Kk, Tile::K, Tile::Kt, Tri::LowerOut, false));
    ops.push(matmul(Tile::U, Tile::K, Tile::S, Tri::Full, false));
    if spec.has_gate() {
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
    ops.extend(outputs(Tile::U, None));
    ops.extend(state_update(spec, Tile::U));
    ops.push(Op::Store(Tile::O));
    ops
}

/// Non-causal, first pass: the whole-sequence state `S += K^T V`, `z += sum K`.
fn state_pass(spec: &Spec) -> Vec<BuiltOp> {
    let mut ops = features(spec, Tile::K, Input::K);
    ops.push(load(Tile::V, Input::V));
    if normalized(spec) {
        ops.push(key_sum(Tile::Z));
    }
    ops.push(Op::Transpose {
        src: Tile::K,
        dst: Tile::Kt,
    });
    ops.push(matmul(Tile::S, Tile::Kt, Tile::V, Tri::Full, true));
    ops
}

/// Non-causal, second pass: every output from the final state, `O = Q S / (Q z + 1e-6)`.
fn output_pass(spec: &Spec) -> Vec<BuiltOp> {
    let mut ops = features(spec, Tile::Q, Input::Q);
    ops.push(matmul(Tile::O, Tile::Q, Tile::S, Tri::Full, false));
    if normalized(spec) {
        ops.push(Op::DotRows {
            dst: Tile::Den,
            rows: Tile::Q,
            vec: Tile::Z,
            accumulate: false,
        });
        ops.push(divide());
    }
    ops.push(Op::Store(Tile::O));
    ops
}

/// The step program, the recurrent form of attnc's meaning for one token (flash-linear-attention's
/// `fused_recurrent`), so each step passes over the state once (twice for delta rules):
///
/// ```text
/// z  += k;  den = q z                        normaliser (z undecayed, as §3.5 states)
/// u   = exp(g) k S;  u = beta (v - u)        delta rules: what the decayed state mispredicts
/// S   = exp(g) S + k^T u;  o = q S           one pass (u = v for additive and gated updates)
/// o  /= den + 1e-6
/// ```
///
/// With `update = momentum(mu)` the writes go through momentum's buffers first:
/// `n = mu n + k; z += n` and `m = mu m + k^T v; S += m`.
fn step_program(spec: &Spec) -> Vec<BuiltOp> {
    let mut ops = features(spec, Tile::Q, Input::Q);
    ops.extend(features(spec, Tile::K, Input::K));
    ops.push(load(Tile::V, Input::V));
    // One token: the cumulative log-decay is the token's own.
    let gates = spec.has_gate().then_some(Tile::G);
    if let Some(g) = gates {
        ops.push(load(g, Input::G));
    }
    if normalized(spec) {
        ops.push(match spec.momentum {
            Some(mu) => Op::MomentumKeySum {
                z: Tile::Z,
                n: Tile::Mz,
                k: Tile::K,
                mu,
            },
            None => key_sum(Tile::Z),
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
    ops.push(match spec.momentum {
        Some(mu) => Op::MomentumStep {
            s: Tile::S,
            m: Tile::M,
            k: Tile::K,
            v: written,
            q: Tile::Q,
            o: Tile::O,
            mu,
        },
        None => Op::StepUpdate {
            s: Tile::S,
            k: Tile::K,
            v: written,
            q: Tile::Q,
            o: Tile::O,
            gates,
        },
    });
    if normalized(spec) {
        ops.push(divide());
    }
    ops.push(Op::Store(Tile::O));
    ops
}

/// The delta rule's write for one token: `U = beta (v - exp(g) k S)`. With one row the
/// substitution reads no key-key products; `Kk` is zeroed so that every tile read is written.
fn delta_correction(gates: Option<Tile>) -> Vec<BuiltOp> {
    let mut ops = vec![
        load(Tile::Beta, Input::Beta),
        matmul(Tile::U, Tile::K, Tile::S, Tri::Full, false),
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
    ops.push(Op::Zero(Tile::Kk));
    ops.push(Op::Solve {
        dst: Tile::U,
        lower: Tile::Kk,
        beta: Tile::Beta,
    });
    ops
}

/// A spill or fill whose slot resolution assigns.
fn spill(t: Tile) -> BuiltOp {
    Op::Spill {
        t,
        slot: Slot::UNASSIGNED,
    }
}

fn fill(t: Tile) -> BuiltOp {
    Op::Fill {
        t,
        slot: Slot::UNASSIGNED,
    }
}

/// The chunk's key features, values and `Kt = K^T diag(exp(G_last - G))` (the cumulative gates
/// spilled for a later phase when `spill_gates`).
fn decayed_keys(spec: &Spec, spill_gates: bool) -> Vec<BuiltOp> {
    let mut ops = features(spec, Tile::K, Input::K);
    ops.push(load(Tile::V, Input::V));
    ops.push(Op::Transpose {
        src: Tile::K,
        dst: Tile::Kt,
    });
    if spec.has_gate() {
        ops.extend(gates());
        if spill_gates {
            ops.push(spill(Tile::G));
        }
        ops.push(Op::DecayColsToEnd {
            dst: Tile::Kt,
            gates: Tile::G,
        });
    }
    ops
}

/// Phase (a) of additive and gated updates, causal or not: the chunk's own state contribution
/// `Ds = K^T diag(exp(G_last - G)) V` and `Dz = sum_t K_t`, saved as the chunk's state slot.
fn contribution(spec: &Spec) -> Vec<BuiltOp> {
    let mut ops = decayed_keys(spec, true);
    ops.push(matmul(Tile::Ds, Tile::Kt, Tile::V, Tri::Full, false));
    if normalized(spec) {
        ops.push(Op::Zero(Tile::Dz));
        ops.push(key_sum(Tile::Dz));
    }
    ops.push(Op::SaveChunkState {
        s: Tile::Ds,
        z: z_of(spec, Tile::Dz),
    });
    ops
}

/// Phase (b) of additive and gated updates: the chunk's incoming state to its slot, then
/// `S = exp(G_last) S + Ds`, `z += Dz` (causal); `S += Ds`, `z += Dz` (`mask = none`).
fn accumulate(spec: &Spec, save_incoming: bool) -> Vec<BuiltOp> {
    let mut ops = vec![Op::LoadChunkState {
        s: Tile::Ds,
        z: z_of(spec, Tile::Dz),
    }];
    if save_incoming {
        ops.push(Op::SaveChunkState {
            s: Tile::S,
            z: z_of(spec, Tile::Z),
        });
    }
    if spec.has_gate() {
        ops.push(fill(Tile::G));
        ops.push(Op::DecayAll {
            dst: Tile::S,
            gates: Tile::G,
        });
    }
    ops.push(Op::AddTo {
        dst: Tile::S,
        src: Tile::Ds,
    });
    if normalized(spec) {
        ops.push(Op::AddTo {
            dst: Tile::Z,
            src: Tile::Dz,
        });
    }
    ops
}

/// Phase (b) of additive and gated updates with phase (a) inside it, per chunk in order:
///
/// ```text
/// Kt = K^T diag(exp(G_last - G));  slot <- (S, z) (causal);  S = exp(G_last) S + Kt V;  z += sum_t K_t
/// ```
///
/// Per column block of the state, each block computes the chunk's key features again (cheap
/// beside the product) and never writes a contribution: the state is written once per chunk.
fn fused_scan(spec: &Spec) -> Vec<BuiltOp> {
    let mut ops = decayed_keys(spec, false);
    if spec.mask == Mask::Causal {
        ops.push(Op::SaveChunkState {
            s: Tile::S,
            z: z_of(spec, Tile::Z),
        });
    }
    if spec.has_gate() {
        ops.push(Op::DecayAll {
            dst: Tile::S,
            gates: Tile::G,
        });
    }
    ops.push(matmul(Tile::S, Tile::Kt, Tile::V, Tri::Full, true));
    if normalized(spec) {
        ops.push(key_sum(Tile::Z));
    }
    ops
}

/// Causal additive and gated updates:
///
/// ```text
/// (a) Ds = K^T diag(exp(G_last - G)) V,  Dz = sum_t K_t             -> chunk slot
/// (b) slot <- (S, z);  S = exp(G_last) S + Ds;  z += Dz               chunks in order
/// (c) (S, z) <- slot;  the causal pass's outputs from them
/// ```
fn causal_phases(spec: &Spec) -> [Vec<BuiltOp>; 3] {
    let mut output = scores(spec, false);
    output.push(Op::LoadChunkState {
        s: Tile::S,
        z: z_of(spec, Tile::Z),
    });
    output.extend(causal_outputs(spec, Some(load(Tile::V, Input::V))));
    output.push(Op::Store(Tile::O));
    [contribution(spec), accumulate(spec, true), output]
}

/// `mask = none`: (a) each chunk's `K^T V`; (b) their sum, the final state; (c) every output
/// from the final state.
fn bidirectional_phases(spec: &Spec) -> [Vec<BuiltOp>; 3] {
    let mut output = vec![Op::ReadState {
        s: Tile::S,
        z: z_of(spec, Tile::Z),
    }];
    output.extend(output_pass(spec));
    [contribution(spec), accumulate(spec, false), output]
}

/// Delta and gated delta rules, in the WY form flash-linear-attention uses; `U = T diag(beta) V`
/// and `W = T diag(beta) diag(exp G) K` with `T = (I + strict_lower(diag(beta) L))^-1`, both by
/// forward substitution (no inverse is formed):
///
/// ```text
/// (a) L = (K K^T) ⊙ Γ;  W, U by substitution;  Kt = K^T diag(exp(G_last - G))   -> spilled
/// (b) X = U - W S   (the corrected values);  slot <- S;  S = exp(G_last) S + Kt X
/// (c) S <- slot;  O = diag(exp G) Q S + (tril(Q K^T) ⊙ Γ) X
/// ```
fn delta_phases(spec: &Spec) -> [Vec<BuiltOp>; 3] {
    [delta_intra(spec), delta_scan(spec), delta_output(spec)]
}

fn delta_intra(spec: &Spec) -> Vec<BuiltOp> {
    let gated = spec.has_gate();
    let mut ops = features(spec, Tile::K, Input::K);
    ops.push(load(Tile::Beta, Input::Beta));
    if gated {
        ops.extend(gates());
        ops.push(spill(Tile::G));
    }
    ops.push(Op::Transpose {
        src: Tile::K,
        dst: Tile::Kt,
    });
    ops.push(matmul(Tile::Kk, Tile::K, Tile::Kt, Tri::LowerOut, false));
    // Kt's last use comes first, and the values load late: fewer tiles alive at once (shared
    // memory on CUDA).
    if gated {
        ops.push(Op::DecayColsToEnd {
            dst: Tile::Kt,
            gates: Tile::G,
        });
    }
    ops.push(spill(Tile::Kt));
    ops.push(Op::Copy {
        dst: Tile::W,
        src: Tile::K,
    });
    if gated {
        ops.push(Op::DecayScores {
            dst: Tile::Kk,
            gates: Tile::G,
        });
        ops.push(Op::DecayRows {
            dst: Tile::W,
            gates: Tile::G,
        });
    }
    ops.push(load(Tile::U, Input::V));
    for dst in [Tile::W, Tile::U] {
        ops.push(Op::Solve {
            dst,
            lower: Tile::Kk,
            beta: Tile::Beta,
        });
    }
    ops.extend([Tile::W, Tile::U].map(spill));
    ops
}

fn delta_scan(spec: &Spec) -> Vec<BuiltOp> {
    let mut ops = [Tile::W, Tile::U, Tile::Kt].map(fill).to_vec();
    ops.extend([
        matmul(Tile::X, Tile::W, Tile::S, Tri::Full, false),
        Op::SubFrom {
            dst: Tile::X,
            src: Tile::U,
        },
        spill(Tile::X),
        Op::SaveChunkState {
            s: Tile::S,
            z: None,
        },
    ]);
    if spec.has_gate() {
        ops.push(fill(Tile::G));
        ops.push(Op::DecayAll {
            dst: Tile::S,
            gates: Tile::G,
        });
    }
    ops.push(matmul(Tile::S, Tile::Kt, Tile::X, Tri::Full, true));
    ops
}

fn delta_output(spec: &Spec) -> Vec<BuiltOp> {
    let mut ops = scores(spec, false);
    if spec.has_gate() {
        ops.extend(decay_scores_and_queries());
    }
    ops.push(Op::LoadChunkState {
        s: Tile::S,
        z: None,
    });
    ops.extend(outputs(Tile::X, Some(fill(Tile::X))));
    ops.push(Op::Store(Tile::O));
    ops
}

/// Every linear-attention program of a (non-softmax) spec.
///
/// With `update = momentum(..)` only the step program carries momentum: the chunk programs are
/// the additive base's. CUDA runs the step program over the whole sequence (the fused
/// recurrent form); the CPU runs momentum's chunkwise form as a runtime kernel.
pub fn linear(spec: &Spec) -> LinearPrograms {
    let passes = match (spec.mask, spec.update) {
        (Mask::None, _) => vec![state_pass(spec), output_pass(spec)],
        (Mask::Causal, Update::Additive | Update::Gated) => vec![causal_pass(spec)],
        (Mask::Causal, Update::Delta | Update::GatedDelta) => vec![delta_pass(spec)],
    };
    let [intra, scan, output] = match (spec.update, spec.mask) {
        (Update::Delta | Update::GatedDelta, _) => delta_phases(spec),
        (_, Mask::None) => bidirectional_phases(spec),
        _ => causal_phases(spec),
    };
    LinearPrograms {
        passes,
        step: step_program(spec),
        intra,
        scan,
        output,
        fused_scan: matches!(spec.update, Update::Additive | Update::Gated)
            .then(|| fused_scan(spec)),
        rpe: (spec.rpe == Rpe::Toeplitz).then(|| (rpe_features(spec), spec.mask == Mask::Causal)),
    }
}

/// `rpe = toeplitz`'s per-chunk program on CUDA: q~ (scaled), k~ and v (convolved under
/// `short_conv`) to the chunk's workspace slot, which the FFT kernel reads.
fn rpe_features(spec: &Spec) -> Vec<BuiltOp> {
    let mut ops = features(spec, Tile::Q, Input::Q);
    ops.extend(features(spec, Tile::K, Input::K));
    ops.push(load(Tile::V, Input::V));
    for t in [Tile::Q, Tile::K, Tile::V] {
        ops.push(Op::Spill {
            t,
            slot: Slot::UNASSIGNED,
        });
    }
    ops
}

/// Exact softmax attention, `o_t = sum_s softmax_s(scale q_t . k_s) v_s`, tiled by `chunk`.
pub fn softmax(spec: &Spec) -> SoftmaxProgram {
    let l2 = spec.qk_norm == QkNorm::L2;
    let mut prologue = vec![load(Tile::Q, Input::Q)];
    if l2 {
        prologue.push(Op::L2Norm {
            t: Tile::Q,
            eps: L2_EPS,
        });
    }
    prologue.push(Op::Scale {
        t: Tile::Q,
        factor: spec.scale_value(),
    });
    prologue.push(Op::SoftmaxInit {
        max: Tile::Max,
        sum: Tile::Den,
        acc: Tile::O,
    });
    let mut body = vec![load(Tile::K, Input::K)];
    if l2 {
        body.push(Op::L2Norm {
            t: Tile::K,
            eps: L2_EPS,
        });
    }
    // V is loaded after the scores, so that on CUDA (where the product reads K itself) V can
    // take K's place in shared memory: four 64 x 64 tiles instead of five, two blocks per SM
    // on sm_80.
    body.extend([
        Op::Transpose {
            src: Tile::K,
            dst: Tile::Kt,
        },
        matmul(Tile::A, Tile::Q, Tile::Kt, Tri::Full, false),
        load(Tile::V, Input::V),
    ]);
    let update = vec![
        Op::OnlineSoftmax {
            scores: Tile::A,
            max: Tile::Max,
            sum: Tile::Den,
            acc: Tile::O,
        },
        matmul(Tile::O, Tile::A, Tile::V, Tri::Full, true),
    ];
    // The running sum is at least 1 (the row maximum's own term): no epsilon.
    let epilogue = vec![
        Op::DivideRows {
            dst: Tile::O,
            den: Tile::Den,
            eps: 0.0,
        },
        Op::Store(Tile::O),
    ];
    SoftmaxProgram {
        causal: spec.mask == Mask::Causal,
        prologue,
        body,
        diagonal: vec![Op::MaskAboveDiagonal(Tile::A)],
        update,
        epilogue,
    }
}
