//! [`Plan::validate`]: the plan checks itself, so that a printer never meets a tile read before
//! it is written, a product of mismatched shapes, overlapping slots, or a launch over the limits.

use super::ir::{Access, CudaPlace, Op, Operand, Slot, Tile};
use super::resolve::{Frame, Lifetime, Memory, RoutineKind};
use super::{Linear, Plan, Program, ResolvedOp, Routine, Softmax, CUDA_THREADS};
use crate::abi::{Signature, SmemClass};
use std::collections::BTreeSet;
use std::fmt;

/// One problem of a plan: always a planner bug, never the user's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError(pub String);

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlanError {}

/// Bytes of stack one CPU routine may use for its tiles (rayon's worker threads have 2 MiB).
pub const CPU_STACK_MAX_BYTES: usize = 256 * 1024;

/// The largest grid dimension y or z of a CUDA launch.
const CUDA_GRID_YZ_MAX: usize = 65_535;

impl Plan {
    /// Checks the plan: every tile written before it is read; product and copy shapes agree;
    /// spill slots assigned, inside the workspace and disjoint; tile places disjoint; memory and
    /// launch sizes within the targets' limits. Returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<PlanError>> {
        let mut errors = self.problems.clone();
        check_program(&self.signature, &self.cpu, &mut errors, |frame, errors| {
            if frame.memory.near * 4 > CPU_STACK_MAX_BYTES {
                errors.push(err(
                    frame.kind,
                    format!(
                        "{} bytes of stack tiles, over {CPU_STACK_MAX_BYTES}",
                        frame.memory.near * 4
                    ),
                ));
            }
        });
        check_cpu_products(&self.cpu, &mut errors);
        for class in SmemClass::ALL {
            match self.cuda_for(class) {
                Some(program) => check_program(&self.signature, program, &mut errors, |f, e| {
                    check_cuda_frame(&self.signature, class, f, e)
                }),
                None => errors.push(PlanError(format!("no CUDA program for {class:?}"))),
            }
        }
        if CUDA_THREADS > 1024 || !CUDA_THREADS.is_multiple_of(32) {
            errors.push(PlanError(format!(
                "{CUDA_THREADS} threads per block: must be a multiple of 32, at most 1024"
            )));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn err(kind: RoutineKind, msg: String) -> PlanError {
    PlanError(format!("{kind:?} routine: {msg}"))
}

/// The checks every target shares, then the target's own on each frame.
fn check_program<P: Copy + PartialEq>(
    sig: &Signature,
    program: &Program<P>,
    errors: &mut Vec<PlanError>,
    target: impl Fn(&Frame<P>, &mut Vec<PlanError>),
) {
    match program {
        Program::Linear(linear) => {
            for r in routines(linear) {
                check_flow(sig, &r.frame, r.passes.iter().flatten(), errors);
                check_ops(&r.frame, r.passes.iter().flatten(), errors);
                target(&r.frame, errors);
            }
            check_slots(linear, errors);
        }
        Program::Softmax(s) => {
            check_flow(sig, &s.frame, sections(s), errors);
            check_ops(&s.frame, sections(s), errors);
            target(&s.frame, errors);
        }
    }
}

/// The CPU tile library has no transposed product: its plans keep `Kt` and transpose.
fn check_cpu_products<P: Copy>(program: &Program<P>, errors: &mut Vec<PlanError>) {
    let transposed = |op: &ResolvedOp<P>| matches!(op, Op::MatMulBt { .. });
    let found = match program {
        Program::Linear(linear) => {
            routines(linear).any(|r| r.passes.iter().flatten().any(transposed))
        }
        Program::Softmax(s) => sections(s).any(transposed),
    };
    if found {
        errors.push(PlanError(
            "a CPU routine has a transposed product (MatMulBt), which only CUDA prints".into(),
        ));
    }
}

fn routines<P>(l: &Linear<P>) -> impl Iterator<Item = &Routine<P>> {
    [
        &l.forward,
        &l.step,
        &l.phases.intra,
        &l.phases.scan,
        &l.phases.output,
    ]
    .into_iter()
    .chain(l.rpe.as_ref().map(|r| &r.features))
}

fn sections<P>(s: &Softmax<P>) -> impl Iterator<Item = &ResolvedOp<P>> + Clone {
    [&s.prologue, &s.body, &s.diagonal, &s.update, &s.epilogue]
        .into_iter()
        .flatten()
}

/// Every tile is written before it is read. A routine that carries the state starts with
/// `S` (and `z`, and momentum's `m` and `n`) defined; every other tile starts undefined.
fn check_flow<'a, P: Copy + 'a>(
    sig: &Signature,
    frame: &Frame<P>,
    ops: impl Iterator<Item = &'a ResolvedOp<P>>,
    errors: &mut Vec<PlanError>,
) {
    let mut defined = BTreeSet::new();
    if frame.kind.carries_state() {
        defined.insert(Tile::S);
        if sig.normalized {
            defined.insert(Tile::Z);
        }
        if sig.momentum {
            defined.insert(Tile::M);
            if sig.normalized {
                defined.insert(Tile::Mz);
            }
        }
    }
    for (i, op) in ops.enumerate() {
        let operands = op.operands();
        for (o, access) in &operands {
            if *access != Access::Write && !defined.contains(&o.tile) {
                errors.push(err(
                    frame.kind,
                    format!(
                        "op {i} ({}) reads `{}` before any op writes it",
                        name(op),
                        o.tile.name()
                    ),
                ));
            }
        }
        defined.extend(operands.iter().map(|(o, _)| o.tile));
    }
}

/// Shapes agree, every operand is the frame's, every slot is assigned.
fn check_ops<'a, P: Copy + PartialEq + 'a>(
    frame: &Frame<P>,
    ops: impl Iterator<Item = &'a ResolvedOp<P>>,
    errors: &mut Vec<PlanError>,
) {
    for (i, op) in ops.enumerate() {
        let mut fail =
            |msg: String| errors.push(err(frame.kind, format!("op {i} ({}): {msg}", name(op))));
        for (o, _) in op.operands() {
            if frame.get(o.tile) != Some(o) {
                fail(format!(
                    "`{}` differs from the frame's declaration",
                    o.tile.name()
                ));
            }
        }
        if let Some(msg) = shape_problem(op) {
            fail(msg);
        }
        if let Op::Spill { slot, .. } | Op::Fill { slot, .. } = op {
            if *slot == Slot::UNASSIGNED {
                fail("no slot: the tile is filled but never spilled".into());
            }
        }
    }
}

fn dims<P>(o: &Operand<P>) -> (usize, usize) {
    (o.rows.n, o.cols.n)
}

/// What is wrong with an op's shapes, if anything.
fn shape_problem<P: Copy>(op: &ResolvedOp<P>) -> Option<String> {
    let ok = match op {
        Op::MatMul { dst, a, b, .. } => {
            let ((m, k), (k2, n), (m2, n2)) = (dims(a), dims(b), dims(dst));
            k == k2 && m == m2 && n == n2
        }
        Op::MatMulBt { dst, a, b, .. } => {
            let ((m, k), (n, k2), (m2, n2)) = (dims(a), dims(b), dims(dst));
            k == k2 && m == m2 && n == n2
        }
        Op::Transpose { src, dst } => dims(src) == (dims(dst).1, dims(dst).0),
        // Same shape, not only the same length: CUDA copies whole tiles with their rows' padding.
        Op::Copy { dst, src } | Op::AddTo { dst, src } => {
            (dst.rows.n, dst.cols.n) == (src.rows.n, src.cols.n)
        }
        Op::SubFrom { dst, src } => dims(dst) == dims(src),
        Op::Solve { dst, lower, beta } => {
            lower.rows.n == lower.cols.n && dst.rows.n == lower.rows.n && beta.len() == dst.rows.n
        }
        Op::DotRows { dst, rows, vec, .. } => rows.cols.n == vec.len() && dst.len() == rows.rows.n,
        Op::RowSums { dst, src } => dst.len() == src.rows.n,
        Op::AddColSums { dst, src } => dst.len() == src.cols.n,
        Op::DivideRows { dst, den, .. } => den.len() == dst.rows.n,
        Op::Expand { src, dst, .. } => src.rows.n == dst.rows.n,
        Op::StepUpdate { s, k, v, q, o, .. } => {
            let (f, dv) = dims(s);
            k.cols.n == f && q.cols.n == f && v.cols.n == dv && o.cols.n == dv
        }
        Op::MomentumStep {
            s, m, k, v, q, o, ..
        } => {
            let (f, dv) = dims(s);
            dims(m) == (f, dv) && k.cols.n == f && q.cols.n == f && v.cols.n == dv && o.cols.n == dv
        }
        Op::MomentumKeySum { z, n, k, .. } => z.len() == n.len() && k.cols.n == z.len(),
        _ => true,
    };
    (!ok).then(|| {
        let shapes: Vec<String> = op
            .operands()
            .iter()
            .map(|(o, _)| format!("{} {}x{}", o.tile.name(), o.rows.n, o.cols.n))
            .collect();
        format!("shapes disagree: {}", shapes.join(", "))
    })
}

/// Spill slots lie inside a chunk's workspace and do not overlap.
fn check_slots<P>(l: &Linear<P>, errors: &mut Vec<PlanError>) {
    let layout = &l.phases.spills;
    let mut spans: Vec<(usize, usize, Tile)> = Vec::new();
    for (t, slot) in &layout.slots {
        spans.push((slot.offset, slot_len(l, *t, *slot), *t));
    }
    for (i, (at, len, t)) in spans.iter().enumerate() {
        if at + len > layout.work_per_chunk {
            errors.push(PlanError(format!(
                "spill slot of `{}` ends at {} past the workspace's {}",
                t.name(),
                at + len,
                layout.work_per_chunk
            )));
        }
        for (at2, len2, t2) in spans.iter().skip(i + 1) {
            if at < &(at2 + len2) && at2 < &(at + len) {
                errors.push(PlanError(format!(
                    "spill slots of `{}` and `{}` overlap",
                    t.name(),
                    t2.name()
                )));
            }
        }
    }
}

/// Floats of a spilled tile at full width: its intra-phase declaration (or scan's).
fn slot_len<P>(l: &Linear<P>, t: Tile, slot: Slot) -> usize {
    [&l.phases.intra.frame, &l.phases.scan.frame]
        .into_iter()
        .find_map(|f| f.tiles.iter().find(|o| o.tile == t))
        .map_or(0, |o| o.rows.n * slot.row_len)
}

/// CUDA: shared memory within what a block of the class may have, places disjoint, column
/// blocks that tile the value columns, grids within the launch limits.
fn check_cuda_frame(
    sig: &Signature,
    class: SmemClass,
    frame: &Frame<CudaPlace>,
    errors: &mut Vec<PlanError>,
) {
    let Memory { near, .. } = frame.memory;
    if near * 4 > class.max_block_smem() {
        errors.push(err(
            frame.kind,
            format!("{} bytes of shared memory on {class:?}", near * 4),
        ));
    }
    // Two tiles may share addresses only if they never hold values at the same time.
    let life = |t: Tile| frame.lifetimes.get(&t).copied().unwrap_or(Lifetime::ALWAYS);
    for (i, a) in frame.tiles.iter().enumerate() {
        for b in frame.tiles.iter().skip(i + 1) {
            let span = |o: &Operand<CudaPlace>| match o.place {
                CudaPlace::Shared(at) => (true, at, at + o.cuda_footprint()),
                CudaPlace::Scratch(at) => (false, at, at + o.cuda_footprint()),
            };
            let ((ma, sa, ea), (mb, sb, eb)) = (span(a), span(b));
            if ma == mb && sa < eb && sb < ea && life(a.tile).overlaps(&life(b.tile)) {
                errors.push(err(
                    frame.kind,
                    format!(
                        "tiles `{}` and `{}` overlap while both are alive",
                        a.tile.name(),
                        b.tile.name()
                    ),
                ));
            }
        }
    }
    let cb = frame.value_cols;
    if cb == 0 || !sig.dv.is_multiple_of(cb) || sig.dv / cb > CUDA_GRID_YZ_MAX {
        errors.push(err(
            frame.kind,
            format!("column block {cb} does not tile dv = {}", sig.dv),
        ));
    }
}

/// An op's variant name, for messages.
fn name<T>(op: &Op<T>) -> &'static str {
    match op {
        Op::Load { .. } => "Load",
        Op::L2Norm { .. } => "L2Norm",
        Op::FeatureMap(_) => "FeatureMap",
        Op::Expand { .. } => "Expand",
        Op::Scale { .. } => "Scale",
        Op::CumSum(_) => "CumSum",
        Op::Transpose { .. } => "Transpose",
        Op::MatMul { .. } => "MatMul",
        Op::MatMulBt { .. } => "MatMulBt",
        Op::RowSums { .. } => "RowSums",
        Op::DotRows { .. } => "DotRows",
        Op::AddColSums { .. } => "AddColSums",
        Op::DivideRows { .. } => "DivideRows",
        Op::DecayScores { .. } => "DecayScores",
        Op::DecayRows { .. } => "DecayRows",
        Op::DecayColsToEnd { .. } => "DecayColsToEnd",
        Op::DecayAll { .. } => "DecayAll",
        Op::SubFrom { .. } => "SubFrom",
        Op::Solve { .. } => "Solve",
        Op::StepUpdate { .. } => "StepUpdate",
        Op::MomentumStep { .. } => "MomentumStep",
        Op::MomentumKeySum { .. } => "MomentumKeySum",
        Op::SoftmaxInit { .. } => "SoftmaxInit",
        Op::MaskAboveDiagonal(_) => "MaskAboveDiagonal",
        Op::OnlineSoftmax { .. } => "OnlineSoftmax",
        Op::Store(_) => "Store",
        Op::Copy { .. } => "Copy",
        Op::Zero(_) => "Zero",
        Op::AddTo { .. } => "AddTo",
        Op::Spill { .. } => "Spill",
        Op::Fill { .. } => "Fill",
        Op::SaveChunkState { .. } => "SaveChunkState",
        Op::LoadChunkState { .. } => "LoadChunkState",
        Op::ReadState { .. } => "ReadState",
    }
}
