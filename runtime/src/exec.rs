//! Running generated kernels: argument checks, layout conversion, the (batch, head) split over
//! rayon, and the ISA dispatch through `#[target_feature]` trampolines.

use crate::error::{Error, Result};
use crate::isa::{Avx2, Avx512, CpuIsa, Isa, Portable};
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

/// A generated kernel: the chunk program over a whole sequence and the step program for one token.
pub trait Kernel {
    /// Runs the chunk program over `task.n` tokens.
    fn forward<I: Isa>(isa: I, task: Task<'_>) -> Result<()>;
    /// Runs the step program for one token (`task.n == 1`).
    fn step<I: Isa>(isa: I, task: Task<'_>) -> Result<()>;
}

/// Which of a kernel's two programs to run.
#[derive(Clone, Copy)]
enum Program {
    Forward,
    Step,
}

/// `inline(always)`: it must be compiled inside the trampolines' target features, like the
/// kernels it calls (else every intrinsic becomes a call).
#[inline(always)]
fn run_program<K: Kernel, I: Isa>(program: Program, isa: I, task: Task<'_>) -> Result<()> {
    match program {
        Program::Forward => K::forward(isa, task),
        Program::Step => K::step(isa, task),
    }
}

// The trampolines: the generic kernels are `#[inline(always)]`, so they are compiled here with
// these target features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
fn run_avx512<K: Kernel>(program: Program, isa: Avx512, task: Task<'_>) -> Result<()> {
    run_program::<K, _>(program, isa, task)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<K: Kernel>(program: Program, isa: Avx2, task: Task<'_>) -> Result<()> {
    run_program::<K, _>(program, isa, task)
}

/// Runs one of a task's programs with the given ISA variant.
fn dispatch<K: Kernel>(isa: CpuIsa, program: Program, task: Task<'_>) -> Result<()> {
    match isa {
        // SAFETY: the marker exists only if the CPU has the features the trampoline enables.
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx512 => match Avx512::detect() {
            Some(m) => unsafe { run_avx512::<K>(program, m, task) },
            None => run_program::<K, _>(program, Portable, task),
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        CpuIsa::Avx2 => match Avx2::detect() {
            Some(m) => unsafe { run_avx2::<K>(program, m, task) },
            None => run_program::<K, _>(program, Portable, task),
        },
        _ => run_program::<K, _>(program, Portable, task),
    }
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

/// The axis order of token tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenLayout {
    /// (B, H, N, D)
    Bhnd,
    /// (B, N, H, D)
    Bnhd,
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
    pub layout: TokenLayout,
}

impl Problem {
    /// Reads the sizes from `q`'s shape, in the given layout.
    pub fn from_q(layout: TokenLayout, q_dims: [usize; 4]) -> Result<Problem> {
        let [b, x, y, _] = q_dims;
        let (heads, tokens) = match layout {
            TokenLayout::Bhnd => (x, y),
            TokenLayout::Bnhd => (y, x),
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
            layout: TokenLayout::Bhnd,
        }
    }

    fn axes(&self) -> (&'static str, &'static str) {
        match self.layout {
            TokenLayout::Bhnd => ("(B, H, N, D)", "(B, H, N)"),
            TokenLayout::Bnhd => ("(B, N, H, D)", "(B, N, H)"),
        }
    }

    fn bhn(&self) -> [usize; 3] {
        match self.layout {
            TokenLayout::Bhnd => [self.batch, self.heads, self.tokens],
            TokenLayout::Bnhd => [self.batch, self.tokens, self.heads],
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
        checked(arg, t.as_vec())
    }

    /// Checks a per-head (B, H) decoding input (beta_t, g_t).
    pub fn gather_head_scalars<S: Shape<Concrete = [usize; 2]>>(
        &self,
        arg: &'static str,
        t: &Tensor<S, f32, Cpu>,
    ) -> Result<Vec<f32>> {
        self.check_head_scalars(arg, t.shape().concrete())?;
        checked(arg, t.as_vec())
    }

    /// (B, N, H, D) -> (B, H, N, D); identity for heads-first layouts.
    fn heads_first(&self, data: Vec<f32>, d: usize) -> Vec<f32> {
        match self.layout {
            TokenLayout::Bhnd => data,
            TokenLayout::Bnhd => permute_middle(&data, self.batch, self.tokens, self.heads, d),
        }
    }

    /// (B, H, N, D) -> the problem's layout, for outputs.
    pub fn from_heads_first(&self, data: Vec<f32>, d: usize) -> Vec<f32> {
        match self.layout {
            TokenLayout::Bhnd => data,
            TokenLayout::Bnhd => permute_middle(&data, self.batch, self.heads, self.tokens, d),
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
    let list = tasks(p, dims, bufs, &mut out)?;
    list.into_par_iter()
        .with_max_len(1)
        .try_for_each(|task| dispatch::<K>(isa, Program::Forward, task))?;
    Ok(out)
}

/// Runs kernel `K`'s step program on every (batch, head): one token each, in sequence (a step's
/// work per head is far below what a thread hand-off costs).
pub fn run_step<K: Kernel>(p: &Problem, dims: [usize; 3], bufs: &mut Buffers) -> Result<Vec<f32>> {
    let isa = CpuIsa::selected()?;
    let mut out = vec![0.0; p.batch * p.heads * dims[1]];
    for task in tasks(p, dims, bufs, &mut out)? {
        dispatch::<K>(isa, Program::Step, task)?;
    }
    Ok(out)
}

thread_local! {
    /// Input copies of earlier calls on this thread, kept for the next call: a fresh multi-MB
    /// allocation is mapped by the OS on first touch, and those page faults cost as much as the
    /// copy itself (perf, plain N = 4096: a third of a call). Holds at most [`POOL_SLOTS`]
    /// buffers, i.e. the inputs of the largest recent call.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers the pool keeps per thread (q, k, v and the state of one call).
const POOL_SLOTS: usize = 4;

/// A buffer of `len` floats (contents unspecified) from this thread's pool, or a new one.
pub fn pooled_buffer(len: usize) -> Vec<f32> {
    let reused = POOL.with(|p| {
        let mut pool = p.borrow_mut();
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        best.map(|i| pool.swap_remove(i))
    });
    match reused {
        Some(mut buf) => {
            // Within capacity: no reallocation; only growth past the old length is written.
            buf.resize(len, 0.0);
            buf
        }
        None => vec![0.0; len],
    }
}

/// Returns buffers to this thread's pool (the largest [`POOL_SLOTS`] are kept).
pub fn recycle(bufs: impl IntoIterator<Item = Vec<f32>>) {
    POOL.with(|p| {
        let mut pool = p.borrow_mut();
        pool.extend(bufs.into_iter().filter(|b| b.capacity() > 0));
        pool.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
        pool.truncate(POOL_SLOTS);
    });
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn pooled_buffers_have_the_asked_length_and_are_reused() {
        let a = pooled_buffer(1000);
        assert_eq!(a.len(), 1000);
        let ptr = a.as_ptr();
        recycle([a]);
        // A smaller request reuses the same allocation.
        let b = pooled_buffer(600);
        assert_eq!((b.len(), b.as_ptr()), (600, ptr));
        recycle([
            b,
            vec![0.0; 10],
            vec![0.0; 20],
            vec![0.0; 30],
            vec![0.0; 40],
        ]);
        POOL.with(|p| {
            let caps: Vec<usize> = p.borrow().iter().map(|b| b.capacity()).collect();
            assert_eq!(caps.len(), POOL_SLOTS);
            assert!(
                caps.contains(&1000),
                "the largest buffers are kept: {caps:?}"
            );
        });
    }
}
