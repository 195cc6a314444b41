//! What generated code calls on the GPU: the CUDA halves of `forward_with_state` and `step`.
//!
//! Arguments are checked exactly as on the CPU (same errors), then the spec's kernels
//! ([`CudaLaunch::forward`] or [`CudaLaunch::step`]) are launched in order on the device's stream
//! with the one parameter list every attnc kernel has (see [`super::launch`]).

use super::backend::Buf;
use super::launch::{ClassKernels, CudaLaunch, KernelInfo};
use super::{CudaDevice, CudaState, CudaTensor};
use crate::check::{Problem, ScalarRule};
use crate::error::{Error, Result};
use crate::state::check_state;
use dfdx::shapes::{Const, Dim, Shape};

/// The buffers of one launch, in the kernels' parameter order. `None`: a parameter the spec
/// does not use (a one-float dummy is passed).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct Params<'a> {
    pub(crate) q: &'a Buf,
    pub(crate) k: &'a Buf,
    pub(crate) v: &'a Buf,
    pub(crate) beta: Option<&'a Buf>,
    pub(crate) g: Option<&'a Buf>,
    pub(crate) proj: Option<&'a Buf>,
    pub(crate) out: &'a mut Buf,
    pub(crate) s: &'a mut Buf,
    pub(crate) z: Option<&'a mut Buf>,
    pub(crate) chunk_s: &'a mut Buf,
    pub(crate) chunk_z: &'a mut Buf,
    pub(crate) work: &'a mut Buf,
    pub(crate) scratch: &'a mut Buf,
    /// `short_conv`'s and momentum's buffers.
    pub(crate) systems: SystemsBufs<'a>,
}

/// The systems' buffers of one launch ([`super::launch`]): `short_conv`'s weights and tails,
/// momentum's `m` and `n`. `None`: unused by the spec (a dummy is passed).
#[derive(Default)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct SystemsBufs<'a> {
    /// `conv_q`, `conv_k`, `conv_v`.
    pub(crate) conv: Option<[&'a Buf; 3]>,
    /// `tail_q`, `tail_k`, `tail_v`: read, then overwritten with the new tails.
    pub(crate) tails: Option<[&'a mut Buf; 3]>,
    /// `mom_s`: m, in and out.
    pub(crate) mom_s: Option<&'a mut Buf>,
    /// `mom_z`: n, in and out.
    pub(crate) mom_z: Option<&'a mut Buf>,
}

/// A state's (batch, heads) and its normaliser's (batch, heads) when it has one.
pub(crate) type StateDims = ((usize, usize), Option<(usize, usize)>);

fn state_dims<B: Dim, H: Dim, const F: usize, const DV: usize>(
    st: &CudaState<B, H, F, DV>,
) -> StateDims {
    let z =
        st.z.as_ref()
            .map(|z| (z.shape().0.size(), z.shape().1.size()));
    ((st.batch(), st.heads()), z)
}

/// The shapes of a `forward` call (all checks that need no GPU), in the CPU path's order.
pub(crate) struct ForwardShapes {
    pub(crate) q: [usize; 4],
    pub(crate) k: [usize; 4],
    pub(crate) v: [usize; 4],
    pub(crate) beta: Option<[usize; 3]>,
    pub(crate) g: Option<[usize; 3]>,
    /// FAVOR+'s projection, (F, DK).
    pub(crate) proj: Option<[usize; 2]>,
    pub(crate) state: Option<StateDims>,
    /// The (batch, heads) the returned state will have.
    pub(crate) out_bh: (usize, usize),
    /// The state's (F, DV) type parameters.
    pub(crate) f_dv: (usize, usize),
}

/// Checks the spec's constants against the state's type parameters and that the spec's
/// per-token inputs (and projection, of the right shape) are there: all are the generated
/// code's job, so a failure is internal.
fn check_spec(
    launch: &CudaLaunch,
    f_dv: (usize, usize),
    (beta, g): (bool, bool),
    proj: Option<[usize; 2]>,
    kernels: fn(&ClassKernels) -> &[KernelInfo],
) -> Result<()> {
    if f_dv != (launch.signature.f, launch.signature.dv) {
        return Err(Error::Internal(
            "the state's F and DV disagree with the spec's launch description",
        ));
    }
    if launch.signature.uses_beta && !beta {
        return Err(Error::Internal("the spec reads beta but none was passed"));
    }
    if launch.signature.uses_gates && !g {
        return Err(Error::Internal("the spec reads g but none was passed"));
    }
    match proj {
        None if launch.signature.uses_projection => {
            return Err(Error::Internal(
                "the spec reads a projection but none was passed",
            ));
        }
        Some(dims) if dims != [launch.signature.f, launch.signature.dk] => {
            return Err(Error::Internal(
                "the projection's shape disagrees with the spec's FEATURE_DIM x HEAD_DIM",
            ));
        }
        _ => {}
    }
    if launch.classes.is_empty() || launch.classes.iter().any(|c| kernels(c).is_empty()) {
        return Err(Error::Internal(
            "this spec has no CUDA kernels for this call",
        ));
    }
    Ok(())
}

/// Every shape check of [`forward_cuda`]: the same errors, in the same order, as the CPU path.
pub(crate) fn check_forward(launch: &CudaLaunch, x: &ForwardShapes) -> Result<Problem> {
    check_spec(
        launch,
        x.f_dv,
        (x.beta.is_some(), x.g.is_some()),
        x.proj,
        |c| &c.forward,
    )?;
    let p = Problem::from_q(launch.signature.layout, x.q)?;
    if x.out_bh != (p.batch, p.heads) {
        return Err(Error::Internal(
            "the batch and head dims passed for the state disagree with q",
        ));
    }
    if let Some((bh, z)) = x.state {
        check_state((p.batch, p.heads, launch.signature.normalized), bh, z)?;
    }
    p.check_tokens("q", x.q, launch.signature.dk)?;
    p.check_tokens("k", x.k, launch.signature.dk)?;
    p.check_tokens("v", x.v, launch.signature.dv)?;
    if let Some(beta) = x.beta {
        p.check_scalars("beta", beta)?;
    }
    if let Some(g) = x.g {
        p.check_scalars("g", g)?;
    }
    Ok(p)
}

/// The shapes of a `step` call.
pub(crate) struct StepShapes {
    pub(crate) q: [usize; 3],
    pub(crate) k: [usize; 3],
    pub(crate) v: [usize; 3],
    pub(crate) beta: Option<[usize; 2]>,
    pub(crate) g: Option<[usize; 2]>,
    /// FAVOR+'s projection, (F, DK).
    pub(crate) proj: Option<[usize; 2]>,
    pub(crate) state: StateDims,
    pub(crate) f_dv: (usize, usize),
}

/// Every shape check of [`step_cuda`]: the same errors, in the same order, as the CPU path.
pub(crate) fn check_step(launch: &CudaLaunch, x: &StepShapes) -> Result<Problem> {
    check_spec(
        launch,
        x.f_dv,
        (x.beta.is_some(), x.g.is_some()),
        x.proj,
        |c| &c.step,
    )?;
    let [batch, heads, _] = x.q;
    let p = Problem::step(batch, heads);
    check_state(
        (batch, heads, launch.signature.normalized),
        x.state.0,
        x.state.1,
    )?;
    p.check_heads("q_t", x.q, launch.signature.dk)?;
    p.check_heads("k_t", x.k, launch.signature.dk)?;
    p.check_heads("v_t", x.v, launch.signature.dv)?;
    if let Some(beta) = x.beta {
        p.check_head_scalars("beta_t", beta)?;
    }
    if let Some(g) = x.g {
        p.check_head_scalars("g_t", g)?;
    }
    Ok(p)
}

/// Checks a device tensor of `beta` or `g` against `rule` on the host: its values are downloaded
/// (one copy of B·H·N floats, small next to q, k and v, which stay on the GPU; the copy waits
/// for the work that writes them). Returns the buffer to launch with: `None` to use `t`'s own,
/// `Some` when log-decays were clamped ([`crate::check::LOG_DECAY_FLOOR`]) and uploaded again.
/// `per_token`: (B, H, N)-or-(B, N, H) forward scalars; otherwise a step's (B, H).
fn checked_scalars(
    ctx: &super::backend::Ctx,
    p: &Problem,
    arg: &'static str,
    rule: ScalarRule,
    t: &Buf,
    per_token: bool,
) -> Result<Option<Buf>> {
    let mut data = ctx.download(t)?;
    let clamped = if per_token {
        p.check_scalar_values(arg, rule, &mut data)?
    } else {
        p.check_head_scalar_values(arg, rule, &mut data)?
    };
    match clamped {
        true => Ok(Some(ctx.upload(&data)?)),
        false => Ok(None),
    }
}

/// `Err` unless `other` is the GPU `q` is on.
/// Checks that every argument present lives on `q`'s device.
fn same_device(q: &CudaDevice, args: &[(&str, Option<&CudaDevice>)]) -> Result<()> {
    for (arg, other) in args {
        match other {
            Some(other) if other.ordinal() != q.ordinal() => {
                return Err(Error::Device(format!(
                    "`{arg}` is on CUDA device {} but `q` is on CUDA device {}; upload every \
                     input (and the state) to the same device",
                    other.ordinal(),
                    q.ordinal()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a call's workspaces are cached by: their four lengths, in floats (so a cached set
/// always fits; calls of one spec and shape share it).
pub(crate) type WorkspaceKey = [usize; 4];

/// `forward_with_state` on the GPU: runs the spec's chunk kernels over the whole sequence and
/// returns the output (in v's shape and the spec's layout) and the final state.
///
/// `launch` and `source` are the spec's, embedded by the generated code; `(b, h)` are the batch
/// and head dims of the returned state; `proj` is FAVOR+'s projection (F x DK), `Some` exactly
/// for `feature_map = favor`. The module is compiled (NVRTC, through the PTX cache) and loaded
/// once per process and device. `initial` is copied, never modified.
///
/// `beta` and `g` are checked like the CPU path's ([`Error::InvalidScalar`], always on), on the
/// host: this costs one device-to-host copy of each (B·H·N floats) before the launch.
#[allow(clippy::too_many_arguments)]
pub fn forward_cuda<B: Dim, H: Dim, Sq, Sv, S3, Sp, const F: usize, const DV: usize>(
    launch: &CudaLaunch,
    source: &'static str,
    (b, h): (B, H),
    q: &CudaTensor<Sq>,
    k: &CudaTensor<Sq>,
    v: &CudaTensor<Sv>,
    beta: Option<&CudaTensor<S3>>,
    g: Option<&CudaTensor<S3>>,
    proj: Option<&CudaTensor<Sp>>,
    initial: Option<&CudaState<B, H, F, DV>>,
) -> Result<(CudaTensor<Sv>, CudaState<B, H, F, DV>)>
where
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
    S3: Shape<Concrete = [usize; 3]>,
    Sp: Shape<Concrete = [usize; 2]>,
{
    let p = check_forward(
        launch,
        &ForwardShapes {
            q: q.shape().concrete(),
            k: k.shape().concrete(),
            v: v.shape().concrete(),
            beta: beta.map(|t| t.shape().concrete()),
            g: g.map(|t| t.shape().concrete()),
            proj: proj.map(|t| t.shape().concrete()),
            state: initial.map(state_dims),
            out_bh: (b.size(), h.size()),
            f_dv: (F, DV),
        },
    )?;
    let dev = q.device();
    same_device(
        dev,
        &[
            ("k", Some(k.device())),
            ("v", Some(v.device())),
            ("beta", beta.map(CudaTensor::device)),
            ("g", g.map(CudaTensor::device)),
            ("proj", proj.map(CudaTensor::device)),
            ("the state", initial.map(CudaState::device)),
        ],
    )?;
    let ctx = dev.ctx();
    let bh = p.batch * p.heads;
    let (mut s, mut z) = match initial {
        Some(st) => (ctx.copy(st.s.buf())?, copy_opt(ctx, st.z.as_ref())?),
        None => (
            ctx.zeros(bh * F * DV)?,
            zeros_if(ctx, launch.signature.normalized, bh * F)?,
        ),
    };
    let out = launch_call(
        Call::new((launch, source), &p, true, (q, k, v), (beta, g, proj)),
        (&mut s, z.as_mut()),
        SystemsBufs::default(),
    )?;
    let state = CudaState {
        s: CudaTensor::wrap(s, (b, h, Const::<F>, Const::<DV>), dev),
        z: z.map(|z| CudaTensor::wrap(z, (b, h, Const::<F>), dev)),
    };
    Ok((CudaTensor::wrap(out, *v.shape(), dev), state))
}

/// `step` on the GPU: one token per (batch, head); updates `state` and returns o_t in v_t's
/// shape, (B, H, DV).
///
/// `q_t`, `k_t` (B, H, DK), `v_t` (B, H, DV), `beta_t`, `g_t` (B, H), `proj` (F, DK) for
/// `feature_map = favor` (the one `forward` took). The kernels update `state` in place (no copy
/// of S per token); every argument check runs before the first launch, so a rejected call
/// leaves `state` as it was.
///
/// `beta_t` and `g_t` are checked like the CPU path's ([`Error::InvalidScalar`], always on), on
/// the host: this costs one device-to-host copy of each (B·H floats) before the launch.
#[allow(clippy::too_many_arguments)]
pub fn step_cuda<B: Dim, H: Dim, Sk, Sv, S2, Sp, const F: usize, const DV: usize>(
    launch: &CudaLaunch,
    source: &'static str,
    state: &mut CudaState<B, H, F, DV>,
    q_t: &CudaTensor<Sk>,
    k_t: &CudaTensor<Sk>,
    v_t: &CudaTensor<Sv>,
    beta_t: Option<&CudaTensor<S2>>,
    g_t: Option<&CudaTensor<S2>>,
    proj: Option<&CudaTensor<Sp>>,
) -> Result<CudaTensor<Sv>>
where
    Sk: Shape<Concrete = [usize; 3]>,
    Sv: Shape<Concrete = [usize; 3]>,
    S2: Shape<Concrete = [usize; 2]>,
    Sp: Shape<Concrete = [usize; 2]>,
{
    let p = check_step(
        launch,
        &StepShapes {
            q: q_t.shape().concrete(),
            k: k_t.shape().concrete(),
            v: v_t.shape().concrete(),
            beta: beta_t.map(|t| t.shape().concrete()),
            g: g_t.map(|t| t.shape().concrete()),
            proj: proj.map(|t| t.shape().concrete()),
            state: state_dims(state),
            f_dv: (F, DV),
        },
    )?;
    let dev = q_t.device();
    same_device(
        dev,
        &[
            ("k_t", Some(k_t.device())),
            ("v_t", Some(v_t.device())),
            ("beta_t", beta_t.map(CudaTensor::device)),
            ("g_t", g_t.map(CudaTensor::device)),
            ("proj", proj.map(CudaTensor::device)),
            ("the state", Some(state.device())),
        ],
    )?;
    // In place: no copy of S per token. Every check above runs before any kernel.
    let CudaState { s, z } = state;
    let out = launch_call(
        Call::new(
            (launch, source),
            &p,
            false,
            (q_t, k_t, v_t),
            (beta_t, g_t, proj),
        ),
        (&mut s.buf, z.as_mut().map(|z| &mut z.buf)),
        SystemsBufs::default(),
    )?;
    Ok(CudaTensor::wrap(out, *v_t.shape(), dev))
}

/// One `forward` or `step` call's inputs, checked for shape ([`check_forward`], [`check_step`]).
pub(crate) struct Call<'a> {
    pub(crate) dev: &'a CudaDevice,
    pub(crate) launch: &'a CudaLaunch,
    pub(crate) source: &'static str,
    pub(crate) p: &'a Problem,
    /// `forward` (the `forward` kernels over `p.tokens`) or `step` (one token).
    pub(crate) forward: bool,
    /// q, k, v.
    pub(crate) inputs: [&'a Buf; 3],
    /// Floats of the output (v's).
    pub(crate) out_len: usize,
    pub(crate) beta: Option<&'a Buf>,
    pub(crate) g: Option<&'a Buf>,
    pub(crate) proj: Option<&'a Buf>,
}

/// Per-token scalars (`beta`, `g`) and the projection of a call, `None` where unused.
pub type Extras<'a, S3, Sp> = (
    Option<&'a CudaTensor<S3>>,
    Option<&'a CudaTensor<S3>>,
    Option<&'a CudaTensor<Sp>>,
);

impl<'a> Call<'a> {
    /// A call on `q`'s device: `forward` (the `forward` kernels) or `step`.
    pub(crate) fn new<Sq: Shape, Sk: Shape, Sv: Shape, S3: Shape, Sp: Shape>(
        (launch, source): (&'a CudaLaunch, &'static str),
        p: &'a Problem,
        forward: bool,
        (q, k, v): (&'a CudaTensor<Sq>, &'a CudaTensor<Sk>, &'a CudaTensor<Sv>),
        (beta, g, proj): Extras<'a, S3, Sp>,
    ) -> Self {
        Call {
            dev: q.device(),
            launch,
            source,
            p,
            forward,
            inputs: [q.buf(), k.buf(), v.buf()],
            out_len: v.len(),
            beta: beta.map(CudaTensor::buf),
            g: g.map(CudaTensor::buf),
            proj: proj.map(CudaTensor::buf),
        }
    }
}

/// Checks `beta` and `g` (on the host, like the CPU path: [`Error::InvalidScalar`]), then
/// launches the call's kernels on `state` (`s`, `z`, updated in place) and `systems`; returns
/// the output.
pub(crate) fn launch_call(
    c: Call<'_>,
    (s, z): (&mut Buf, Option<&mut Buf>),
    systems: SystemsBufs<'_>,
) -> Result<Buf> {
    let (p, ctx) = (c.p, c.dev.ctx());
    let (names, per_token) = match c.forward {
        true => (["beta", "g"], true),
        false => (["beta_t", "g_t"], false),
    };
    let beta_clamped = match c.beta {
        Some(t) => checked_scalars(ctx, p, names[0], ScalarRule::WriteStrength, t, per_token)?,
        None => None,
    };
    let g_clamped = match c.g {
        Some(t) => checked_scalars(ctx, p, names[1], ScalarRule::LogDecay, t, per_token)?,
        None => None,
    };
    let class = c.launch.kernels(c.dev.smem_class()).ok_or(Error::Internal(
        "the spec's launch has no kernels for this GPU's shared-memory class",
    ))?;
    let (kernels, n) = match c.forward {
        true => (&class.forward, p.tokens),
        false => (&class.step, 1),
    };
    let bh = p.batch * p.heads;
    let mut out = ctx.zeros(c.out_len)?;
    let w = c.launch.workspace(kernels, bh, n);
    let key = [w.chunk_s, w.chunk_z, w.work, w.scratch];
    let [mut chunk_s, mut chunk_z, mut work, mut scratch] = ctx.take_workspaces(key)?;
    let [q, k, v] = c.inputs;
    let ran = ctx.run(
        c.dev,
        c.source,
        c.launch,
        kernels,
        (bh, n, p.heads),
        Params {
            q,
            k,
            v,
            beta: beta_clamped.as_ref().or(c.beta),
            g: g_clamped.as_ref().or(c.g),
            proj: c.proj,
            out: &mut out,
            s,
            z,
            chunk_s: &mut chunk_s,
            chunk_z: &mut chunk_z,
            work: &mut work,
            scratch: &mut scratch,
            systems,
        },
    );
    ctx.give_back_workspaces(key, [chunk_s, chunk_z, work, scratch]);
    ran.map(|()| out)
}

/// A device copy of `t`'s buffer, if there is a `t`.
pub(crate) fn copy_opt<S: Shape>(
    ctx: &super::backend::Ctx,
    t: Option<&CudaTensor<S>>,
) -> Result<Option<Buf>> {
    t.map(|t| ctx.copy(t.buf())).transpose()
}

/// `len` zeros on the device when `on`.
pub(crate) fn zeros_if(ctx: &super::backend::Ctx, on: bool, len: usize) -> Result<Option<Buf>> {
    on.then(|| ctx.zeros(len)).transpose()
}
