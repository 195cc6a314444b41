//! The kernel plan: a spec lowered to programs of tile operations, resolved for each target.
//!
//! The plan is the one place that knows tile geometry. [`build`] writes each program from named
//! sub-sequences of [`Op`]s over bare tile names; [`resolve`] gives every operand its shape, live
//! rows and columns, and memory place on each target, and every spill its slot; [`Plan::validate`]
//! checks the result. The emitters (`cpu`, `cuda`) are printers of resolved ops.
//!
//! A linear-attention spec has a sequential chunk program (one pass per chunk when causal, two
//! passes when not: the whole-sequence state, then every output), a step program (one token, the
//! recurrent form) and the same chunk program in three phases for chunk-parallel schedules.
//! Exact softmax has one tiled program. [`Program`] makes these the only two shapes a plan has.

pub mod build;
pub mod ir;
pub mod resolve;
mod validate;

pub use build::{expansion, L2_EPS, NORMALIZER_EPS};
pub use ir::{
    Access, CpuPlace, CudaPlace, Dim, DimOf, Expansion, Extent, Input, Op, Operand, Slot, Tile,
};
pub use resolve::{
    column_block, Cpu, Cuda, Frame, Lifetime, Memory, RoutineKind, SpillLayout, Target,
    CUDA_THREADS, SLOT_ALIGN, STACK_TILE_MAX,
};
pub use validate::PlanError;

use crate::abi::{BackwardAlgorithm, BackwardPlan, Layout, Signature, SmemClass};
use crate::spec::{
    BinOp, BinaryFn, CmpOp, Cond, Expr, FeatureMap, Normalize, Precision, Spec, UnaryFn,
};
use build::BuiltOp;

/// A resolved op on a target whose places are `P`.
pub type ResolvedOp<P> = Op<Operand<P>>;

/// One routine on a target: its frame and its passes over the chunks (each pass a loop over
/// the chunks running its ops).
#[derive(Clone, Debug, PartialEq)]
pub struct Routine<P> {
    /// Geometry and tiles.
    pub frame: Frame<P>,
    /// The passes, in order.
    pub passes: Vec<Vec<ResolvedOp<P>>>,
}

/// The chunk-parallel form of the chunk program (flash-linear-attention's strategy), so chunks
/// run in parallel and only a short scan is sequential:
///
/// - `intra`: per (batch, head, chunk), in parallel: feature maps, the chunk's own contribution
///   to the state (and for delta rules the WY factors), spilled to the workspace;
/// - `scan`: per (batch, head) (and on CUDA per column block of the state), chunks in order:
///   the incoming state of every chunk (saved), then the state after it;
/// - `output`: per (batch, head, chunk), in parallel: the outputs from the chunk's incoming
///   state (or, for `mask = none`, from the final state).
#[derive(Clone, Debug, PartialEq)]
pub struct Phases<P> {
    /// Phase (a).
    pub intra: Routine<P>,
    /// Phase (b).
    pub scan: Routine<P>,
    /// Phase (c).
    pub output: Routine<P>,
    /// Where spilled tiles live in a chunk's `work` slot.
    pub spills: SpillLayout,
    /// Whether the scan is elementwise (no products): chunk parallelism then pays off even
    /// for few heads. Delta rules carry two products per chunk through it.
    pub light_scan: bool,
}

/// Linear attention's programs on one target.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear<P> {
    /// The sequential chunk program, per (batch, head).
    pub forward: Routine<P>,
    /// The step program: one token.
    pub step: Routine<P>,
    /// The chunk-parallel form.
    pub phases: Phases<P>,
    /// `rpe = toeplitz` (CUDA).
    pub rpe: Option<Rpe<P>>,
}

/// `rpe = toeplitz` on CUDA: a per-chunk program spills the features and values, then the
/// printer's FFT kernel convolves them with the Toeplitz weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Rpe<P> {
    /// q~, k~ and v to the chunk's slot.
    pub features: Routine<P>,
    /// Where they are spilled.
    pub spills: SpillLayout,
    /// `mask = causal`: only offsets s - t <= 0 are weighted.
    pub causal: bool,
}

/// Exact softmax attention as a tiled program (FlashAttention's method): for each query tile
/// `prologue`; for each key tile (up to the diagonal when causal) `body`, then on the diagonal
/// tile `diagonal`, then `update`; then `epilogue`. Nothing N x N is ever materialised.
#[derive(Clone, Debug, PartialEq)]
pub struct Softmax<P> {
    /// Geometry and tiles.
    pub frame: Frame<P>,
    /// Whether query tile i sees key tiles 0..=i only (with the diagonal tile masked).
    pub causal: bool,
    /// Per query tile, before its key tiles.
    pub prologue: Vec<ResolvedOp<P>>,
    /// Per key tile.
    pub body: Vec<ResolvedOp<P>>,
    /// On the diagonal key tile only, after `body`.
    pub diagonal: Vec<ResolvedOp<P>>,
    /// Per key tile, after the diagonal ops.
    pub update: Vec<ResolvedOp<P>>,
    /// Per query tile, after its key tiles.
    pub epilogue: Vec<ResolvedOp<P>>,
}

/// A spec's programs on one target: linear attention or exact softmax, nothing in between.
#[derive(Clone, Debug, PartialEq)]
pub enum Program<P> {
    /// Linear attention (every update rule and feature map but softmax).
    Linear(Box<Linear<P>>),
    /// Exact softmax attention.
    Softmax(Box<Softmax<P>>),
}

/// The kernel plan of one spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Sizes and inputs, shared by every target and the runtime.
    pub signature: Signature,
    /// The query scale (also a field of the `Scale` ops).
    pub scale: f32,
    /// The elementwise feature map as an expression of `x` (`x` itself for the maps that are
    /// not elementwise): the one definition both printers lower.
    pub phi: Expr,
    /// phi'(x) for the backward pass, differentiated symbolically and constant-folded at build
    /// time (`None` for taylor2, dpfp, FAVOR+ and softmax, whose vector-Jacobian products are
    /// runtime primitives).
    pub dphi: Option<Expr>,
    /// phi is a closure whose printed derivative would be too large
    /// ([`crate::deriv::MAX_DERIVATIVE_NODES`]): phi' is evaluated with dual numbers instead.
    pub dphi_by_dual_numbers: bool,
    /// How the CPU's backward pass runs and what it saves (training).
    pub backward: BackwardPlan,
    /// The CPU's programs.
    pub cpu: Program<CpuPlace>,
    /// CUDA's programs, one per shared-memory class, in [`SmemClass::ALL`]'s order: each
    /// class's tiles are placed for its budgets, so a kernel that fits two blocks per SM on
    /// sm_90 may split its value columns, or take one block per SM, on sm_80.
    pub cuda: Vec<(SmemClass, Program<CudaPlace>)>,
    /// The arithmetic of CUDA's products on tensor cores.
    pub precision: Precision,
    /// Problems found while resolving (planner bugs; reported by [`Plan::validate`]).
    problems: Vec<PlanError>,
}

impl Plan {
    /// Plans a validated spec: every spec that validates has a kernel.
    pub fn new(spec: &Spec) -> Plan {
        let signature = signature(spec);
        let mut problems = Vec::new();
        let classes = SmemClass::ALL.map(|class| Cuda { class });
        let (cpu, cuda) = if spec.feature_map == FeatureMap::Softmax {
            let program = build::softmax(spec);
            let cuda = classes
                .iter()
                .map(|c| {
                    let p = softmax(c, &signature, &program, &mut problems);
                    (c.class, Program::Softmax(Box::new(p)))
                })
                .collect();
            (
                Program::Softmax(Box::new(softmax(&Cpu, &signature, &program, &mut problems))),
                cuda,
            )
        } else {
            let programs = build::linear(spec);
            let cuda = classes
                .iter()
                .map(|c| {
                    let p = linear(c, &signature, &programs, &mut problems);
                    (c.class, Program::Linear(Box::new(p)))
                })
                .collect();
            (
                Program::Linear(Box::new(linear(&Cpu, &signature, &programs, &mut problems))),
                cuda,
            )
        };
        let dphi = crate::deriv::feature_map_derivative(&spec.feature_map);
        let backward = backward_plan(spec);
        Plan {
            backward,
            signature,
            scale: spec.scale_value(),
            phi: elementwise(&spec.feature_map),
            dphi_by_dual_numbers: dphi.is_none()
                && matches!(spec.feature_map, FeatureMap::Closure(_)),
            dphi,
            cpu,
            cuda,
            precision: spec.precision,
            problems,
        }
    }

    /// CUDA's program for GPUs of `class`.
    pub fn cuda_for(&self, class: SmemClass) -> Option<&Program<CudaPlace>> {
        self.cuda.iter().find(|(c, _)| *c == class).map(|(_, p)| p)
    }

    /// Whether the spec is exact softmax attention (no recurrent state, `forward` only).
    pub fn is_softmax(&self) -> bool {
        matches!(self.cpu, Program::Softmax(_))
    }
}

/// The signature of a spec.
pub fn signature(spec: &Spec) -> Signature {
    Signature {
        layout: spec.layout,
        chunk: spec.chunk,
        dk: spec.head_dim,
        dv: spec.value_dim,
        f: spec.feature_dim(),
        normalized: spec.normalize == Normalize::Sum,
        uses_beta: spec.has_beta(),
        uses_gates: spec.has_gate(),
        uses_projection: matches!(spec.feature_map, FeatureMap::Favor { .. }),
        heads: spec.heads,
        conv: spec.short_conv.unwrap_or(0),
        momentum: spec.momentum.is_some(),
        rpe: spec.rpe == crate::spec::Rpe::Toeplitz,
    }
}

/// The backward pass of `spec`: FlashAttention-2 tiles for softmax; chunkwise products for
/// every linear update (the delta rules' WY system recomputed per chunk). One state is saved per
/// chunk and everything else recomputed (features, scores, the delta rules' U), so what is held
/// beyond the inputs grows with F x DV / C per token: a quarter of the inputs' size for an
/// elementwise map at DK = DV = C = 64, and the recomputation of taylor2's wide features costs
/// no memory.
fn backward_plan(spec: &Spec) -> BackwardPlan {
    if spec.feature_map == FeatureMap::Softmax {
        return BackwardPlan {
            algorithm: BackwardAlgorithm::FlashTiles,
            state_stride: 0,
            state_floats: 0,
        };
    }
    BackwardPlan {
        algorithm: BackwardAlgorithm::Chunkwise,
        state_stride: spec.chunk,
        state_floats: spec.feature_dim() * spec.value_dim,
    }
}

/// The passes with every load marked `in_place` that can read its input where it lies: a
/// chunk tile (not a per-token vector) that no later op of its pass writes, that no earlier op
/// of its pass reads (that would be the previous chunk's rows), and that later passes write
/// before they read.
fn in_place_loads(passes: &[Vec<BuiltOp>]) -> Vec<Vec<BuiltOp>> {
    let touches = |op: &BuiltOp, t: Tile, how: fn(&Access) -> bool| {
        op.operands().iter().any(|(u, a)| *u == t && how(a))
    };
    let writes = |a: &Access| !matches!(a, Access::Read);
    let reads = |a: &Access| !matches!(a, Access::Write);
    let mut out = passes.to_vec();
    for (p, ops) in passes.iter().enumerate() {
        for (i, op) in ops.iter().enumerate() {
            let Op::Load { dst, src, .. } = *op else {
                continue;
            };
            let later_pass_reads_first = passes[p + 1..].iter().any(|later| {
                later
                    .iter()
                    .find(|o| touches(o, dst, |_| true))
                    .is_some_and(|o| touches(o, dst, reads))
            });
            let ok = !src.is_scalar()
                && !ops[i + 1..].iter().any(|o| touches(o, dst, writes))
                && !ops[..i].iter().any(|o| touches(o, dst, |_| true))
                && !later_pass_reads_first;
            out[p][i] = Op::Load {
                dst,
                src,
                in_place: ok,
            };
        }
    }
    out
}

/// Whether q, k, v, o are tokens-first.
pub fn tokens_first(sig: &Signature) -> bool {
    sig.layout == Layout::Bnhd
}

/// Products read a key tile in place of its transpose: for each `Transpose { src, dst }`, the
/// products that read `dst` as their right operand before anything else reads it become
/// [`Op::MatMulBt`] over `src`, and the transpose moves down to that other reader, or goes when
/// there is none; only while `src` stays unchanged over the moved span, and `dst` is not read
/// before the transpose (a loop-carried value). A transpose that goes saves its tile and its
/// pass; one that moves keeps its tile alive for a shorter span. `sections` are the program's op
/// lists in program order; the result keeps their boundaries.
pub fn fold_transposes(sections: &[Vec<BuiltOp>]) -> Vec<Vec<BuiltOp>> {
    let all: Vec<&BuiltOp> = sections.iter().flatten().collect();
    let touches = |op: &BuiltOp, t: Tile| op.operands().iter().any(|(x, _)| *x == t);
    // Per op: the tile a product reads transposed; the transposes moved to just before it.
    let mut reads: Vec<Option<Tile>> = vec![None; all.len()];
    let mut moved_here: Vec<Vec<BuiltOp>> = vec![Vec::new(); all.len()];
    let mut drop = vec![false; all.len()];
    for (i, op) in all.iter().enumerate() {
        let Op::Transpose { src, dst } = **op else {
            continue;
        };
        let uses: Vec<usize> = (0..all.len())
            .filter(|&j| j != i && touches(all[j], dst))
            .collect();
        if uses.iter().any(|&j| j < i) {
            continue;
        }
        let right_operand_only = |j: usize| matches!(*all[j], Op::MatMul { a, b, dst: d, .. } if b == dst && a != dst && d != dst);
        let products: Vec<usize> = uses
            .iter()
            .copied()
            .take_while(|&j| right_operand_only(j))
            .collect();
        let Some(&last_product) = products.last() else {
            continue;
        };
        let other = uses.get(products.len()).copied();
        // `src` must hold the same values until the last product, or until the moved transpose.
        let end = other.unwrap_or(last_product);
        let src_unchanged = all[i + 1..end].iter().all(|o| {
            o.operands()
                .iter()
                .all(|(t, access)| *t != src || *access == Access::Read)
        });
        if !src_unchanged {
            continue;
        }
        drop[i] = true;
        products.iter().for_each(|&j| reads[j] = Some(src));
        if let Some(j) = other {
            moved_here[j].push((*op).clone());
        }
    }
    // Rebuilt section by section; `first` is the flat index of a section's first op.
    let mut first = 0;
    sections
        .iter()
        .map(|ops| {
            let mut out = Vec::with_capacity(ops.len());
            for (i, op) in (first..).zip(ops) {
                out.append(&mut moved_here[i]);
                match (op, reads[i]) {
                    _ if drop[i] => {}
                    (
                        &Op::MatMul {
                            dst,
                            a,
                            tri,
                            accumulate,
                            ..
                        },
                        Some(b),
                    ) => out.push(Op::MatMulBt {
                        dst,
                        a,
                        b,
                        tri,
                        accumulate,
                    }),
                    _ => out.push(op.clone()),
                }
            }
            first += ops.len();
            out
        })
        .collect()
}

/// A routine: its frame on target `T` and its passes resolved against it.
fn routine<T: Target>(
    target: &T,
    sig: &Signature,
    kind: RoutineKind,
    passes: &[Vec<BuiltOp>],
    problems: &mut Vec<PlanError>,
) -> Routine<T::Place> {
    let folded;
    let passes = if T::READS_TRANSPOSED {
        folded = fold_transposes(passes);
        &folded[..]
    } else {
        passes
    };
    let frame = resolve::frame(
        target,
        sig,
        kind,
        passes.iter().flatten(),
        &loops(kind, passes),
    );
    let marked;
    let passes = if T::LOADS_IN_PLACE {
        marked = in_place_loads(passes);
        &marked[..]
    } else {
        passes
    };
    let passes = passes
        .iter()
        .map(|ops| {
            resolve::resolve_ops(&frame, ops).unwrap_or_else(|e| {
                problems.push(PlanError(e));
                Vec::new()
            })
        })
        .collect();
    Routine { frame, passes }
}

/// The op ranges a routine's kernel repeats: every pass per chunk (the sequential forward), the
/// whole body per chunk (the scan, the step program over a sequence, and the per-chunk kernels,
/// whose blocks loop over chunks with stride gridDim.x).
fn loops(kind: RoutineKind, passes: &[Vec<BuiltOp>]) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    let per_pass = passes.iter().map(|p| {
        start += p.len();
        start - p.len()..start
    });
    match kind {
        RoutineKind::Forward => per_pass.collect(),
        _ => std::iter::once(0..passes.iter().map(Vec::len).sum()).collect(),
    }
}

fn linear<T: Target>(
    target: &T,
    sig: &Signature,
    p: &build::LinearPrograms,
    problems: &mut Vec<PlanError>,
) -> Linear<T::Place> {
    // A target that fuses phase (a) into the scan runs no phase (a) at all.
    let (intra_ops, scan_ops): (&[BuiltOp], &[BuiltOp]) = match &p.fused_scan {
        Some(fused) if T::FUSED_SCAN => (&[], fused),
        _ => (&p.intra, &p.scan),
    };
    let spilled: Vec<BuiltOp> = intra_ops.iter().chain(scan_ops).cloned().collect();
    let spills = SpillLayout::new(sig, &spilled);
    let phase = |kind, ops: &[BuiltOp], problems: &mut Vec<PlanError>| {
        routine(target, sig, kind, &[spills.assign(ops)], problems)
    };
    let intra = phase(RoutineKind::Intra, intra_ops, problems);
    let scan = phase(RoutineKind::Scan, scan_ops, problems);
    let output = phase(RoutineKind::Output, &p.output, problems);
    let light_scan = !scan_ops
        .iter()
        .any(|op| matches!(op, Op::MatMul { .. } | Op::MatMulBt { .. }));
    Linear {
        forward: routine(target, sig, RoutineKind::Forward, &p.passes, problems),
        step: routine(
            target,
            sig,
            RoutineKind::Step,
            std::slice::from_ref(&p.step),
            problems,
        ),
        phases: Phases {
            intra,
            scan,
            output,
            spills,
            light_scan,
        },
        rpe: p.rpe.as_ref().map(|(ops, causal)| {
            let spills = SpillLayout::new(sig, ops);
            let ops = spills.assign(ops);
            Rpe {
                features: routine(target, sig, RoutineKind::Intra, &[ops], problems),
                spills,
                causal: *causal,
            }
        }),
    }
}

fn softmax<T: Target>(
    target: &T,
    sig: &Signature,
    p: &build::SoftmaxProgram,
    problems: &mut Vec<PlanError>,
) -> Softmax<T::Place> {
    let written = [&p.prologue, &p.body, &p.diagonal, &p.update, &p.epilogue].map(|s| s.to_vec());
    // (fold_transposes keeps the five sections; were it not to, the program stays unfolded.)
    let sections: [Vec<BuiltOp>; 5] = if T::READS_TRANSPOSED {
        fold_transposes(&written).try_into().unwrap_or(written)
    } else {
        written
    };
    let [prologue, body, diagonal, update, epilogue] = &sections;
    // Query tiles repeat everything; per query tile, the key-tile loop repeats body, diagonal
    // and update.
    let all = sections.iter().map(Vec::len).sum();
    let keys = prologue.len()..prologue.len() + body.len() + diagonal.len() + update.len();
    let frame = resolve::frame(
        target,
        sig,
        RoutineKind::Softmax,
        sections.iter().flatten(),
        &[0..all, keys],
    );
    let mut resolve = |ops: &[BuiltOp]| {
        resolve::resolve_ops(&frame, ops).unwrap_or_else(|e| {
            problems.push(PlanError(e));
            Vec::new()
        })
    };
    let (prologue, body, diagonal) = (resolve(prologue), resolve(body), resolve(diagonal));
    let (update, epilogue) = (resolve(update), resolve(epilogue));
    Softmax {
        frame,
        causal: p.causal,
        prologue,
        body,
        diagonal,
        update,
        epilogue,
    }
}

/// The elementwise feature maps as expressions of `x` (the closure language's AST), so one
/// lowering per printer serves built-in maps and user closures alike.
pub fn elementwise(map: &FeatureMap) -> Expr {
    let x = || Box::new(Expr::Var);
    let lit = |v: f32| Box::new(Expr::Lit(v));
    let relu = || Box::new(Expr::Binary2(BinaryFn::Max, x(), lit(0.0)));
    match map {
        FeatureMap::EluPlusOne => Expr::If {
            cond: Box::new(Cond {
                op: CmpOp::Gt,
                lhs: Expr::Var,
                rhs: Expr::Lit(0.0),
            }),
            then: Box::new(Expr::Binary(BinOp::Add, x(), lit(1.0))),
            otherwise: Box::new(Expr::Unary(UnaryFn::Exp, x())),
        },
        FeatureMap::Relu => *relu(),
        FeatureMap::SquaredRelu => Expr::Binary(BinOp::Mul, relu(), relu()),
        FeatureMap::Sigmoid => Expr::Binary(
            BinOp::Div,
            lit(1.0),
            Box::new(Expr::Binary(
                BinOp::Add,
                lit(1.0),
                Box::new(Expr::Unary(UnaryFn::Exp, Box::new(Expr::Neg(x())))),
            )),
        ),
        FeatureMap::Closure(c) => c.body.clone(),
        FeatureMap::Identity
        | FeatureMap::Taylor2
        | FeatureMap::Dpfp { .. }
        | FeatureMap::Favor { .. }
        | FeatureMap::Softmax => Expr::Var,
    }
}

#[cfg(test)]
mod tests;
