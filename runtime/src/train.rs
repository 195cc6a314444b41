//! Training: the backward closure a traced `forward` records on dfdx's tape.
//!
//! The generated `forward_with_state` (and `forward`, which calls it) keeps what the backward
//! reads in a [`Saved`]: the untaped inputs (the same `Arc`s as the caller's, no copies), the
//! initial state, and the output and final state, whose gradients are read by tensor id when
//! dfdx runs the closure. [`backward`] gathers them heads first, runs the CPU backward pass
//! ([`crate::cpu::grad`]) and adds each input's gradient into its buffer by id, so a tensor
//! used twice (q and k the same tensor) or consumed by other ops too gets the sum.
//!
//! Inputs with views (permuted or broadcast strides) are made contiguous by dfdx's own traced
//! `contiguous` before the call, so the buffers here are in logical order; dfdx's op routes
//! their gradients back through the view.

use crate::check::{Problem, ScalarRule};
use crate::cpu::grad::{self, Config, Differentiable};
use crate::cpu::marshal::contiguous_data;
use crate::cpu::pool::{pooled_buffer, recycle};
use crate::error::Error;
use crate::state::State;
use attnc_codegen::abi::Signature;
use attnc_codegen::spec::Spec;
use dfdx::shapes::{Dim, HasShape, Shape};
use dfdx::tensor::{Cpu, CpuError, Gradients, Tensor};

/// What the backward of one traced `forward` call reads.
pub struct Saved<
    B: Dim,
    H: Dim,
    Sq: Shape,
    Sv: Shape,
    S3: Shape,
    Sp: Shape,
    const F: usize,
    const DV: usize,
> {
    /// q, k, v as the kernel read them (untaped).
    pub q: Tensor<Sq, f32, Cpu>,
    /// Keys.
    pub k: Tensor<Sq, f32, Cpu>,
    /// Values.
    pub v: Tensor<Sv, f32, Cpu>,
    /// Write strengths, for delta rules.
    pub beta: Option<Tensor<S3, f32, Cpu>>,
    /// Log-decays, for gated updates.
    pub g: Option<Tensor<S3, f32, Cpu>>,
    /// FAVOR+'s projection.
    pub proj: Option<Tensor<Sp, f32, Cpu>>,
    /// The initial state, when one was given.
    pub initial: Option<State<B, H, F, DV>>,
    /// The output (its gradient is dL/do).
    pub out: Tensor<Sv, f32, Cpu>,
    /// The final state returned to the caller (its gradients are dL/dS_N, dL/dz_N); `None` for
    /// softmax attention.
    pub last: Option<State<B, H, F, DV>>,
}

/// The error the closure may return: dfdx's backward ops can only return `CpuError`. Every
/// input was validated by the forward, so this is reached only through a broken invariant.
pub(crate) fn internal(_: Error) -> CpuError {
    CpuError::WrongNumElements
}

/// A gradient's current value by id (zeros when nothing consumed the tensor), copied into a
/// pooled buffer (a fresh one would fault in every page of dL/do).
pub(crate) fn gradient_of<S: Shape>(
    grads: &mut Gradients<f32, Cpu>,
    t: &Tensor<S, f32, Cpu>,
) -> Result<Vec<f32>, CpuError> {
    let g = grads.get_or_alloc_mut(t)?;
    let mut out = pooled_buffer(g.len());
    out.copy_from_slice(g);
    Ok(out)
}

/// Adds `delta` (logical order) into the gradient of `t`.
pub(crate) fn accumulate<S: Shape>(
    grads: &mut Gradients<f32, Cpu>,
    t: &Tensor<S, f32, Cpu>,
    delta: &[f32],
) -> Result<(), CpuError> {
    let buf = grads.get_or_alloc_mut(t)?;
    if buf.len() != delta.len() {
        return Err(CpuError::WrongNumElements);
    }
    for (b, d) in buf.iter_mut().zip(delta) {
        *b += d;
    }
    Ok(())
}

/// The backward of a `forward` call of the spec with signature `sig`: reads dL/do (and dL/dS_N,
/// dL/dz_N) from `grads` and adds dL/d(input) for every input.
pub fn backward<K, B, H, Sq, Sv, S3, Sp, const F: usize, const DV: usize>(
    sig: &Signature,
    spec: &Spec,
    saved: Saved<B, H, Sq, Sv, S3, Sp, F, DV>,
    grads: &mut Gradients<f32, Cpu>,
) -> Result<(), CpuError>
where
    K: Differentiable,
    B: Dim,
    H: Dim,
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
    S3: Shape<Concrete = [usize; 3]>,
    Sp: Shape<Concrete = [usize; 2]>,
{
    let cfg = Config::new(spec, K::BACKWARD, K::phi_rows, K::dphi_rows);
    let p = Problem::from_q(sig.layout, saved.q.shape().concrete()).map_err(internal)?;
    let bh = p.batch * p.heads;
    let (f, dv) = (cfg.f, cfg.dv);
    let tokens =
        |name, t: &Tensor<Sq, f32, Cpu>| p.gather_tokens(name, t, sig.dk).map_err(internal);
    // Through the forward's checks, so the backward reads the log-decays the forward read
    // (clamped to LOG_DECAY_FLOOR: `-inf` would make its gradients NaN).
    let scalars = |name, rule, t: &Option<Tensor<S3, f32, Cpu>>| match t {
        Some(t) => p.gather_rule_scalars(name, rule, t).map_err(internal),
        None => Ok(Vec::new()),
    };
    let (s0, z0) = match (&saved.initial, cfg.softmax) {
        (_, true) => (Vec::new(), Vec::new()),
        (Some(st), false) => {
            let (s, z) = st
                .to_vecs(p.batch, p.heads, cfg.normalized)
                .map_err(internal)?;
            (s, z.unwrap_or_default())
        }
        (None, false) => (
            vec![0.0; bh * f * dv],
            if cfg.normalized {
                vec![0.0; bh * f]
            } else {
                Vec::new()
            },
        ),
    };
    let d_o = p.heads_first(gradient_of(grads, &saved.out)?, dv);
    let (d_s, d_z) = match &saved.last {
        Some(st) => (
            gradient_of(grads, &st.s)?,
            match &st.z {
                Some(z) if cfg.normalized => gradient_of(grads, z)?,
                _ => Vec::new(),
            },
        ),
        None => (Vec::new(), Vec::new()),
    };
    let inputs = grad::Inputs {
        bh,
        n: p.tokens,
        q: tokens("q", &saved.q)?,
        k: tokens("k", &saved.k)?,
        v: p.gather_tokens("v", &saved.v, dv).map_err(internal)?,
        beta: scalars("beta", ScalarRule::WriteStrength, &saved.beta)?,
        g: scalars("g", ScalarRule::LogDecay, &saved.g)?,
        proj: saved.proj.as_ref().map(contiguous_data).unwrap_or_default(),
        s0,
        z0,
        d_o,
        o: if cfg.softmax {
            p.gather_tokens("o", &saved.out, dv).map_err(internal)?
        } else {
            Vec::new()
        },
        d_s,
        d_z,
    };
    let g = grad::run(&cfg, &inputs).map_err(internal)?;
    recycle([inputs.q, inputs.k, inputs.v, inputs.d_o]);
    let (gq, gk, gv) = (
        p.from_heads_first(g.q, sig.dk),
        p.from_heads_first(g.k, sig.dk),
        p.from_heads_first(g.v, dv),
    );
    accumulate(grads, &saved.q, &gq)?;
    accumulate(grads, &saved.k, &gk)?;
    accumulate(grads, &saved.v, &gv)?;
    recycle([gq, gk, gv]);
    if let Some(beta) = &saved.beta {
        accumulate(grads, beta, &p.from_heads_first(g.beta, 1))?;
    }
    if let Some(gt) = &saved.g {
        accumulate(grads, gt, &p.from_heads_first(g.g, 1))?;
    }
    if let Some(proj) = &saved.proj {
        accumulate(grads, proj, &g.proj)?;
    }
    if let Some(st) = &saved.initial {
        accumulate(grads, &st.s, &g.s0)?;
        if let Some(z) = &st.z {
            if cfg.normalized {
                accumulate(grads, z, &g.z0)?;
            }
        }
    }
    Ok(())
}
