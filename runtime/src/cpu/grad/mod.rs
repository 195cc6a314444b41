//! The backward pass on the CPU: what a traced `forward` records on dfdx's tape.
//!
//! - [`chunked`]: linear attention with additive and gated updates, both masks, the normaliser
//!   and every feature map; `delta`: the delta rules in the WY form, on `chunked`'s pieces;
//! - [`softmax`]: exact softmax attention (FlashAttention-2's backward);
//! - [`maps`]: `qk_norm` and the feature maps with their vector-Jacobian products; elementwise
//!   maps come from the generated kernel ([`Differentiable`], phi' differentiated at build time).
//!
//! [`run`] spreads the (batch, head) problems over the threads, each through the ISA
//! trampoline selected for the process, like the forward's head schedule; when that would leave
//! threads idle (the forward's [`Schedule`] rule), the chunkwise algorithm runs each head's
//! chunks in parallel instead ([`chunked::head_by_chunks`]: per-chunk terms in parallel, scans
//! over chunk states for S and, in reverse, for dS and dz).

pub mod chunked;
mod delta;
pub(crate) mod gemm;
pub mod maps;
pub mod softmax;
pub(crate) mod vecops;

pub use maps::{dphi_rows, phi_rows, Differentiable};

use crate::cpu::dispatch::{dispatch, Job};
use crate::cpu::isa::{CpuIsa, Isa};
use crate::cpu::pool::pooled_buffer;
use crate::cpu::schedule::Schedule;
use crate::error::Result;
use attnc_codegen::abi::{BackwardAlgorithm, BackwardPlan};
use attnc_codegen::spec::{FeatureMap, Mask, Normalize, QkNorm, Spec, Update};
use rayon::prelude::*;

/// Which update rule, as the backward needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateKind {
    /// S += k v^T.
    Additive,
    /// S = exp(g) S + k v^T.
    Gated,
    /// The delta rule.
    Delta,
    /// The gated delta rule.
    GatedDelta,
}

impl UpdateKind {
    /// Whether the update decays the state by exp(g).
    pub fn gated(self) -> bool {
        matches!(self, UpdateKind::Gated | UpdateKind::GatedDelta)
    }

    /// Whether the update is a delta rule.
    pub fn delta(self) -> bool {
        matches!(self, UpdateKind::Delta | UpdateKind::GatedDelta)
    }
}

/// The feature map's family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Map {
    /// phi applied to each element ([`Differentiable::phi`]).
    Elementwise,
    /// Based's second-order Taylor map.
    Taylor2,
    /// DPFP with its `nu`.
    Dpfp(usize),
    /// FAVOR+ positive random features.
    Favor,
}

/// What the backward needs of a spec.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// dk, dv and F.
    pub dk: usize,
    /// dv.
    pub dv: usize,
    /// F.
    pub f: usize,
    /// The chunk length: the stride of the saved states.
    pub chunk: usize,
    /// The query scale.
    pub scale: f32,
    /// The update rule.
    pub update: UpdateKind,
    /// `mask = causal`.
    pub causal: bool,
    /// `normalize = sum`.
    pub normalized: bool,
    /// `qk_norm = l2`.
    pub l2: bool,
    /// The eps of `qk_norm`.
    pub l2_eps: f32,
    /// The eps of the normaliser.
    pub sum_eps: f32,
    /// The feature map, `None` for softmax attention.
    pub map: Map,
    /// Exact softmax attention.
    pub softmax: bool,
    /// The algorithm and what is saved (from the plan).
    pub plan: BackwardPlan,
    /// The elementwise map over a row (generated per spec; unused by the other maps).
    pub phi_rows: RowMap,
    /// `dx += g * phi'(x)` over a row, a zero `g` staying zero (generated per spec).
    pub dphi_rows: RowVjp,
}

/// An elementwise map over a row: `out = phi(x)`.
pub type RowMap = fn(x: &[f32], out: &mut [f32]);
/// Its vector-Jacobian product over a row: `dx += g * phi'(x)`.
pub type RowVjp = fn(x: &[f32], g: &[f32], dx: &mut [f32]);

impl Config {
    /// The backward's view of `spec`, whose elementwise map (if any) is `phi_rows`, `dphi_rows`
    /// ([`phi_rows`]/[`dphi_rows`] of the generated kernel).
    pub fn new(spec: &Spec, plan: BackwardPlan, phi_rows: RowMap, dphi_rows: RowVjp) -> Config {
        let map = match spec.feature_map {
            FeatureMap::Taylor2 => Map::Taylor2,
            FeatureMap::Dpfp { nu } => Map::Dpfp(nu),
            FeatureMap::Favor { .. } => Map::Favor,
            _ => Map::Elementwise,
        };
        Config {
            dk: spec.head_dim,
            dv: spec.value_dim,
            f: spec.feature_dim(),
            chunk: spec.chunk,
            scale: spec.scale_value(),
            update: match spec.update {
                Update::Additive => UpdateKind::Additive,
                Update::Gated => UpdateKind::Gated,
                Update::Delta => UpdateKind::Delta,
                Update::GatedDelta => UpdateKind::GatedDelta,
            },
            causal: spec.mask == Mask::Causal,
            normalized: spec.normalize == Normalize::Sum,
            l2: spec.qk_norm == QkNorm::L2,
            l2_eps: attnc_codegen::plan::L2_EPS,
            sum_eps: attnc_codegen::plan::NORMALIZER_EPS,
            map,
            softmax: spec.feature_map == FeatureMap::Softmax,
            plan,
            phi_rows,
            dphi_rows,
        }
    }
}

/// One (batch, head)'s inputs, heads first, and the gradients of its outputs.
pub struct HeadInputs<'a> {
    /// Tokens.
    pub n: usize,
    /// q, k (N x DK), v (N x DV).
    pub q: &'a [f32],
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// Write strengths (N) or empty.
    pub beta: &'a [f32],
    /// Log-decays (N) or empty.
    pub g: &'a [f32],
    /// FAVOR+'s projection, (F x DK) as the user passed it, or empty.
    pub proj: &'a [f32],
    /// The initial state (F x DV; zeros when none was given) and normaliser (F or empty).
    pub s0: &'a [f32],
    /// See `s0`.
    pub z0: &'a [f32],
    /// dL/do (N x DV).
    pub d_o: &'a [f32],
    /// The forward's output (N x DV): softmax's D = rowsum(dO ⊙ O); empty otherwise.
    pub o: &'a [f32],
    /// dL/dS_N (F x DV) or empty (zero).
    pub d_s: &'a [f32],
    /// dL/dz_N (F) or empty (zero).
    pub d_z: &'a [f32],
}

/// One (batch, head)'s gradients (written, not accumulated, except `dproj`).
pub struct HeadGrads<'a> {
    /// dq (N x DK).
    pub dq: &'a mut [f32],
    /// dk (N x DK).
    pub dk: &'a mut [f32],
    /// dv (N x DV).
    pub dv: &'a mut [f32],
    /// dbeta (N) or empty.
    pub dbeta: &'a mut [f32],
    /// dg (N) or empty.
    pub dg: &'a mut [f32],
    /// d proj (F x DK), accumulated over the heads of one task, or empty.
    pub dproj: &'a mut [f32],
    /// dS_0 (F x DV), empty for softmax.
    pub ds0: &'a mut [f32],
    /// dz_0 (F) or empty.
    pub dz0: &'a mut [f32],
}

/// Heads-first inputs of a whole call (B x H problems).
pub struct Inputs {
    /// (B, H) problems and N tokens.
    pub bh: usize,
    /// Tokens.
    pub n: usize,
    /// q, k (B, H, N, DK).
    pub q: Vec<f32>,
    /// Keys.
    pub k: Vec<f32>,
    /// Values (B, H, N, DV).
    pub v: Vec<f32>,
    /// (B, H, N) or empty.
    pub beta: Vec<f32>,
    /// (B, H, N) or empty.
    pub g: Vec<f32>,
    /// (F, DK) or empty.
    pub proj: Vec<f32>,
    /// (B, H, F, DV), zeros when no initial state was given; empty for softmax.
    pub s0: Vec<f32>,
    /// (B, H, F) or empty.
    pub z0: Vec<f32>,
    /// dL/do, (B, H, N, DV).
    pub d_o: Vec<f32>,
    /// The forward's output (B, H, N, DV) for softmax attention, else empty.
    pub o: Vec<f32>,
    /// dL/dS_N (B, H, F, DV) or empty.
    pub d_s: Vec<f32>,
    /// dL/dz_N (B, H, F) or empty.
    pub d_z: Vec<f32>,
}

/// Heads-first gradients of a whole call; a field is empty where the spec has no such input.
#[derive(Debug, Default)]
pub struct Grads {
    /// (B, H, N, DK).
    pub q: Vec<f32>,
    /// (B, H, N, DK).
    pub k: Vec<f32>,
    /// (B, H, N, DV).
    pub v: Vec<f32>,
    /// (B, H, N).
    pub beta: Vec<f32>,
    /// (B, H, N).
    pub g: Vec<f32>,
    /// (F, DK), summed over (batch, head).
    pub proj: Vec<f32>,
    /// (B, H, F, DV).
    pub s0: Vec<f32>,
    /// (B, H, F).
    pub z0: Vec<f32>,
}

/// Splits `v` into `parts` equal slices (empty slices when `v` is empty).
fn split_mut(v: &mut [f32], parts: usize) -> Vec<&mut [f32]> {
    if v.is_empty() {
        return (0..parts).map(|_| <&mut [f32]>::default()).collect();
    }
    let len = v.len() / parts.max(1);
    v.chunks_mut(len.max(1)).collect()
}

/// As [`split_mut`], shared.
fn split(v: &[f32], parts: usize) -> Vec<&[f32]> {
    if v.is_empty() {
        return vec![&[]; parts];
    }
    let len = v.len() / parts.max(1);
    v.chunks(len.max(1)).collect()
}

/// One (batch, head)'s backward as an ISA job.
struct HeadJob<'a, 'b> {
    cfg: &'a Config,
    x: HeadInputs<'a>,
    out: HeadGrads<'b>,
}

impl Job for HeadJob<'_, '_> {
    #[inline(always)]
    fn run<I: Isa>(mut self, isa: I) -> Result<()> {
        match self.cfg.plan.algorithm {
            BackwardAlgorithm::FlashTiles => softmax::head(isa, self.cfg, &self.x, &mut self.out),
            BackwardAlgorithm::Chunkwise if self.cfg.update.delta() => {
                delta::head(isa, self.cfg, &self.x, &mut self.out)
            }
            BackwardAlgorithm::Chunkwise => chunked::head(isa, self.cfg, &self.x, &mut self.out),
        }
        Ok(())
    }
}

/// Whether the call runs the chunk-parallel backward: the forward's rule ([`Schedule`]) for the
/// chunkwise algorithm with a causal mask: forced by `Schedule::Chunks`, or under `Auto` when
/// splitting by (batch, head) would leave threads idle.
fn by_chunks(cfg: &Config, bh: usize, n: usize) -> bool {
    if cfg.plan.algorithm != BackwardAlgorithm::Chunkwise || !cfg.causal || cfg.update.delta() {
        return false;
    }
    let chunks = n.div_ceil(cfg.chunk.max(1));
    let threads = rayon::current_num_threads();
    match Schedule::selected() {
        _ if chunks < 2 => false,
        Schedule::Heads => false,
        Schedule::Chunks => true,
        Schedule::Auto => {
            let rounds = bh.div_ceil(threads.max(1));
            threads > 1 && 4 * bh < 3 * rounds * threads && chunks >= 2 * threads
        }
    }
}

/// The gradients of every input of a call, (batch, head) problems in parallel.
pub fn run(cfg: &Config, x: &Inputs) -> Result<Grads> {
    let isa = CpuIsa::selected()?;
    let (bh, n) = (x.bh, x.n);
    let (f, dv, dk) = (cfg.f, cfg.dv, cfg.dk);
    let sized = |v: &[f32], len: usize| {
        if v.is_empty() {
            Vec::new()
        } else {
            vec![0.0; len]
        }
    };
    // Pooled: fresh multi-MB buffers cost page faults on first touch. The linear attention
    // backwards write every row of dq, dk and dv; softmax's adds each key tile's terms, so
    // only its buffers are zeroed first.
    let rows = |len: usize| {
        let mut b = pooled_buffer(len);
        if cfg.softmax {
            b.fill(0.0);
        }
        b
    };
    let mut g = Grads {
        q: rows(bh * n * dk),
        k: rows(bh * n * dk),
        v: rows(bh * n * dv),
        beta: sized(&x.beta, bh * n),
        g: sized(&x.g, bh * n),
        proj: Vec::new(),
        s0: if cfg.softmax {
            Vec::new()
        } else {
            vec![0.0; bh * f * dv]
        },
        z0: if cfg.normalized && !cfg.softmax {
            vec![0.0; bh * f]
        } else {
            Vec::new()
        },
    };
    let proj_len = x.proj.len();
    let (q, k, v) = (split(&x.q, bh), split(&x.k, bh), split(&x.v, bh));
    let (beta, gl) = (split(&x.beta, bh), split(&x.g, bh));
    let (s0, z0) = (split(&x.s0, bh), split(&x.z0, bh));
    let (d_o, d_s, d_z) = (split(&x.d_o, bh), split(&x.d_s, bh), split(&x.d_z, bh));
    let o = split(&x.o, bh);
    let outs: Vec<_> = split_mut(&mut g.q, bh)
        .into_iter()
        .zip(split_mut(&mut g.k, bh))
        .zip(split_mut(&mut g.v, bh))
        .zip(split_mut(&mut g.beta, bh))
        .zip(split_mut(&mut g.g, bh))
        .zip(split_mut(&mut g.s0, bh))
        .zip(split_mut(&mut g.z0, bh))
        .enumerate()
        .collect();
    let chunk_parallel = by_chunks(cfg, bh, n);
    let one_head = |(i, ((((((dq, dk), dv), dbeta), dg), ds0), dz0))| {
        let mut dproj = vec![0.0; proj_len];
        let mut job = HeadJob {
            cfg,
            x: HeadInputs {
                n,
                q: q[i],
                k: k[i],
                v: v[i],
                beta: beta[i],
                g: gl[i],
                proj: &x.proj,
                s0: s0[i],
                z0: z0[i],
                d_o: d_o[i],
                o: o[i],
                d_s: d_s[i],
                d_z: d_z[i],
            },
            out: HeadGrads {
                dq,
                dk,
                dv,
                dbeta,
                dg,
                dproj: &mut dproj,
                ds0,
                dz0,
            },
        };
        if chunk_parallel {
            chunked::head_by_chunks(isa, cfg, &job.x, &mut job.out)?;
        } else {
            dispatch(isa, job)?;
        }
        Ok(dproj)
    };
    // Heads in parallel, or one head at a time with its chunks in parallel.
    let dprojs: Vec<Result<Vec<f32>>> = if chunk_parallel {
        outs.into_iter().map(one_head).collect()
    } else {
        outs.into_par_iter().map(one_head).collect()
    };
    let mut proj = vec![0.0; proj_len];
    for d in dprojs {
        for (p, x) in proj.iter_mut().zip(d?) {
            *p += x;
        }
    }
    g.proj = proj;
    Ok(g)
}
