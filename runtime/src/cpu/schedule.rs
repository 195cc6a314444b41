//! How `forward` and `step` spread a call over the threads: one task per (batch, head) running
//! the sequential chunk program, or the chunk-parallel schedule's three phases.

use crate::check::Problem;
use crate::cpu::dispatch::{dispatch, Forward, PhaseRun, Step};
use crate::cpu::isa::CpuIsa;
use crate::cpu::kernel::{Kernel, Phase, PhaseTask, Recurrent, Task};
use crate::cpu::pool::{pooled_buffer, recycle};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::sync::OnceLock;

/// How `forward` spreads its work over the threads of the current rayon pool.
///
/// ```
/// # use attnc_runtime as attnc;
/// use attnc::Schedule;
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
    fn by_chunks<K: Recurrent>(self, bh: usize, chunks: usize) -> bool {
        let threads = rayon::current_num_threads();
        match self {
            _ if chunks < 2 => false,
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
    /// State S, (B, H, F, DV): initial on entry, final after the run; empty for softmax.
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
        && [0, bh * f * dv].contains(&bufs.s.len())
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
    let (beta_len, g_len, s_len, z_len) = (
        per(n, bufs.beta.len()),
        per(n, bufs.g.len()),
        per(f * dv, bufs.s.len()),
        per(f, bufs.z.len()),
    );
    // Softmax carries no state: `s` is empty and every task gets an empty slice.
    let mut s_parts = bufs.s.chunks_mut(s_len.max(1));
    let mut z_parts = bufs.z.chunks_mut(z_len.max(1));
    let mut beta_parts = bufs.beta.chunks(beta_len.max(1));
    let mut g_parts = bufs.g.chunks(g_len.max(1));
    let list = bufs
        .q
        .chunks(n * dk)
        .zip(bufs.k.chunks(n * dk))
        .zip(bufs.v.chunks(n * dv))
        .zip(out.chunks_mut(n * dv))
        .map(|(((q, k), v), out)| Task {
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
            s: if s_len == 0 {
                &mut []
            } else {
                s_parts.next().unwrap_or(&mut [])
            },
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
    let list = tasks(p, dims, bufs, &mut out)?;
    list.into_par_iter()
        .with_max_len(1)
        .try_for_each(|task| dispatch(isa, Forward::<K>(task, PhantomData)))?;
    Ok(out)
}

/// As [`run_forward`], for a recurrent kernel: chunk-parallel when [`Schedule`] says so.
pub fn run_recurrent<K: Recurrent>(
    p: &Problem,
    dims: [usize; 3],
    bufs: &mut Buffers,
) -> Result<Vec<f32>> {
    let chunks = p.tokens.div_ceil(K::CHUNK.max(1));
    if !Schedule::selected().by_chunks::<K>(p.batch * p.heads, chunks) {
        return run_forward::<K>(p, dims, bufs);
    }
    let isa = CpuIsa::selected()?;
    let mut out = vec![0.0; p.batch * p.heads * p.tokens * dims[1]];
    run_chunked::<K>(isa, p, dims, bufs, &mut out)?;
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
fn run_chunked<K: Recurrent>(
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
            .try_for_each(|task| dispatch(isa, PhaseRun::<K>(phase, task, PhantomData)))?;
    }
    recycle([slot_s, slot_z, work]);
    Ok(())
}

/// The tasks of one phase: runs of `run` chunks per (batch, head), or one per (batch, head) for
/// the scan.
fn phase_tasks<'b, K: Recurrent>(
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
pub fn run_step<K: Recurrent>(
    p: &Problem,
    dims: [usize; 3],
    bufs: &mut Buffers,
) -> Result<Vec<f32>> {
    let isa = CpuIsa::selected()?;
    let mut out = vec![0.0; p.batch * p.heads * dims[1]];
    for task in tasks(p, dims, bufs, &mut out)? {
        dispatch(isa, Step::<K>(task, PhantomData))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::isa::Isa;

    /// A kernel with only the constants the schedule reads.
    struct Consts<const LIGHT: bool>;

    impl<const LIGHT: bool> Kernel for Consts<LIGHT> {
        const CHUNK: usize = 64;
        fn forward<I: Isa>(_: I, _: Task<'_>) -> Result<()> {
            Err(Error::Internal("not a kernel"))
        }
        fn run_all(_: &Problem, _: [usize; 3], _: &mut Buffers) -> Result<Vec<f32>> {
            Err(Error::Internal("not a kernel"))
        }
    }

    impl<const LIGHT: bool> Recurrent for Consts<LIGHT> {
        const WORK: usize = 0;
        const LIGHT_SCAN: bool = LIGHT;
        fn step<I: Isa>(_: I, _: Task<'_>) -> Result<()> {
            Err(Error::Internal("not a kernel"))
        }
        fn phase<I: Isa>(_: I, _: Phase, _: PhaseTask<'_>) -> Result<()> {
            Err(Error::Internal("not a kernel"))
        }
        fn run_step_all(_: &Problem, _: [usize; 3], _: &mut Buffers) -> Result<Vec<f32>> {
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
