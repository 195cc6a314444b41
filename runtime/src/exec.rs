//! Running generated kernels: argument checks, layout conversion, the (batch, head) split over
//! rayon, and the ISA dispatch through `#[target_feature]` trampolines.

use crate::error::{Error, Result};
use crate::isa::{Avx2, Avx512, CpuIsa, Isa, Portable};
use attnc_codegen::abi::Layout;
use dfdx::shapes::{HasShape, Shape, SliceShape};
use dfdx::tensor::{Cpu, Tensor};
use dfdx::tensor_ops::ReshapeTo;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

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

/// A phase of the chunk-parallel schedule (DESIGN §5), which `forward` uses when splitting the
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
    /// Per chunk, [`Kernel::WORK`] floats of tiles spilled by one phase for a later one.
    pub work: &'a mut [f32],
}

/// A generated kernel: the chunk program over a whole sequence, the step program for one token
/// and the three phases of the chunk-parallel schedule.
pub trait Kernel {
    /// The chunk length C.
    const CHUNK: usize;
    /// Floats of one chunk's `work` slot in the chunk-parallel schedule.
    const WORK: usize;
    /// Whether [`Kernel::phase`] is implemented (every spec but softmax).
    const PHASED: bool;
    /// Whether [`Phase::Scan`] is elementwise (additive and gated updates), so the chunk-parallel
    /// schedule pays off; delta rules run two products per chunk in the sequential scan.
    const LIGHT_SCAN: bool;
    /// Runs the chunk program over `task.n` tokens.
    fn forward<I: Isa>(isa: I, task: Task<'_>) -> Result<()>;
    /// Runs the step program for one token (`task.n == 1`).
    fn step<I: Isa>(isa: I, task: Task<'_>) -> Result<()>;
    /// Runs one phase of the chunk-parallel schedule over a run of chunks.
    fn phase<I: Isa>(isa: I, phase: Phase, task: PhaseTask<'_>) -> Result<()>;
}

/// One call of a kernel program.
enum Job<'a> {
    Forward(Task<'a>),
    Step(Task<'a>),
    Phase(Phase, PhaseTask<'a>),
}

/// `inline(always)`: it must be compiled inside the trampolines' target features, like the
/// kernels it calls (else every intrinsic becomes a call).
#[inline(always)]
fn run_program<K: Kernel, I: Isa>(isa: I, job: Job<'_>) -> Result<()> {
    match job {
        Job::Forward(task) => K::forward(isa, task),
        Job::Step(task) => K::step(isa, task),
        Job::Phase(phase, task) => K::phase(isa, phase, task),
    }
}

// The trampolines: the generic kernels are `#[inline(always)]`, so they are compiled here with
// these target features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
fn run_avx512<K: Kernel>(isa: Avx512, job: Job<'_>) -> Result<()> {
    run_program::<K, _>(isa, job)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<K: Kernel>(isa: Avx2, job: Job<'_>) -> Result<()> {
    run_program::<K, _>(isa, job)
}

/// The portable variant, outlined like the others: `dispatch` reaches it from three arms, and
/// inlined there it was compiled three times (40% of the LLVM IR of a crate of 10 specs).
#[inline(never)]
fn run_portable<K: Kernel>(job: Job<'_>) -> Result<()> {
    run_program::<K, _>(Portable, job)
}

/// Runs one kernel program with the given ISA variant.
fn dispatch<K: Kernel>(isa: CpuIsa, job: Job<'_>) -> Result<()> {
    match isa {
        // SAFETY: the marker exists only if the CPU has the features the trampoline enables.
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx512 => match Avx512::detect() {
            Some(m) => unsafe { run_avx512::<K>(m, job) },
            None => run_portable::<K>(job),
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx2 => match Avx2::detect() {
            Some(m) => unsafe { run_avx2::<K>(m, job) },
            None => run_portable::<K>(job),
        },
        _ => run_portable::<K>(job),
    }
}

/// How `forward` spreads its work over the threads of the current rayon pool.
///
/// ```
/// use attnc_runtime::exec::Schedule;
/// // Force the chunk-parallel schedule for the calls inside the closure, on this thread.
/// let used = Schedule::Chunks.run_with(Schedule::selected);
/// assert_eq!(used, Schedule::Chunks);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Heads when every thread gets an even share of (batch, head) problems, else chunks for
    /// additive and gated updates (the default; delta rules keep heads, their scan being
    /// sequential products).
    Auto,
    /// One task per (batch, head), each running the sequential chunk program.
    Heads,
    /// The chunk-parallel schedule: [`Phase::Intra`] over runs of chunks in parallel, a
    /// [`Phase::Scan`] per (batch, head), then [`Phase::Output`] in parallel. Needs scratch of
    /// about F x DV floats per chunk (plus the spilled tiles of delta rules). Softmax attention
    /// has no phases and always runs by heads.
    Chunks,
}

impl Schedule {
    /// Runs `f` with this schedule for every `forward` called from this thread inside it.
    pub fn run_with<T>(self, f: impl FnOnce() -> T) -> T {
        let previous = SCHEDULE.with(|s| s.replace(Some(self)));
        let result = f();
        SCHEDULE.with(|s| s.set(previous));
        result
    }

    /// The schedule of this thread: the [`Schedule::run_with`] override, else
    /// `ATTNC_CPU_SCHEDULE=heads|chunks|auto` (read once), else [`Schedule::Auto`].
    pub fn selected() -> Schedule {
        if let Some(s) = SCHEDULE.with(|s| s.get()) {
            return s;
        }
        static FROM_ENV: OnceLock<Schedule> = OnceLock::new();
        *FROM_ENV.get_or_init(|| {
            match std::env::var("ATTNC_CPU_SCHEDULE")
                .as_deref()
                .map(str::trim)
            {
                Ok("heads") => Schedule::Heads,
                Ok("chunks") => Schedule::Chunks,
                _ => Schedule::Auto,
            }
        })
    }

    /// Whether a call of `bh` (batch, head) problems of `chunks` chunks each runs chunk-parallel.
    fn by_chunks<K: Kernel>(self, bh: usize, chunks: usize) -> bool {
        let threads = rayon::current_num_threads();
        match self {
            _ if !K::PHASED || chunks < 2 => false,
            Schedule::Heads => false,
            Schedule::Chunks => true,
            // Heads keep the sequential program (no scratch, no spills): use chunks only when
            // the scan is light, under 3/4 of the threads would be busy on average and every
            // thread gets chunks.
            Schedule::Auto if !K::LIGHT_SCAN => false,
            Schedule::Auto => {
                let rounds = bh.div_ceil(threads.max(1));
                threads > 1 && 4 * bh < 3 * rounds * threads && chunks >= 2 * threads
            }
        }
    }
}

thread_local! {
    static SCHEDULE: std::cell::Cell<Option<Schedule>> = const { std::cell::Cell::new(None) };
}

fn finite_check_flag() -> &'static AtomicBool {
    static FLAG: OnceLock<AtomicBool> = OnceLock::new();
    FLAG.get_or_init(|| {
        let on = std::env::var("ATTNC_CHECK_FINITE").is_ok_and(|v| v == "1" || v == "true");
        AtomicBool::new(on)
    })
}

/// Turns checking of inputs for NaN and infinity on or off for the whole process (default off,
/// or on when `ATTNC_CHECK_FINITE=1`). With it on, a non-finite input returns
/// [`Error::NonFinite`] instead of propagating into the outputs.
pub fn set_finite_check(on: bool) {
    finite_check_flag().store(on, Ordering::Relaxed);
}

/// Whether inputs are checked for NaN and infinity.
pub fn finite_check() -> bool {
    finite_check_flag().load(Ordering::Relaxed)
}

/// The sizes of one call, taken from `q`, against which every other argument is checked.
#[derive(Clone, Copy, Debug)]
pub struct Problem {
    /// Batch size.
    pub batch: usize,
    /// Head count.
    pub heads: usize,
    /// Token count.
    pub tokens: usize,
    /// Axis order of q, k, v, o, beta, g.
    pub layout: Layout,
}

impl Problem {
    /// Reads the sizes from `q`'s shape, in the given layout.
    pub fn from_q(layout: Layout, q_dims: [usize; 4]) -> Result<Problem> {
        let [b, x, y, _] = q_dims;
        let (heads, tokens) = match layout {
            Layout::Bhnd => (x, y),
            Layout::Bnhd => (y, x),
        };
        if tokens == 0 {
            return Err(Error::EmptySequence);
        }
        Ok(Problem {
            batch: b,
            heads,
            tokens,
            layout,
        })
    }

    /// A one-token problem (decoding).
    pub fn step(batch: usize, heads: usize) -> Problem {
        Problem {
            batch,
            heads,
            tokens: 1,
            layout: Layout::Bhnd,
        }
    }

    fn axes(&self) -> (&'static str, &'static str) {
        match self.layout {
            Layout::Bhnd => ("(B, H, N, D)", "(B, H, N)"),
            Layout::Bnhd => ("(B, N, H, D)", "(B, N, H)"),
        }
    }

    fn bhn(&self) -> [usize; 3] {
        match self.layout {
            Layout::Bhnd => [self.batch, self.heads, self.tokens],
            Layout::Bnhd => [self.batch, self.tokens, self.heads],
        }
    }

    /// Checks the shape of a (B, H, N, D)-or-(B, N, H, D) token tensor against the problem.
    pub fn check_tokens(&self, arg: &'static str, got: [usize; 4], d: usize) -> Result<()> {
        let [x, y, z] = self.bhn();
        mismatch(arg, vec![x, y, z, d], &got, self.axes().0)
    }

    /// Checks the shape of a per-token (B, H, N)-or-(B, N, H) tensor against the problem.
    pub fn check_scalars(&self, arg: &'static str, got: [usize; 3]) -> Result<()> {
        mismatch(arg, self.bhn().to_vec(), &got, self.axes().1)
    }

    /// Checks the shape of a per-head (B, H, D) decoding input against the problem.
    pub fn check_heads(&self, arg: &'static str, got: [usize; 3], d: usize) -> Result<()> {
        mismatch(arg, vec![self.batch, self.heads, d], &got, "(B, H, D)")
    }

    /// Checks the shape of a per-head (B, H) decoding input (beta_t, g_t) against the problem.
    pub fn check_head_scalars(&self, arg: &'static str, got: [usize; 2]) -> Result<()> {
        mismatch(arg, vec![self.batch, self.heads], &got, "(B, H)")
    }

    /// Checks a (B, H, N, D)-or-(B, N, H, D) tensor against the problem and returns its data
    /// heads first and contiguous.
    pub fn gather_tokens<S: Shape<Concrete = [usize; 4]> + SliceShape<Probe4>>(
        &self,
        arg: &'static str,
        t: &Tensor<S, f32, Cpu>,
        d: usize,
    ) -> Result<Vec<f32>> {
        self.check_tokens(arg, t.shape().concrete(), d)?;
        let data = checked(arg, read_4d(t))?;
        Ok(self.heads_first(data, d))
    }

    /// Checks a per-token (B, H, N)-or-(B, N, H) tensor and returns it heads first.
    pub fn gather_scalars<S: Shape<Concrete = [usize; 3]>>(
        &self,
        arg: &'static str,
        t: &Tensor<S, f32, Cpu>,
    ) -> Result<Vec<f32>> {
        self.check_scalars(arg, t.shape().concrete())?;
        let data = checked(arg, t.as_vec())?;
        Ok(self.heads_first(data, 1))
    }

    /// Checks a per-head (B, H, D) decoding input.
    pub fn gather_heads<S: Shape<Concrete = [usize; 3]>>(
        &self,
        arg: &'static str,
        t: &Tensor<S, f32, Cpu>,
        d: usize,
    ) -> Result<Vec<f32>> {
        self.check_heads(arg, t.shape().concrete(), d)?;
        checked(arg, contiguous_data(t))
    }

    /// Checks a per-head (B, H) decoding input (beta_t, g_t).
    pub fn gather_head_scalars<S: Shape<Concrete = [usize; 2]>>(
        &self,
        arg: &'static str,
        t: &Tensor<S, f32, Cpu>,
    ) -> Result<Vec<f32>> {
        self.check_head_scalars(arg, t.shape().concrete())?;
        checked(arg, contiguous_data(t))
    }

    /// (B, N, H, D) -> (B, H, N, D); identity for heads-first layouts.
    fn heads_first(&self, data: Vec<f32>, d: usize) -> Vec<f32> {
        match self.layout {
            Layout::Bhnd => data,
            Layout::Bnhd => permute_middle(&data, self.batch, self.tokens, self.heads, d),
        }
    }

    /// (B, H, N, D) -> the problem's layout, for outputs.
    pub fn from_heads_first(&self, data: Vec<f32>, d: usize) -> Vec<f32> {
        match self.layout {
            Layout::Bhnd => data,
            Layout::Bnhd => permute_middle(&data, self.batch, self.heads, self.tokens, d),
        }
    }
}

/// `Err(ShapeMismatch)` unless `got == expected`.
fn mismatch(
    arg: &'static str,
    expected: Vec<usize>,
    got: &[usize],
    axes: &'static str,
) -> Result<()> {
    if got == expected.as_slice() {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            arg,
            expected,
            got: got.to_vec(),
            axes,
        })
    }
}

/// The index ranges of one element of a rank-4 tensor.
pub type Probe4 = (Range<usize>, Range<usize>, Range<usize>, Range<usize>);

/// A rank-4 tensor's data in logical order (see [`contiguous_data`]).
pub(crate) fn read_4d<S: Shape<Concrete = [usize; 4]> + SliceShape<Probe4>>(
    t: &Tensor<S, f32, Cpu>,
) -> Vec<f32> {
    contiguous_data(t)
}

/// A tensor's data in logical order with one `memcpy`.
///
/// dfdx 0.13 exposes neither strides nor storage; `try_contiguous` is free for a tensor in the
/// standard layout (it shares the buffer) and materialises permuted or broadcast views, after
/// which the buffer holds exactly the logical elements and `copy_into` is one `memcpy`. (An
/// earlier probe of the layout through a gradient buffer cost a zeroed allocation as large as
/// the tensor, about a millisecond per input at N = 4096.) Should `copy_into` ever refuse the
/// buffer, dfdx's element-wise iteration is the fallback rather than a panic.
pub fn contiguous_data<S: Shape>(t: &Tensor<S, f32, Cpu>) -> Vec<f32> {
    let Ok(c) = t.clone().try_contiguous() else {
        return t.as_vec();
    };
    let mut out = pooled_buffer(c.shape().num_elements());
    let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.copy_into(&mut out)));
    match copied {
        Ok(()) => out,
        Err(_) => t.as_vec(),
    }
}

/// Swaps the two middle axes of a (A, X, Y, D) buffer, giving (A, Y, X, D).
fn permute_middle(data: &[f32], a: usize, x: usize, y: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for ai in 0..a {
        for xi in 0..x {
            for yi in 0..y {
                let src = ((ai * x + xi) * y + yi) * d;
                let dst = ((ai * y + yi) * x + xi) * d;
                if let (Some(s), Some(o)) = (data.get(src..src + d), out.get_mut(dst..dst + d)) {
                    o.copy_from_slice(s);
                }
            }
        }
    }
    out
}

/// `data`, or [`Error::NonFinite`] when finite checking is on and it holds NaN or infinity.
pub(crate) fn checked(arg: &'static str, data: Vec<f32>) -> Result<Vec<f32>> {
    if finite_check() {
        if let Some(index) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite { arg, index });
        }
    }
    Ok(data)
}

/// Heads-first inputs of one call and the state buffers they update.
pub struct Buffers {
    /// Queries, (B, H, N, DK).
    pub q: Vec<f32>,
    /// Keys, (B, H, N, DK).
    pub k: Vec<f32>,
    /// Values, (B, H, N, DV).
    pub v: Vec<f32>,
    /// Write strengths, (B, H, N), or empty.
    pub beta: Vec<f32>,
    /// Log-decays, (B, H, N), or empty.
    pub g: Vec<f32>,
    /// The FAVOR+ projection transposed, (DK, F), or empty (see [`Task::proj`]).
    pub proj: Vec<f32>,
    /// State S, (B, H, F, DV): initial on entry, final after the run.
    pub s: Vec<f32>,
    /// State z, (B, H, F), or empty.
    pub z: Vec<f32>,
}

/// Splits the buffers into one [`Task`] per (batch, head).
fn tasks<'a>(
    p: &Problem,
    dims: [usize; 3],
    bufs: &'a mut Buffers,
    out: &'a mut [f32],
) -> Result<Vec<Task<'a>>> {
    let [dk, dv, f] = dims;
    let (n, bh) = (p.tokens, p.batch * p.heads);
    let sizes_ok = bufs.q.len() == bh * n * dk
        && bufs.k.len() == bh * n * dk
        && bufs.v.len() == bh * n * dv
        && out.len() == bh * n * dv
        && bufs.s.len() == bh * f * dv
        && [0, bh * n].contains(&bufs.beta.len())
        && [0, bh * n].contains(&bufs.g.len())
        && [0, bh * f].contains(&bufs.z.len());
    if !sizes_ok {
        return Err(Error::Internal("buffer sizes disagree with the problem"));
    }
    if ![0, dk * f].contains(&bufs.proj.len()) {
        return Err(Error::Internal(
            "the projection's size disagrees with the spec",
        ));
    }
    let proj: &[f32] = &bufs.proj;
    let per = |len: usize, total: usize| if total == 0 { 0 } else { len };
    let (beta_len, g_len, z_len) = (
        per(n, bufs.beta.len()),
        per(n, bufs.g.len()),
        per(f, bufs.z.len()),
    );
    let mut z_parts = bufs.z.chunks_mut(z_len.max(1));
    let mut beta_parts = bufs.beta.chunks(beta_len.max(1));
    let mut g_parts = bufs.g.chunks(g_len.max(1));
    let list = bufs
        .q
        .chunks(n * dk)
        .zip(bufs.k.chunks(n * dk))
        .zip(bufs.v.chunks(n * dv))
        .zip(out.chunks_mut(n * dv))
        .zip(bufs.s.chunks_mut(f * dv))
        .map(|((((q, k), v), out), s)| Task {
            q,
            k,
            v,
            beta: if beta_len == 0 {
                &[]
            } else {
                beta_parts.next().unwrap_or(&[])
            },
            g: if g_len == 0 {
                &[]
            } else {
                g_parts.next().unwrap_or(&[])
            },
            proj,
            n,
            out,
            s,
            z: if z_len == 0 {
                &mut []
            } else {
                z_parts.next().unwrap_or(&mut [])
            },
        })
        .collect();
    Ok(list)
}

/// Runs kernel `K`'s chunk program on every (batch, head) in parallel; returns the output
/// heads first, (B, H, N, DV), and leaves the final state in `bufs.s` / `bufs.z`.
pub fn run_forward<K: Kernel>(
    p: &Problem,
    dims: [usize; 3],
    bufs: &mut Buffers,
) -> Result<Vec<f32>> {
    let isa = CpuIsa::selected()?;
    let mut out = vec![0.0; p.batch * p.heads * p.tokens * dims[1]];
    let chunks = p.tokens.div_ceil(K::CHUNK.max(1));
    if Schedule::selected().by_chunks::<K>(p.batch * p.heads, chunks) {
        run_chunked::<K>(isa, p, dims, bufs, &mut out)?;
        return Ok(out);
    }
    let list = tasks(p, dims, bufs, &mut out)?;
    list.into_par_iter()
        .with_max_len(1)
        .try_for_each(|task| dispatch::<K>(isa, Job::Forward(task)))?;
    Ok(out)
}

/// One (batch, head) of the chunk-parallel schedule: its task and its per-chunk workspaces.
struct HeadWork<'a> {
    task: Task<'a>,
    slot_s: &'a mut [f32],
    slot_z: &'a mut [f32],
    work: &'a mut [f32],
}

/// The chunk-parallel schedule (see [`Schedule::Chunks`]): three phases, each a parallel loop.
fn run_chunked<K: Kernel>(
    isa: CpuIsa,
    p: &Problem,
    dims: [usize; 3],
    bufs: &mut Buffers,
    out: &mut [f32],
) -> Result<()> {
    let [_, dv, f] = dims;
    let (bh, chunks) = (p.batch * p.heads, p.tokens.div_ceil(K::CHUNK.max(1)));
    let normalized = !bufs.z.is_empty();
    let mut slot_s = pooled_buffer(bh * chunks * f * dv);
    let mut slot_z = pooled_buffer(if normalized { bh * chunks * f } else { 0 });
    let mut work = pooled_buffer(bh * chunks * K::WORK);
    let mut heads: Vec<HeadWork<'_>> = tasks(p, dims, bufs, out)?
        .into_iter()
        .zip(parts(&mut slot_s, chunks * f * dv, bh))
        .zip(parts(&mut slot_z, chunks * f, bh))
        .zip(parts(&mut work, chunks * K::WORK, bh))
        .map(|(((task, slot_s), slot_z), work)| HeadWork {
            task,
            slot_s,
            slot_z,
            work,
        })
        .collect();
    // About four runs per thread, so the uneven last chunk and the scheduling even out.
    let jobs_per_head = (4 * rayon::current_num_threads()).div_ceil(bh.max(1));
    let run = chunks.div_ceil(jobs_per_head.max(1)).max(1);
    for phase in [Phase::Intra, Phase::Scan, Phase::Output] {
        phase_tasks::<K>(&mut heads, phase, run, dims, chunks)
            .into_par_iter()
            .with_max_len(1)
            .try_for_each(|task| dispatch::<K>(isa, Job::Phase(phase, task)))?;
    }
    recycle([slot_s, slot_z, work]);
    Ok(())
}

/// The tasks of one phase: runs of `run` chunks per (batch, head), or one per (batch, head) for
/// the scan.
fn phase_tasks<'b, K: Kernel>(
    heads: &'b mut [HeadWork<'_>],
    phase: Phase,
    run: usize,
    [_, dv, f]: [usize; 3],
    chunks: usize,
) -> Vec<PhaseTask<'b>> {
    let mut list = Vec::new();
    for h in heads.iter_mut() {
        let t = &mut h.task;
        let (q, k, v, beta, g, proj, n) = (t.q, t.k, t.v, t.beta, t.g, t.proj, t.n);
        if phase == Phase::Scan {
            list.push(PhaseTask {
                q,
                k,
                v,
                beta,
                g,
                proj,
                n,
                first: 0,
                chunks,
                out: &mut [],
                s: &mut *t.s,
                z: &mut *t.z,
                final_s: &[],
                final_z: &[],
                slot_s: &mut *h.slot_s,
                slot_z: &mut *h.slot_z,
                work: &mut *h.work,
            });
            continue;
        }
        let runs = chunks.div_ceil(run);
        let out: &mut [f32] = if phase == Phase::Output {
            &mut *t.out
        } else {
            &mut []
        };
        let (final_s, final_z): (&[f32], &[f32]) = (&*t.s, &*t.z);
        let pieces = parts(out, run * K::CHUNK * dv, runs)
            .into_iter()
            .zip(parts(&mut *h.slot_s, run * f * dv, runs))
            .zip(parts(&mut *h.slot_z, run * f, runs))
            .zip(parts(&mut *h.work, run * K::WORK, runs));
        for (i, (((out, slot_s), slot_z), work)) in pieces.enumerate() {
            list.push(PhaseTask {
                q,
                k,
                v,
                beta,
                g,
                proj,
                n,
                first: i * run,
                chunks: run.min(chunks - i * run),
                out,
                s: &mut [],
                z: &mut [],
                final_s,
                final_z,
                slot_s,
                slot_z,
                work,
            });
        }
    }
    list
}

/// `count` consecutive pieces of `len` floats (the last may be shorter), or `count` empty
/// slices when the buffer is empty.
fn parts(buf: &mut [f32], len: usize, count: usize) -> Vec<&mut [f32]> {
    if buf.is_empty() || len == 0 {
        return std::iter::repeat_with(|| -> &mut [f32] { &mut [] })
            .take(count)
            .collect();
    }
    buf.chunks_mut(len).collect()
}

/// Runs kernel `K`'s step program on every (batch, head): one token each, in sequence. (Over
/// rayon's threads a step at H = 8 took 3.5x longer: waking them costs more than the update.)
pub fn run_step<K: Kernel>(p: &Problem, dims: [usize; 3], bufs: &mut Buffers) -> Result<Vec<f32>> {
    let isa = CpuIsa::selected()?;
    let mut out = vec![0.0; p.batch * p.heads * dims[1]];
    for task in tasks(p, dims, bufs, &mut out)? {
        dispatch::<K>(isa, Job::Step(task))?;
    }
    Ok(out)
}

/// Spare buffers, kept for the next call: a fresh multi-MB allocation is mapped by the OS on
/// first touch, and those page faults cost as much as the copy itself (perf, plain N = 4096: a
/// third of a call). Holds at most [`POOL_SLOTS`] buffers, the largest offered.
struct Pool(std::sync::Mutex<Vec<Vec<f32>>>);

impl Pool {
    const fn new() -> Pool {
        Pool(std::sync::Mutex::new(Vec::new()))
    }

    /// The buffers, even if a thread panicked while holding them (they are only spares).
    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f32>>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A buffer of `len` floats (contents unspecified): the smallest spare that fits, or new.
    fn take(&self, len: usize) -> Vec<f32> {
        // Small buffers (a step's tokens; absent z or spills) come straight from the allocator,
        // which serves them without page faults and without the lock.
        if len < POOL_MIN_LEN {
            return vec![0.0; len];
        }
        let reused = {
            let mut spares = self.spares();
            let best = spares
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| spares.swap_remove(i))
        };
        match reused {
            Some(mut buf) => {
                // Within capacity: no reallocation; only growth past the old length is written.
                buf.resize(len, 0.0);
                buf
            }
            None => vec![0.0; len],
        }
    }

    /// Keeps the largest [`POOL_SLOTS`] of the spares and `bufs`.
    fn put(&self, bufs: impl IntoIterator<Item = Vec<f32>>) {
        let mut spares = self.spares();
        spares.extend(bufs.into_iter().filter(|b| b.capacity() >= POOL_MIN_LEN));
        spares.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
        spares.truncate(POOL_SLOTS);
    }
}

/// The process's pool: input copies and workspaces of earlier calls. Shared by all threads,
/// because the inputs are copied on several threads at once.
static POOL: Pool = Pool::new();

/// Buffers the pool keeps (q, k, v and the chunk-parallel schedule's three workspaces).
const POOL_SLOTS: usize = 6;

/// Buffers shorter than this (64 KiB) bypass the pool.
const POOL_MIN_LEN: usize = 16 << 10;

/// A buffer of `len` floats (contents unspecified) from the pool, or a new one.
pub fn pooled_buffer(len: usize) -> Vec<f32> {
    POOL.take(len)
}

/// Returns buffers to the pool (the largest `POOL_SLOTS` are kept).
pub fn recycle(bufs: impl IntoIterator<Item = Vec<f32>>) {
    POOL.put(bufs);
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn pooled_buffers_have_the_asked_length_and_are_reused() {
        let pool = Pool::new();
        let big = 2 * POOL_MIN_LEN;
        let a = pool.take(big);
        assert_eq!(a.len(), big);
        let ptr = a.as_ptr();
        pool.put([a]);
        // A smaller request reuses the same allocation.
        let b = pool.take(POOL_MIN_LEN);
        assert_eq!((b.len(), b.as_ptr()), (POOL_MIN_LEN, ptr));
        pool.put([b]);
        // Small and empty requests leave the spares alone, and small buffers are not kept.
        assert_eq!(pool.take(0).capacity(), 0);
        assert_eq!(pool.take(10).len(), 10);
        pool.put([vec![0.0; 10]]);
        assert_eq!(pool.spares().len(), 1);
        pool.put((1..=POOL_SLOTS).map(|i| vec![0.0; POOL_MIN_LEN + i]));
        let caps: Vec<usize> = pool.spares().iter().map(|b| b.capacity()).collect();
        assert_eq!(caps.len(), POOL_SLOTS);
        assert!(
            caps.contains(&big),
            "the largest buffers are kept: {caps:?}"
        );
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    /// A kernel with only the constants the schedule reads.
    struct Consts<const LIGHT: bool>;

    impl<const LIGHT: bool> Kernel for Consts<LIGHT> {
        const CHUNK: usize = 64;
        const WORK: usize = 0;
        const PHASED: bool = true;
        const LIGHT_SCAN: bool = LIGHT;
        fn forward<I: Isa>(_: I, _: Task<'_>) -> Result<()> {
            Err(Error::Internal("not a kernel"))
        }
        fn step<I: Isa>(_: I, _: Task<'_>) -> Result<()> {
            Err(Error::Internal("not a kernel"))
        }
        fn phase<I: Isa>(_: I, _: Phase, _: PhaseTask<'_>) -> Result<()> {
            Err(Error::Internal("not a kernel"))
        }
    }

    #[test]
    fn auto_uses_chunks_only_when_heads_leave_threads_idle_and_the_scan_is_light() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a 2-thread pool");
        pool.install(|| {
            let auto = Schedule::Auto;
            assert!(
                auto.by_chunks::<Consts<true>>(1, 100),
                "one head, two threads"
            );
            assert!(
                !auto.by_chunks::<Consts<true>>(2, 100),
                "two heads fill two threads"
            );
            assert!(
                !auto.by_chunks::<Consts<true>>(1, 3),
                "too few chunks to share"
            );
            assert!(
                !auto.by_chunks::<Consts<false>>(1, 100),
                "delta rules keep heads"
            );
            assert!(Schedule::Chunks.by_chunks::<Consts<false>>(2, 100));
            assert!(
                !Schedule::Chunks.by_chunks::<Consts<true>>(1, 1),
                "one chunk"
            );
            assert!(!Schedule::Heads.by_chunks::<Consts<true>>(1, 100));
        });
    }
}
