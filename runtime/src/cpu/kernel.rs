//! The ABI generated CPU kernels implement: the [`Kernel`] trait and the tasks it runs on, one
//! (batch, head) of a call ([`Task`]) or a run of its chunks in one [`Phase`] of the
//! chunk-parallel schedule ([`PhaseTask`]).

use crate::check::Problem;
use crate::cpu::isa::Isa;
use crate::cpu::schedule::Buffers;
use crate::error::Result;

/// One (batch, head) problem, inputs contiguous heads-first: `q, k` are (N, DK), `v` and `out`
/// (N, DV), `beta`, `g` (N) or empty, `s` (F, DV) and `z` (F) or empty, updated in place.
pub struct Task<'a> {
    /// Queries.
    pub q: &'a [f32],
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// Write strengths (delta updates) or empty.
    pub beta: &'a [f32],
    /// Log-decays (gated updates) or empty.
    pub g: &'a [f32],
    /// The FAVOR+ projection transposed, (DK, F) row-major (column i is w_i), shared by every
    /// (batch, head) of the call; empty for other feature maps.
    pub proj: &'a [f32],
    /// Token count.
    pub n: usize,
    /// The output.
    pub out: &'a mut [f32],
    /// The state: initial on entry, final on return.
    pub s: &'a mut [f32],
    /// The normaliser state, or empty.
    pub z: &'a mut [f32],
}

/// A phase of the chunk-parallel schedule, which `forward` uses when splitting the
/// work by (batch, head) alone would leave cores idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Per run of chunks, in parallel: each chunk's own contribution to the state (and, for
    /// delta rules, its WY factors), written to the chunk's slots.
    Intra,
    /// Per (batch, head), chunks in order: each chunk's incoming state into its slot, and the
    /// state carried on to the final state.
    Scan,
    /// Per run of chunks, in parallel: the outputs from each chunk's incoming state.
    Output,
}

/// A run of consecutive chunks of one (batch, head), for one [`Phase`]. Inputs are the whole
/// sequence, as in [`Task`]; the mutable buffers hold this run's part only (slot `j` belongs to
/// chunk `first + j`), or are empty when the phase does not use them.
pub struct PhaseTask<'a> {
    /// Queries, (N, DK).
    pub q: &'a [f32],
    /// Keys, (N, DK).
    pub k: &'a [f32],
    /// Values, (N, DV).
    pub v: &'a [f32],
    /// Write strengths, (N), or empty.
    pub beta: &'a [f32],
    /// Log-decays, (N), or empty.
    pub g: &'a [f32],
    /// The FAVOR+ projection transposed (see [`Task::proj`]), or empty.
    pub proj: &'a [f32],
    /// Token count of the whole sequence.
    pub n: usize,
    /// Index of the run's first chunk.
    pub first: usize,
    /// Chunks in the run.
    pub chunks: usize,
    /// [`Phase::Output`]: the output rows of the run's chunks.
    pub out: &'a mut [f32],
    /// [`Phase::Scan`]: the state, initial on entry and final on return (F x DV).
    pub s: &'a mut [f32],
    /// [`Phase::Scan`]: the normaliser state (F), or empty.
    pub z: &'a mut [f32],
    /// [`Phase::Output`] of `mask = none`: the final state, which every output reads.
    pub final_s: &'a [f32],
    /// As `final_s`, for `z`.
    pub final_z: &'a [f32],
    /// Per chunk, F x DV: its own contribution after [`Phase::Intra`], its incoming state after
    /// [`Phase::Scan`].
    pub slot_s: &'a mut [f32],
    /// As `slot_s`, for `z` (F per chunk), or empty.
    pub slot_z: &'a mut [f32],
    /// Per chunk, [`Recurrent::WORK`] floats of tiles spilled by one phase for a later one.
    pub work: &'a mut [f32],
}

/// A generated kernel: a program over a whole sequence, run per (batch, head). Every spec has one.
pub trait Kernel {
    /// The chunk (or softmax tile) length C.
    const CHUNK: usize;
    /// Runs the chunk program over `task.n` tokens.
    fn forward<I: Isa>(isa: I, task: Task<'_>) -> Result<()>;
    /// A whole call, scheduled over (batch, head) or chunks: `schedule::run_forward::<Self>`
    /// (`run_recurrent` for linear attention). Generated as a plain, non-generic function, so
    /// that the kernels are compiled (and optimised) in the crate that declares the spec, not
    /// in each crate that calls it: a dev build can optimise the specs' crate alone.
    fn run_all(p: &Problem, dims: [usize; 3], bufs: &mut Buffers) -> Result<Vec<f32>>;
}

/// A generated linear-attention kernel: besides the chunk program, the step program for one
/// token and the three phases of the chunk-parallel schedule. Exact softmax attention has
/// neither, so its kernel implements [`Kernel`] only and no schedule can ask it for them.
pub trait Recurrent: Kernel {
    /// Floats of one chunk's `work` slot in the chunk-parallel schedule.
    const WORK: usize;
    /// Whether [`Phase::Scan`] is elementwise (additive and gated updates), so the chunk-parallel
    /// schedule pays off; delta rules run two products per chunk in the sequential scan.
    const LIGHT_SCAN: bool;
    /// Runs the step program for one token (`task.n == 1`).
    fn step<I: Isa>(isa: I, task: Task<'_>) -> Result<()>;
    /// One token on every (batch, head), `schedule::run_step::<Self>`; non-generic for the
    /// reason of [`Kernel::run_all`].
    fn run_step_all(p: &Problem, dims: [usize; 3], bufs: &mut Buffers) -> Result<Vec<f32>>;
    /// Runs one phase of the chunk-parallel schedule over a run of chunks.
    fn phase<I: Isa>(isa: I, phase: Phase, task: PhaseTask<'_>) -> Result<()>;
}
