//! The systems of the spec language that run around the generated chunk program:
//! `update = momentum(mu = ..)` ([`momentum`]), `short_conv = w` ([`conv`]) and
//! `rpe = toeplitz` ([`rpe`]).
//!
//! The generated entry points of such a spec call the functions here. Each applies the spec's
//! `qk_norm`, feature map and scale exactly as the generated kernels do (the backward's
//! [`crate::cpu::grad::maps`], with the generated elementwise map), runs its own kernel over
//! (batch, head) problems on the thread pool, and records its backward on dfdx's tape.
//! A spec with `short_conv` alone runs the convolution ([`conv::short_conv`], its own op on the
//! tape) and then the spec's generated chunk program.

pub mod conv;
mod entry;
mod features;
pub mod momentum;
pub mod rpe;
pub(crate) mod state;

pub use entry::{
    conv3, conv_forward, rpe_has_no_step, systems_step, with_tails, ExtDecodeState, ExtStepState,
    StepExtras, ToeplitzHasNoStep,
};
pub use state::{ExtBuffers, ExtState};

use crate::check::{checked, Problem};
use crate::cpu::dispatch::{dispatch, Job};
use crate::cpu::grad::{Config, Differentiable};
use crate::cpu::isa::{CpuIsa, Isa};
use crate::cpu::pool::{pooled_buffer, recycle};
use crate::error::{Error, Result};
use crate::train::{accumulate, gradient_of, internal};
use attnc_codegen::abi::Signature;
use attnc_codegen::spec::{Mask, Spec};
use dfdx::shapes::{Dim, HasShape, Shape};
use dfdx::tensor::{Cpu, Merge, PutTape, SplitTape, Tape, Tensor};
use features::{augment, join_state, map_rows, map_rows_vjp, output_grads, outputs, split_state};
use rayon::prelude::*;
use std::borrow::Cow;

/// The backward's view of a spec's base (the feature map the systems apply), from its
/// generated kernel `K`.
fn config<K: Differentiable>(spec: &Spec) -> Config {
    Config::new(&spec.base(), K::BACKWARD, K::phi_rows, K::dphi_rows)
}

/// Splits the tapes off q, k, v (made contiguous first when recording) and merges them.
#[allow(clippy::type_complexity)]
fn untape<Sq, Sv, T, Tk, Tv>(
    q: Tensor<Sq, f32, Cpu, T>,
    k: Tensor<Sq, f32, Cpu, Tk>,
    v: Tensor<Sv, f32, Cpu, Tv>,
) -> Result<([Tensor<Sq, f32, Cpu>; 2], Tensor<Sv, f32, Cpu>, T, bool)>
where
    Sq: Shape,
    Sv: Shape,
    T: Tape<f32, Cpu> + Merge<Tk> + Merge<Tv>,
    Tk: Tape<f32, Cpu>,
    Tv: Tape<f32, Cpu>,
{
    let traced = T::OWNS_TAPE || Tk::OWNS_TAPE || Tv::OWNS_TAPE;
    let (q, k, v) = if traced {
        (
            crate::api::contiguous(q)?,
            crate::api::contiguous(k)?,
            crate::api::contiguous(v)?,
        )
    } else {
        (q, k, v)
    };
    let (q, tq) = q.split_tape();
    let (k, tk) = k.split_tape();
    let (v, tv) = v.split_tape();
    Ok(([q, k], v, tq.merge(tk).merge(tv), traced))
}

/// Per-(batch, head) slices of a heads-first buffer.
fn heads(x: &[f32], bh: usize) -> Vec<&[f32]> {
    let len = x.len() / bh.max(1);
    (0..bh).map(|i| &x[i * len..(i + 1) * len]).collect()
}

// ---------------------------------------------------------------------------------------------
// momentum

/// The momentum forward of one (batch, head), through the ISA trampoline.
struct MomentumForward<'a> {
    d: momentum::Dims,
    wt: &'a momentum::Weights,
    qkv: (&'a [f32], &'a [f32], &'a [f32]),
    s: &'a mut [f32],
    m: &'a mut [f32],
    out: &'a mut [f32],
    chunk_states: &'a mut [f32],
}

impl Job for MomentumForward<'_> {
    #[inline(always)]
    fn run<I: Isa>(self, isa: I) -> Result<()> {
        momentum::forward_head(
            isa,
            self.d,
            self.wt,
            self.qkv,
            self.s,
            self.m,
            self.out,
            self.chunk_states,
        );
        Ok(())
    }
}

/// The momentum backward of one (batch, head).
struct MomentumBackward<'a> {
    d: momentum::Dims,
    wt: &'a momentum::Weights,
    qkv: (&'a [f32], &'a [f32], &'a [f32]),
    chunk_states: &'a [f32],
    d_o: &'a [f32],
    g: momentum::HeadGrads<'a>,
}

impl Job for MomentumBackward<'_> {
    #[inline(always)]
    fn run<I: Isa>(self, isa: I) -> Result<()> {
        momentum::backward_head(
            isa,
            self.d,
            self.wt,
            self.qkv,
            self.chunk_states,
            self.d_o,
            self.g,
        );
        Ok(())
    }
}

/// One head's momentum problem in the kernel's terms: feature-mapped q, k (pooled buffers),
/// v augmented with ones under the normaliser (else v itself, borrowed).
struct MappedHead<'a> {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Cow<'a, [f32]>,
}

impl MappedHead<'_> {
    /// Gives the feature buffers back to the pool.
    fn recycle(self) {
        recycle([self.q, self.k]);
    }
}

fn map_head<'a>(cfg: &Config, (q, k, v): (&[f32], &[f32], &'a [f32])) -> MappedHead<'a> {
    let n = q.len() / cfg.dk.max(1);
    let (mut qf, mut kf) = (pooled_buffer(n * cfg.f), pooled_buffer(n * cfg.f));
    map_rows(cfg, q, cfg.scale, &mut qf);
    map_rows(cfg, k, 1.0, &mut kf);
    let v = match cfg.normalized {
        true => Cow::Owned(augment(v, cfg.dv, true)),
        false => Cow::Borrowed(v),
    };
    MappedHead { q: qf, k: kf, v }
}

/// What a momentum call computes per head: the outputs (n x DV), the final state, and (for
/// the backward) the augmented outputs and the chunk-start states.
struct HeadResult {
    out: Vec<f32>,
    s: Vec<f32>,
    m: Vec<f32>,
    oa: Vec<f32>,
    chunk_states: Vec<f32>,
}

fn momentum_head(
    cfg: &Config,
    isa: CpuIsa,
    wt: &momentum::Weights,
    x: (&[f32], &[f32], &[f32]),
    (s0, m0): (Vec<f32>, Vec<f32>),
    keep_states: bool,
) -> Result<HeadResult> {
    let mh = map_head(cfg, x);
    let da = cfg.dv + usize::from(cfg.normalized);
    let n = x.0.len() / cfg.dk.max(1);
    let d = momentum::Dims {
        n,
        f: cfg.f,
        da,
        chunk: cfg.chunk,
    };
    let (mut s, mut m) = (s0, m0);
    // Every row of the outputs is written by the kernel: no zeroing.
    let mut oa = pooled_buffer(n * da);
    let chunks = n.div_ceil(cfg.chunk);
    let mut chunk_states = match keep_states {
        true => vec![0.0; 2 * chunks * cfg.f * da],
        false => Vec::new(),
    };
    let job = MomentumForward {
        d,
        wt,
        qkv: (&mh.q, &mh.k, &mh.v),
        s: &mut s,
        m: &mut m,
        out: &mut oa,
        chunk_states: &mut chunk_states,
    };
    dispatch(isa, job)?;
    mh.recycle();
    let out = if cfg.normalized || keep_states {
        let mut out = pooled_buffer(n * cfg.dv);
        outputs(&oa, cfg.dv, cfg.normalized, cfg.sum_eps, &mut out);
        out
    } else {
        std::mem::take(&mut oa)
    };
    Ok(HeadResult {
        out,
        s,
        m,
        oa,
        chunk_states,
    })
}

/// Heads-first inputs and state of a momentum call.
struct MomentumCall<'a> {
    cfg: &'a Config,
    mu: f32,
    bh: usize,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    st: &'a ExtBuffers,
}

/// `[S | z]` and `[m | n]` of head `i` of the state buffers `st`.
fn head_state(cfg: &Config, st: &ExtBuffers, i: usize) -> (Vec<f32>, Vec<f32>) {
    let (f, dv, nz) = (cfg.f, cfg.dv, cfg.normalized);
    let part = |x: &[f32], len: usize| x.get(i * len..(i + 1) * len).unwrap_or(&[]).to_vec();
    let (s, z) = (part(&st.s, f * dv), part(&st.z, f));
    let (m, n) = (part(&st.m, f * dv), part(&st.n, f));
    (join_state(&s, &z, dv, nz), join_state(&m, &n, dv, nz))
}

impl MomentumCall<'_> {
    fn run(&self, keep_states: bool) -> Result<Vec<HeadResult>> {
        let isa = CpuIsa::selected()?;
        let wt = momentum::Weights::new(self.mu, self.cfg.chunk);
        let (qs, ks, vs) = (
            heads(self.q, self.bh),
            heads(self.k, self.bh),
            heads(self.v, self.bh),
        );
        (0..self.bh)
            .into_par_iter()
            .map(|i| {
                momentum_head(
                    self.cfg,
                    isa,
                    &wt,
                    (qs[i], ks[i], vs[i]),
                    head_state(self.cfg, self.st, i),
                    keep_states,
                )
            })
            .collect()
    }
}

/// Gathers the momentum results into the output (heads first) and the final state buffers.
fn gather_results(cfg: &Config, results: Vec<HeadResult>) -> (Vec<f32>, ExtBuffers) {
    let len: usize = results.iter().map(|r| r.out.len()).sum();
    let mut out = pooled_buffer(len);
    let mut st = ExtBuffers::default();
    let mut at = 0;
    for r in results {
        out[at..at + r.out.len()].copy_from_slice(&r.out);
        at += r.out.len();
        recycle([r.out, r.oa]);
        split_state(&r.s, cfg.dv, cfg.normalized, &mut st.s, &mut st.z);
        split_state(&r.m, cfg.dv, cfg.normalized, &mut st.m, &mut st.n);
    }
    (out, st)
}

/// `forward_with_state` of a momentum spec (after its short convolution, if any): returns the
/// output (in `v`'s shape, carrying q's tape merged with k's and v's) and the final state.
/// `tails` are the next convolution tails to put in the state (empty without `short_conv`).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn momentum_forward<
    K,
    B,
    H,
    Sq,
    Sv,
    T,
    Tk,
    Tv,
    const F: usize,
    const DK: usize,
    const DV: usize,
>(
    spec: &Spec,
    sig: &Signature,
    (b, h): (B, H),
    q: Tensor<Sq, f32, Cpu, T>,
    k: Tensor<Sq, f32, Cpu, Tk>,
    v: Tensor<Sv, f32, Cpu, Tv>,
    initial: Option<&ExtState<B, H, F, DK, DV>>,
    tails: [Vec<f32>; 3],
) -> Result<(Tensor<Sv, f32, Cpu, T>, ExtState<B, H, F, DK, DV>)>
where
    K: Differentiable + crate::cpu::kernel::Recurrent,
    B: Dim,
    H: Dim,
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
    T: Tape<f32, Cpu> + Merge<Tk> + Merge<Tv>,
    Tk: Tape<f32, Cpu>,
    Tv: Tape<f32, Cpu>,
{
    let cfg = config::<K>(spec);
    let mu = spec.momentum.unwrap_or(0.0);
    let ([q, k], v, mut tape, traced) = untape(q, k, v)?;
    let p = Problem::from_q(spec.layout, q.shape().concrete())?;
    let bh = p.batch * p.heads;
    let init = ExtState::<B, H, F, DK, DV>::initial_buffers(initial, p.batch, p.heads, spec)?;
    let (qh, kh, vh) = (
        p.gather_tokens("q", &q, cfg.dk)?,
        p.gather_tokens("k", &k, cfg.dk)?,
        p.gather_tokens("v", &v, cfg.dv)?,
    );
    let (out, mut fin) = if mu == 0.0 {
        additive_forward::<K, B, H, Sq, Sv, F, DV>(
            &cfg,
            sig,
            (b, h),
            (&q, &k, &v),
            &kh,
            &vh,
            &init,
            bh,
        )?
    } else {
        let call = MomentumCall {
            cfg: &cfg,
            mu,
            bh,
            q: &qh,
            k: &kh,
            v: &vh,
            st: &init,
        };
        gather_results(&cfg, call.run(false)?)
    };
    fin.tails = tails;
    let w1 = spec.conv_tail();
    let state = ExtState::from_buffers(b, h, w1, fin)?;
    let o = crate::api::output_tensor(&q, p.from_heads_first(out, cfg.dv), *v.shape())?;
    if traced {
        let saved = (o.clone(), state.clone(), initial.cloned());
        let spec = spec.clone();
        tape.add_backward_op(move |grads| {
            let (o, last, initial) = &saved;
            momentum_backward(
                &spec,
                &cfg,
                p,
                (&q, &k, &v),
                (qh, kh, vh),
                init,
                (o, last, initial.as_ref()),
                grads,
            )
        });
    }
    Ok((o.put_tape(tape), state))
}

/// `mu = 0`: the additive update, through the spec's generated kernel so that the outputs
/// and `S` equal `update = additive` bit for bit; `m_N = k~_N v_N^T` (and `n_N = k~_N`).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn additive_forward<K, B, H, Sq, Sv, const F: usize, const DV: usize>(
    cfg: &Config,
    sig: &Signature,
    (b, h): (B, H),
    (q, k, v): (
        &Tensor<Sq, f32, Cpu>,
        &Tensor<Sq, f32, Cpu>,
        &Tensor<Sv, f32, Cpu>,
    ),
    kh: &[f32],
    vh: &[f32],
    init: &ExtBuffers,
    bh: usize,
) -> Result<(Vec<f32>, ExtBuffers)>
where
    K: crate::cpu::kernel::Recurrent,
    B: Dim,
    H: Dim,
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
{
    let z = cfg.normalized.then(|| init.z.clone());
    let base = crate::state::State::<B, H, F, DV>::from_vecs(b, h, init.s.clone(), z)?;
    let none3: Option<&Tensor<(usize, usize, usize), f32, Cpu>> = None;
    let none2: Option<&Tensor<(usize, usize), f32, Cpu>> = None;
    let (out, st) = crate::api::forward::<K, B, H, Sq, Sv, _, _, F, DV>(
        sig,
        (b, h),
        q,
        k,
        v,
        none3,
        none3,
        none2,
        Some(&base),
    )?;
    let (s, z) = st.to_vecs(st.batch(), st.heads(), cfg.normalized)?;
    let p = Problem::from_q(sig.layout, q.shape().concrete())?;
    let out = p.heads_first(out, cfg.dv);
    let mut fin = ExtBuffers {
        s,
        z: z.unwrap_or_default(),
        ..ExtBuffers::default()
    };
    let (n, f, dk, dv) = (p.tokens, cfg.f, cfg.dk, cfg.dv);
    let mut kf = vec![0.0; f];
    for i in 0..bh {
        let last = (i * n + n - 1) * dk;
        map_rows(cfg, &kh[last..last + dk], 1.0, &mut kf);
        let vl = &vh[(i * n + n - 1) * dv..(i * n + n) * dv];
        for ki in &kf {
            fin.m.extend(vl.iter().map(|x| ki * x));
        }
        if cfg.normalized {
            fin.n.extend_from_slice(&kf);
        }
    }
    Ok((out, fin))
}

/// The backward of [`momentum_forward`].
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn momentum_backward<B, H, Sq, Sv, const F: usize, const DK: usize, const DV: usize>(
    spec: &Spec,
    cfg: &Config,
    p: Problem,
    (q, k, v): (
        &Tensor<Sq, f32, Cpu>,
        &Tensor<Sq, f32, Cpu>,
        &Tensor<Sv, f32, Cpu>,
    ),
    (qh, kh, vh): (Vec<f32>, Vec<f32>, Vec<f32>),
    init: ExtBuffers,
    (o, last, initial): (
        &Tensor<Sv, f32, Cpu>,
        &ExtState<B, H, F, DK, DV>,
        Option<&ExtState<B, H, F, DK, DV>>,
    ),
    grads: &mut dfdx::tensor::Gradients<f32, Cpu>,
) -> std::result::Result<(), dfdx::tensor::CpuError>
where
    B: Dim,
    H: Dim,
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
{
    let (bh, n, f, dk, dv, nz) = (
        p.batch * p.heads,
        p.tokens,
        cfg.f,
        cfg.dk,
        cfg.dv,
        cfg.normalized,
    );
    let da = dv + usize::from(nz);
    let mu = spec.momentum.unwrap_or(0.0);
    let d_o = p.heads_first(gradient_of(grads, o)?, dv);
    let d_fin = ExtBuffers {
        s: gradient_of(grads, &last.s)?,
        z: match &last.z {
            Some(z) => gradient_of(grads, z)?,
            None => Vec::new(),
        },
        m: match &last.m {
            Some(m) => gradient_of(grads, m)?,
            None => Vec::new(),
        },
        n: match &last.n {
            Some(x) => gradient_of(grads, x)?,
            None => Vec::new(),
        },
        tails: Default::default(),
    };
    let call = MomentumCall {
        cfg,
        mu,
        bh,
        q: &qh,
        k: &kh,
        v: &vh,
        st: &init,
    };
    let fwd = call.run(true).map_err(internal)?;
    let isa = CpuIsa::selected().map_err(internal)?;
    let wt = momentum::Weights::new(mu, cfg.chunk);
    let (qs, ks, vs, ds) = (
        heads(&qh, bh),
        heads(&kh, bh),
        heads(&vh, bh),
        heads(&d_o, bh),
    );
    let per_head: Vec<Result<(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)>> = (0..bh)
        .into_par_iter()
        .map(|i| {
            let mh = map_head(cfg, (qs[i], ks[i], vs[i]));
            let doa = output_grads(&fwd[i].oa, ds[i], dv, nz, cfg.sum_eps);
            let (mut ds_a, mut dm_a) = head_state(cfg, &d_fin, i);
            let (mut dqf, mut dkf, mut dva) =
                (vec![0.0; n * f], vec![0.0; n * f], vec![0.0; n * da]);
            let job = MomentumBackward {
                d: momentum::Dims {
                    n,
                    f,
                    da,
                    chunk: cfg.chunk,
                },
                wt: &wt,
                qkv: (&mh.q, &mh.k, &mh.v),
                chunk_states: &fwd[i].chunk_states,
                d_o: &doa,
                g: momentum::HeadGrads {
                    dq: &mut dqf,
                    dk: &mut dkf,
                    dv: &mut dva,
                    ds: &mut ds_a,
                    dm: &mut dm_a,
                },
            };
            dispatch(isa, job)?;
            let (mut dq, mut dk_) = (vec![0.0; n * dk], vec![0.0; n * dk]);
            map_rows_vjp(cfg, qs[i], cfg.scale, &dqf, &mut dq);
            map_rows_vjp(cfg, ks[i], 1.0, &dkf, &mut dk_);
            let dv_: Vec<f32> = dva
                .chunks_exact(da)
                .flat_map(|r| r[..dv].iter().copied())
                .collect();
            Ok((dq, dk_, dv_, ds_a, dm_a))
        })
        .collect();
    let (mut gq, mut gk, mut gv) = (Vec::new(), Vec::new(), Vec::new());
    let mut g0 = ExtBuffers::default();
    for r in per_head {
        let (dq, dk_, dv_, ds_a, dm_a) = r.map_err(internal)?;
        gq.extend(dq);
        gk.extend(dk_);
        gv.extend(dv_);
        split_state(&ds_a, dv, nz, &mut g0.s, &mut g0.z);
        split_state(&dm_a, dv, nz, &mut g0.m, &mut g0.n);
    }
    accumulate(grads, q, &p.from_heads_first(gq, dk))?;
    accumulate(grads, k, &p.from_heads_first(gk, dk))?;
    accumulate(grads, v, &p.from_heads_first(gv, dv))?;
    if let Some(st) = initial {
        accumulate(grads, &st.s, &g0.s)?;
        if let Some(z) = &st.z {
            accumulate(grads, z, &g0.z)?;
        }
        if let Some(m) = &st.m {
            accumulate(grads, m, &g0.m)?;
        }
        if let Some(x) = &st.n {
            accumulate(grads, x, &g0.n)?;
        }
    }
    Ok(())
}

/// One momentum step on state buffers `st` for q_t, k_t, v_t (B·H rows each, after the
/// convolution if any): returns o_t (B·H x DV) and the next buffers (tails kept). With
/// `mu = 0` the spec's generated step runs (so it equals `update = additive` bit for bit).
pub(crate) fn momentum_step_buffers<K>(
    spec: &Spec,
    sig: &Signature,
    mut st: ExtBuffers,
    p: &Problem,
    (q_t, k_t, v_t): (&[f32], &[f32], &[f32]),
) -> Result<(Vec<f32>, ExtBuffers)>
where
    K: Differentiable + crate::cpu::kernel::Recurrent,
{
    let cfg = config::<K>(spec);
    let mu = spec.momentum.unwrap_or(0.0);
    let bh = p.batch * p.heads;
    let (f, dv, dk, nz) = (cfg.f, cfg.dv, cfg.dk, cfg.normalized);
    let da = dv + usize::from(nz);
    let tails = std::mem::take(&mut st.tails);
    let mut new = ExtBuffers::default();
    let mut out = vec![0.0; bh * dv];
    if mu == 0.0 {
        let mut bufs = crate::cpu::schedule::Buffers {
            q: q_t.to_vec(),
            k: k_t.to_vec(),
            v: v_t.to_vec(),
            beta: Vec::new(),
            g: Vec::new(),
            proj: Vec::new(),
            s: std::mem::take(&mut st.s),
            z: std::mem::take(&mut st.z),
        };
        out = K::run_step_all(p, [sig.dk, sig.dv, sig.f], &mut bufs)?;
        (new.s, new.z) = (bufs.s, bufs.z);
    }
    let (mut qf, mut kf, mut oa) = (vec![0.0; f], vec![0.0; f], vec![0.0; da]);
    for i in 0..bh {
        map_rows(&cfg, &k_t[i * dk..(i + 1) * dk], 1.0, &mut kf);
        let va = augment(&v_t[i * dv..(i + 1) * dv], dv, nz);
        if mu == 0.0 {
            // m = k~ v^T (and n = k~): the last token's write.
            for ki in &kf {
                new.m.extend(va[..dv].iter().map(|x| ki * x));
            }
            if nz {
                new.n.extend_from_slice(&kf);
            }
            continue;
        }
        let (mut sa, mut ma) = head_state(&cfg, &st, i);
        map_rows(&cfg, &q_t[i * dk..(i + 1) * dk], cfg.scale, &mut qf);
        momentum::step_head(mu, &qf, &kf, &va, &mut sa, &mut ma, &mut oa);
        outputs(&oa, dv, nz, cfg.sum_eps, &mut out[i * dv..(i + 1) * dv]);
        split_state(&sa, dv, nz, &mut new.s, &mut new.z);
        split_state(&ma, dv, nz, &mut new.m, &mut new.n);
    }
    new.tails = tails;
    Ok((out, new))
}

// ---------------------------------------------------------------------------------------------
// rpe

/// Checks the log-weights `b` (H, 2N - 1) and returns them.
fn rpe_bias<Sb: Shape<Concrete = [usize; 2]>>(
    p: &Problem,
    b: &Tensor<Sb, f32, Cpu>,
) -> Result<Vec<f32>> {
    let got = b.shape().concrete();
    let expected = [p.heads, 2 * p.tokens - 1];
    if got != expected {
        return Err(Error::ShapeMismatch {
            arg: "bias",
            expected: expected.to_vec(),
            got: got.to_vec(),
            axes: "(H, 2N - 1)",
        });
    }
    checked("bias", crate::cpu::marshal::contiguous_data(b))
}

/// One rpe head's mapped inputs as f64 columns.
struct RpeHead {
    q: Vec<Vec<f64>>,
    k: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
}

fn rpe_head(cfg: &Config, x: (&[f32], &[f32], &[f32])) -> RpeHead {
    let mh = map_head(cfg, x);
    let da = cfg.dv + usize::from(cfg.normalized);
    RpeHead {
        q: rpe::columns(&mh.q, cfg.f),
        k: rpe::columns(&mh.k, cfg.f),
        v: rpe::columns(&mh.v, da),
    }
}

/// Features per parallel task of the rpe kernels: a head's F x DV transform pairs are split
/// over the threads (one head at H = 1 uses every core), each task summing into its own
/// buffer, added at the end.
const RPE_FEATURES_PER_TASK: usize = 8;

fn feature_ranges(f: usize) -> Vec<std::ops::Range<usize>> {
    (0..f)
        .step_by(RPE_FEATURES_PER_TASK)
        .map(|a| a..(a + RPE_FEATURES_PER_TASK).min(f))
        .collect()
}

/// The augmented outputs of one rpe head (n x da, f32).
fn rpe_outputs(op: &rpe::Toeplitz, h: &RpeHead) -> Vec<f32> {
    let len = op.n * h.v.len();
    let oa = feature_ranges(h.q.len())
        .into_par_iter()
        .fold(
            || vec![0.0f64; len],
            |mut acc, fs| {
                rpe::forward_features(op, (&h.q, &h.k, &h.v), fs, &mut acc);
                acc
            },
        )
        .reduce(
            || vec![0.0f64; len],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                a
            },
        );
    oa.iter().map(|&x| x as f32).collect()
}

/// `forward` of an `rpe = toeplitz` spec (after its short convolution, if any): `bias` holds
/// the per-offset log-weights, (H, 2N - 1) with `bias[h, (s - t) + N - 1]`.
pub fn rpe_forward<K, Sq, Sv, Sb, T, Tk, Tv, Tb>(
    spec: &Spec,
    q: Tensor<Sq, f32, Cpu, T>,
    k: Tensor<Sq, f32, Cpu, Tk>,
    v: Tensor<Sv, f32, Cpu, Tv>,
    bias: Tensor<Sb, f32, Cpu, Tb>,
) -> Result<Tensor<Sv, f32, Cpu, T>>
where
    K: Differentiable,
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
    Sb: Shape<Concrete = [usize; 2]>,
    T: Tape<f32, Cpu> + Merge<Tk> + Merge<Tv> + Merge<Tb>,
    Tk: Tape<f32, Cpu>,
    Tv: Tape<f32, Cpu>,
    Tb: Tape<f32, Cpu>,
{
    let cfg = config::<K>(spec);
    let causal = spec.mask == Mask::Causal;
    let ([q, k], v, tape, traced) = untape(q, k, v)?;
    let traced = traced || Tb::OWNS_TAPE;
    let (bias, tb) = bias.split_tape();
    let mut tape = tape.merge(tb);
    let p = Problem::from_q(spec.layout, q.shape().concrete())?;
    let (bh, n, dv, nz) = (p.batch * p.heads, p.tokens, cfg.dv, cfg.normalized);
    let b = rpe_bias(&p, &bias)?;
    let (qh, kh, vh) = (
        p.gather_tokens("q", &q, cfg.dk)?,
        p.gather_tokens("k", &k, cfg.dk)?,
        p.gather_tokens("v", &v, cfg.dv)?,
    );
    let plans = rpe::Plans::new(n);
    let (qs, ks, vs) = (heads(&qh, bh), heads(&kh, bh), heads(&vh, bh));
    let bl = 2 * n - 1;
    let out: Vec<f32> = (0..bh)
        .into_par_iter()
        .flat_map_iter(|i| {
            let hb = &b[(i % p.heads) * bl..(i % p.heads + 1) * bl];
            let op = rpe::Toeplitz::new(&plans, n, hb, causal);
            let oa = rpe_outputs(&op, &rpe_head(&cfg, (qs[i], ks[i], vs[i])));
            let mut o = vec![0.0; n * dv];
            outputs(&oa, dv, nz, cfg.sum_eps, &mut o);
            o
        })
        .collect();
    let o = crate::api::output_tensor(&q, p.from_heads_first(out, dv), *v.shape())?;
    if traced {
        let saved_o = o.clone();
        tape.add_backward_op(move |grads| {
            let d_o = p.heads_first(gradient_of(grads, &saved_o)?, dv);
            let (dq, dk, dv_, db) = rpe_backward(&cfg, &p, causal, (&qh, &kh, &vh), &b, &d_o);
            accumulate(grads, &q, &p.from_heads_first(dq, cfg.dk))?;
            accumulate(grads, &k, &p.from_heads_first(dk, cfg.dk))?;
            accumulate(grads, &v, &p.from_heads_first(dv_, dv))?;
            accumulate(grads, &bias, &db)
        });
    }
    Ok(o.put_tape(tape))
}

/// One rpe head's dq, dk, dv (f32) and db (f64, summed over the batch afterwards).
type RpeHeadGrads = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f64>);

/// The backward of [`rpe_forward`]: heads-first dq, dk, dv and db (H x (2N - 1)).
fn rpe_backward(
    cfg: &Config,
    p: &Problem,
    causal: bool,
    (qh, kh, vh): (&[f32], &[f32], &[f32]),
    b: &[f32],
    d_o: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (bh, n, dv, dk, nz) = (p.batch * p.heads, p.tokens, cfg.dv, cfg.dk, cfg.normalized);
    let da = dv + usize::from(nz);
    let plans = rpe::Plans::new(n);
    let bl = 2 * n - 1;
    let (qs, ks, vs, ds) = (heads(qh, bh), heads(kh, bh), heads(vh, bh), heads(d_o, bh));
    let per_head: Vec<RpeHeadGrads> = (0..bh)
        .into_par_iter()
        .map(|i| {
            let hb = &b[(i % p.heads) * bl..(i % p.heads + 1) * bl];
            let op = rpe::Toeplitz::new(&plans, n, hb, causal);
            let head = rpe_head(cfg, (qs[i], ks[i], vs[i]));
            let oa = rpe_outputs(&op, &head);
            let doa = output_grads(&oa, ds[i], dv, nz, cfg.sum_eps);
            let doc = rpe::columns(&doa, da);
            let zeros = || rpe::Partial::zeros(&op, head.q.len(), da);
            let partial = feature_ranges(head.q.len())
                .into_par_iter()
                .fold(zeros, |acc, fs| {
                    rpe::backward_features(&op, (&head.q, &head.k, &head.v), &doc, fs, acc)
                })
                .reduce(zeros, rpe::Partial::sum);
            let g = rpe::finish(&op, partial, causal);
            let f32s = |x: &[f64]| x.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let (mut dq, mut dkk) = (vec![0.0; n * dk], vec![0.0; n * dk]);
            map_rows_vjp(cfg, qs[i], cfg.scale, &f32s(&g.dq), &mut dq);
            map_rows_vjp(cfg, ks[i], 1.0, &f32s(&g.dk), &mut dkk);
            let dvv: Vec<f32> =
                g.dv.chunks_exact(da)
                    .flat_map(|r| r[..dv].iter().map(|&x| x as f32))
                    .collect();
            (dq, dkk, dvv, g.db)
        })
        .collect();
    let (mut gq, mut gk, mut gv) = (Vec::new(), Vec::new(), Vec::new());
    let mut db = vec![0.0f64; p.heads * bl];
    for (i, (dq, dkk, dvv, dbh)) in per_head.into_iter().enumerate() {
        gq.extend(dq);
        gk.extend(dkk);
        gv.extend(dvv);
        let h = i % p.heads;
        db[h * bl..(h + 1) * bl]
            .iter_mut()
            .zip(&dbh)
            .for_each(|(a, x)| *a += x);
    }
    (gq, gk, gv, db.iter().map(|&x| x as f32).collect())
}
