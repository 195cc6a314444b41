//! `short_conv = w`: a depthwise causal convolution over the sequence, then SiLU, on q, k and v
//! per head and channel (CHELA's short convolution; flash-linear-attention's
//! `ShortConvolution`). `weight[h, c, j]` multiplies `x_{t-w+1+j}` (PyTorch conv1d's order);
//! rows before the sequence are the carried tail (zeros at a sequence start).
//!
//! The convolution is a dfdx op of its own on the tape ([`short_conv`]): its output feeds the
//! spec's chunk program like any q, k or v, and its backward (SiLU', the transposed
//! convolution, the weights' and the tail's gradients) runs after the attention's.

use crate::check::{checked, Problem};
use crate::cpu::dispatch::{dispatch, Job};
use crate::cpu::isa::CpuIsa;
use crate::cpu::pool::pooled_buffer;
use crate::error::{Error, Result};
use crate::train::{accumulate, gradient_of, internal};
use dfdx::shapes::{Const, Dim, HasShape, Shape};
use dfdx::tensor::{Cpu, Merge, PutTape, SplitTape, Tape, Tensor};
use rayon::prelude::*;

/// Sizes of one convolution: channels and width.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    /// Channels (DK or DV).
    pub d: usize,
    /// Width w.
    pub width: usize,
}

impl Conv {
    fn w1(self) -> usize {
        self.width - 1
    }
}

/// The logistic function with the tile library's inlined exp (so loops over a row vectorise).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + crate::cpu::tile::exp(-x))
}

/// Weights (d x width) as (width x d): tap j's weights contiguous over the channels.
fn taps(cv: Conv, w: &[f32]) -> Vec<f32> {
    let mut t = vec![0.0; cv.d * cv.width];
    for c in 0..cv.d {
        for j in 0..cv.width {
            t[j * cv.d + c] = w[c * cv.width + j];
        }
    }
    t
}

/// Row `e` of `[tail; x]` (`tail` has w - 1 rows).
#[inline(always)]
fn ext<'a>(cv: Conv, x: &'a [f32], tail: &'a [f32], e: usize) -> &'a [f32] {
    let (d, w1) = (cv.d, cv.w1());
    if e < w1 {
        &tail[e * d..(e + 1) * d]
    } else {
        &x[(e - w1) * d..(e - w1 + 1) * d]
    }
}

/// The pre-activations of row `t`: `sum_j w[c][j] [tail; x]_{t+j}[c]` into `pre`; `taps` is
/// the weights as (width x d).
#[inline(always)]
fn preact(cv: Conv, x: &[f32], tail: &[f32], taps: &[f32], t: usize, pre: &mut [f32]) {
    pre.fill(0.0);
    for (j, tap) in taps.chunks_exact(cv.d).enumerate() {
        let r = ext(cv, x, tail, t + j);
        for ((p, xv), wv) in pre.iter_mut().zip(r).zip(tap) {
            *p += wv * xv;
        }
    }
}

/// `y = silu(conv(x))` for one head: `x` (n x d), `tail` ((w-1) x d), `w` (d x width).
#[inline(always)]
pub fn conv_head(cv: Conv, x: &[f32], tail: &[f32], w: &[f32], y: &mut [f32]) {
    let taps = taps(cv, w);
    for (t, yr) in y.chunks_exact_mut(cv.d).enumerate() {
        preact(cv, x, tail, &taps, t, yr);
        yr.iter_mut().for_each(|a| *a *= sigmoid(*a));
    }
}

/// [`conv_head`] through the ISA trampoline, so its loops vectorise at the CPU's width.
struct ConvJob<'a> {
    cv: Conv,
    x: &'a [f32],
    tail: &'a [f32],
    w: &'a [f32],
    y: &'a mut [f32],
}

impl Job for ConvJob<'_> {
    #[inline(always)]
    fn run<I: crate::cpu::isa::Isa>(self, _: I) -> Result<()> {
        conv_head(self.cv, self.x, self.tail, self.w, self.y);
        Ok(())
    }
}

/// The last w - 1 rows of `[tail; x]`: the tail the next call starts from.
pub fn next_tail(cv: Conv, x: &[f32], tail: &[f32]) -> Vec<f32> {
    let n = x.len() / cv.d.max(1);
    (n..n + cv.w1())
        .flat_map(|e| ext(cv, x, tail, e).iter().copied())
        .collect()
}

/// The backward of [`conv_head`]: adds to `dx` (n x d), `dtail` ((w-1) x d) and `dw`
/// (d x width) from `dy`.
pub fn conv_head_vjp(
    cv: Conv,
    (x, tail, w): (&[f32], &[f32], &[f32]),
    dy: &[f32],
    dx: &mut [f32],
    dtail: &mut [f32],
    dw: &mut [f32],
) {
    let (d, w1) = (cv.d, cv.w1());
    let mut pre = vec![0.0; d];
    let taps = taps(cv, w);
    for (t, g) in dy.chunks_exact(d).enumerate() {
        preact(cv, x, tail, &taps, t, &mut pre);
        // silu'(a) = s (1 + a (1 - s)), s = sigmoid(a)
        pre.iter_mut().zip(g).for_each(|(a, g)| {
            let s = sigmoid(*a);
            *a = g * s * (1.0 + *a * (1.0 - s));
        });
        for j in 0..cv.width {
            let e = t + j;
            let xr = ext(cv, x, tail, e);
            let dst = if e < w1 {
                &mut dtail[e * d..(e + 1) * d]
            } else {
                &mut dx[(e - w1) * d..(e - w1 + 1) * d]
            };
            for c in 0..d {
                dst[c] += w[c * cv.width + j] * pre[c];
                dw[c * cv.width + j] += pre[c] * xr[c];
            }
        }
    }
}

/// Checks the weights' shape, (H, D, w), and returns their data.
fn weights<Sw: Shape<Concrete = [usize; 3]>>(
    name: &'static str,
    heads: usize,
    cv: Conv,
    w: &Tensor<Sw, f32, Cpu>,
) -> Result<Vec<f32>> {
    let got = w.shape().concrete();
    let expected = [heads, cv.d, cv.width];
    if got != expected {
        return Err(Error::ShapeMismatch {
            arg: name,
            expected: expected.to_vec(),
            got: got.to_vec(),
            axes: "(H, D, w)",
        });
    }
    checked(name, crate::cpu::marshal::contiguous_data(w))
}

/// The convolution of a whole call, heads first: `x` (B·H x n x d), `tails` (B·H x (w-1) x d),
/// `w` (H x d x width). Returns `y` and the next tails.
pub fn conv_all(
    cv: Conv,
    heads: usize,
    x: &[f32],
    tails: &[f32],
    w: &[f32],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let bh = tails.len() / (cv.w1() * cv.d).max(1);
    let n = x.len() / (bh * cv.d).max(1);
    let (xs, ts, ws) = (n * cv.d, cv.w1() * cv.d, cv.d * cv.width);
    let isa = CpuIsa::selected()?;
    let mut y = pooled_buffer(x.len());
    y.par_chunks_mut(xs.max(1))
        .enumerate()
        .try_for_each(|(i, y)| {
            let h = i % heads.max(1);
            let job = ConvJob {
                cv,
                x: &x[i * xs..(i + 1) * xs],
                tail: &tails[i * ts..(i + 1) * ts],
                w: &w[h * ws..(h + 1) * ws],
                y,
            };
            dispatch(isa, job)
        })?;
    let next: Vec<f32> = (0..bh)
        .flat_map(|i| next_tail(cv, &x[i * xs..(i + 1) * xs], &tails[i * ts..(i + 1) * ts]))
        .collect();
    Ok((y, next))
}

/// `short_conv` as a dfdx op: `x` (the spec's layout) convolved with `w` (H, D, w) from `tail`
/// ((B, H, w - 1, D) heads first; zeros when `None`), then SiLU. Returns the output (carrying
/// `x`'s tape merged with `w`'s) and the next tail, flat heads first. With a recording tape it
/// records the backward: gradients of x, w and the given tail (by id).
#[allow(clippy::type_complexity)]
pub fn short_conv<B, H, S4, Sw, T, Tw, const D: usize>(
    p: &Problem,
    name: &'static str,
    width: usize,
    x: Tensor<S4, f32, Cpu, T>,
    w: Tensor<Sw, f32, Cpu, Tw>,
    tail: Option<(&Tensor<(B, H, usize, Const<D>), f32, Cpu>, Vec<f32>)>,
) -> Result<(Tensor<S4, f32, Cpu, T>, Vec<f32>)>
where
    B: Dim,
    H: Dim,
    S4: Shape<Concrete = [usize; 4]>,
    Sw: Shape<Concrete = [usize; 3]>,
    T: Tape<f32, Cpu> + Merge<Tw>,
    Tw: Tape<f32, Cpu>,
{
    let cv = Conv { d: D, width };
    let traced = T::OWNS_TAPE || Tw::OWNS_TAPE;
    let x = if traced {
        crate::api::contiguous(x)?
    } else {
        x
    };
    let (x, tx) = x.split_tape();
    let (w, tw) = w.split_tape();
    let bh = p.batch * p.heads;
    let xh = p.gather_tokens(name, &x, D)?;
    let wd = weights(name, p.heads, cv, &w)?;
    let tail_data = match &tail {
        Some((_, data)) => data.clone(),
        None => vec![0.0; bh * cv.w1() * D],
    };
    let (y, next) = conv_all(cv, p.heads, &xh, &tail_data, &wd)?;
    let out = crate::api::output_tensor(&x, p.from_heads_first(y, D), *x.shape())?;
    let mut tape = tx.merge(tw);
    if traced {
        let (p, saved_out, tail_t) = (*p, out.clone(), tail.map(|(t, _)| t.clone()));
        tape.add_backward_op(move |grads| {
            let dy = p.heads_first(gradient_of(grads, &saved_out)?, D);
            let (mut dx, mut dt, mut dw) = (
                vec![0.0; xh.len()],
                vec![0.0; tail_data.len()],
                vec![0.0; wd.len()],
            );
            let (xs, ts, ws) = (p.tokens * D, cv.w1() * D, D * width);
            for i in 0..bh {
                let h = i % p.heads.max(1);
                let r = |v: &[f32], len: usize| v.get(i * len..(i + 1) * len).map(<[f32]>::to_vec);
                let (Some(xi), Some(ti), Some(dyi)) = (r(&xh, xs), r(&tail_data, ts), r(&dy, xs))
                else {
                    return Err(internal(Error::Internal("short_conv backward sizes")));
                };
                conv_head_vjp(
                    cv,
                    (&xi, &ti, &wd[h * ws..(h + 1) * ws]),
                    &dyi,
                    &mut dx[i * xs..(i + 1) * xs],
                    &mut dt[i * ts..(i + 1) * ts],
                    &mut dw[h * ws..(h + 1) * ws],
                );
            }
            accumulate(grads, &x, &p.from_heads_first(dx, D))?;
            accumulate(grads, &w, &dw)?;
            if let Some(t) = &tail_t {
                accumulate(grads, t, &dt)?;
            }
            Ok(())
        });
    }
    Ok((out.put_tape(tape), next))
}

/// One token of `short_conv` for `step`: `x_t` (B·H x d, flat) with each head's tail
/// ((w-1) x d), updated in place to end with `x_t`. Returns the convolved, activated rows.
pub fn conv_step(cv: Conv, heads: usize, x_t: &[f32], tails: &mut [f32], w: &[f32]) -> Vec<f32> {
    let (d, w1) = (cv.d, cv.w1());
    let mut y = vec![0.0; x_t.len()];
    for (i, (xr, yr)) in x_t.chunks_exact(d).zip(y.chunks_exact_mut(d)).enumerate() {
        let h = i % heads.max(1);
        let tail = &mut tails[i * w1 * d..(i + 1) * w1 * d];
        let wh = &w[h * d * cv.width..(h + 1) * d * cv.width];
        conv_head(cv, xr, tail, wh, yr);
        let next = next_tail(cv, xr, tail);
        tail.copy_from_slice(&next);
    }
    y
}

/// [`conv_step`]'s checks and data: the weights of a step call.
pub fn step_weights<Sw: Shape<Concrete = [usize; 3]>>(
    name: &'static str,
    heads: usize,
    cv: Conv,
    w: &Tensor<Sw, f32, Cpu>,
) -> Result<Vec<f32>> {
    weights(name, heads, cv, w)
}
