//! The entry points generated code calls for specs with systems: the convolution of q, k and
//! v, one `step`, and the pieces that keep a spec's generated `step` a compile error where it
//! cannot exist.

use super::conv::{conv_all, conv_step, short_conv, step_weights, Conv};
use super::momentum_step_buffers;
use super::state::{ExtBuffers, ExtState};
use crate::check::{Problem, ScalarRule};
use crate::cpu::grad::Differentiable;
use crate::cpu::kernel::Recurrent;
use crate::cpu::pool::recycle;
use crate::cpu::schedule::Buffers;
use crate::error::{Error, Result};
use crate::state::State;
use attnc_codegen::abi::Signature;
use attnc_codegen::spec::Spec;
use dfdx::shapes::{Dim, HasShape, Shape};
use dfdx::tensor::{Cpu, Merge, Tape, Tensor};

/// The short convolutions of q, k and v (`short_conv = w`), each a dfdx op on the tape, from the
/// tails of `initial` (zeros without one). Returns the convolved tensors (their tapes merged
/// with the weights') and the next tails.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn conv3<
    B,
    H,
    Sq,
    Sv,
    Sw,
    Swv,
    T,
    Tk,
    Tv,
    Tcq,
    Tck,
    Tcv,
    const F: usize,
    const DK: usize,
    const DV: usize,
>(
    spec: &Spec,
    (q, k, v): (
        Tensor<Sq, f32, Cpu, T>,
        Tensor<Sq, f32, Cpu, Tk>,
        Tensor<Sv, f32, Cpu, Tv>,
    ),
    (cq, ck, cv): (
        Tensor<Sw, f32, Cpu, Tcq>,
        Tensor<Sw, f32, Cpu, Tck>,
        Tensor<Swv, f32, Cpu, Tcv>,
    ),
    initial: Option<&ExtState<B, H, F, DK, DV>>,
) -> Result<(
    (
        Tensor<Sq, f32, Cpu, T>,
        Tensor<Sq, f32, Cpu, Tk>,
        Tensor<Sv, f32, Cpu, Tv>,
    ),
    [Vec<f32>; 3],
)>
where
    B: Dim,
    H: Dim,
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
    Sw: Shape<Concrete = [usize; 3]>,
    Swv: Shape<Concrete = [usize; 3]>,
    T: Tape<f32, Cpu> + Merge<Tcq>,
    Tk: Tape<f32, Cpu> + Merge<Tck>,
    Tv: Tape<f32, Cpu> + Merge<Tcv>,
    Tcq: Tape<f32, Cpu>,
    Tck: Tape<f32, Cpu>,
    Tcv: Tape<f32, Cpu>,
{
    let width = spec.short_conv.unwrap_or(1);
    let p = Problem::from_q(spec.layout, q.shape().concrete())?;
    let tails = match initial {
        Some(st) => Some(st.to_buffers(p.batch, p.heads, spec)?.tails),
        None => None,
    };
    let [tq, tk, tv] = tails.map_or([None, None, None], |[a, b, c]| [Some(a), Some(b), Some(c)]);
    let tail_q = initial.and_then(|s| s.conv_q.as_ref()).zip(tq);
    let tail_k = initial.and_then(|s| s.conv_k.as_ref()).zip(tk);
    let tail_v = initial.and_then(|s| s.conv_v.as_ref()).zip(tv);
    let (q, nq) = short_conv::<B, H, _, _, _, _, DK>(&p, "conv_q", width, q, cq, tail_q)?;
    let (k, nk) = short_conv::<B, H, _, _, _, _, DK>(&p, "conv_k", width, k, ck, tail_k)?;
    let (v, nv) = short_conv::<B, H, _, _, _, _, DV>(&p, "conv_v", width, v, cv, tail_v)?;
    Ok(((q, k, v), [nq, nk, nv]))
}

/// `forward_with_state` of a spec with `short_conv` (and no momentum) when no tape records:
/// the convolution runs on the heads-first copies the chunk program reads anyway (the copy
/// dfdx forces), straight into the kernel's buffers, so it costs one pass over each input and
/// no tensor in between. Returns the output in the spec's layout and the final state.
#[allow(clippy::too_many_arguments)]
pub fn conv_forward<
    K,
    B,
    H,
    Sq,
    Sv,
    S3,
    Sw,
    Swv,
    Sp,
    const F: usize,
    const DK: usize,
    const DV: usize,
>(
    spec: &Spec,
    sig: &Signature,
    (q, k, v): StepTokens<'_, Sq, Sv>,
    (beta, g): TokenScalars<'_, S3>,
    (cq, ck, cv): ConvWeights<'_, Sw, Swv>,
    proj: Option<&Tensor<Sp, f32, Cpu>>,
    initial: Option<&ExtState<B, H, F, DK, DV>>,
) -> Result<(Vec<f32>, ExtState<B, H, F, DK, DV>)>
where
    K: Recurrent,
    B: Dim,
    H: Dim,
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
    S3: Shape<Concrete = [usize; 3]>,
    Sw: Shape<Concrete = [usize; 3]>,
    Swv: Shape<Concrete = [usize; 3]>,
    Sp: Shape<Concrete = [usize; 2]>,
{
    let width = spec.short_conv.unwrap_or(1);
    let p = Problem::from_q(spec.layout, q.shape().concrete())?;
    let (b, h) = match initial {
        Some(st) => (st.s.shape().0, st.s.shape().1),
        None => (
            B::from_size(p.batch).ok_or(Error::Internal("batch dim"))?,
            H::from_size(p.heads).ok_or(Error::Internal("heads dim"))?,
        ),
    };
    let mut init = ExtState::<B, H, F, DK, DV>::initial_buffers(initial, p.batch, p.heads, spec)?;
    let (ckq, cvv) = (Conv { d: sig.dk, width }, Conv { d: sig.dv, width });
    let conv = |x: Vec<f32>, cv: Conv, w: Vec<f32>, tail: &mut Vec<f32>| -> Result<Vec<f32>> {
        let (y, next) = conv_all(cv, p.heads, &x, tail, &w)?;
        recycle([x]);
        *tail = next;
        Ok(y)
    };
    let [tq, tk, tv] = &mut init.tails;
    let qy = conv(
        p.gather_tokens("q", q, sig.dk)?,
        ckq,
        step_weights("conv_q", p.heads, ckq, cq)?,
        tq,
    )?;
    let ky = conv(
        p.gather_tokens("k", k, sig.dk)?,
        ckq,
        step_weights("conv_k", p.heads, ckq, ck)?,
        tk,
    )?;
    let vy = conv(
        p.gather_tokens("v", v, sig.dv)?,
        cvv,
        step_weights("conv_v", p.heads, cvv, cv)?,
        tv,
    )?;
    let mut bufs = Buffers {
        q: qy,
        k: ky,
        v: vy,
        beta: beta.map_or(Ok(Vec::new()), |t| {
            p.gather_rule_scalars("beta", ScalarRule::WriteStrength, t)
        })?,
        g: g.map_or(Ok(Vec::new()), |t| {
            p.gather_rule_scalars("g", ScalarRule::LogDecay, t)
        })?,
        proj: crate::api::projection(sig, proj)?,
        s: std::mem::take(&mut init.s),
        z: std::mem::take(&mut init.z),
    };
    let out = K::run_all(&p, [sig.dk, sig.dv, sig.f], &mut bufs)?;
    recycle([bufs.q, bufs.k, bufs.v]);
    let next = ExtBuffers {
        s: bufs.s,
        z: bufs.z,
        tails: std::mem::take(&mut init.tails),
        ..ExtBuffers::default()
    };
    let state = ExtState::from_buffers(b, h, width - 1, next)?;
    Ok((p.from_heads_first(out, sig.dv), state))
}

/// The state a spec with `short_conv` (and no momentum) returns: its chunk program's `State`
/// with the next tails.
pub fn with_tails<B: Dim, H: Dim, const F: usize, const DK: usize, const DV: usize>(
    spec: &Spec,
    state: State<B, H, F, DV>,
    tails: [Vec<f32>; 3],
) -> Result<ExtState<B, H, F, DK, DV>> {
    let (b, h) = (state.s.shape().0, state.s.shape().1);
    let (s, z) = state.to_vecs(b.size(), h.size(), state.z.is_some())?;
    let bufs = ExtBuffers {
        s,
        z: z.unwrap_or_default(),
        tails,
        ..ExtBuffers::default()
    };
    ExtState::from_buffers(b, h, spec.conv_tail(), bufs)
}

/// The convolution weights of q, k and v, by reference.
pub type ConvWeights<'a, Sw, Swv> = (
    &'a Tensor<Sw, f32, Cpu>,
    &'a Tensor<Sw, f32, Cpu>,
    &'a Tensor<Swv, f32, Cpu>,
);

/// beta and g (each where the spec takes it), by reference.
pub type TokenScalars<'a, S3> = (
    Option<&'a Tensor<S3, f32, Cpu>>,
    Option<&'a Tensor<S3, f32, Cpu>>,
);

/// q, k, v (of one token, or of a whole call), by reference.
pub type StepTokens<'a, Sk, Sv> = (
    &'a Tensor<Sk, f32, Cpu>,
    &'a Tensor<Sk, f32, Cpu>,
    &'a Tensor<Sv, f32, Cpu>,
);

/// The optional inputs of a systems spec's `step` besides q_t, k_t, v_t.
pub struct StepExtras<'a, S2: Shape, Sw: Shape, Swv: Shape, Sp: Shape> {
    /// beta_t (B, H).
    pub beta: Option<&'a Tensor<S2, f32, Cpu>>,
    /// g_t (B, H).
    pub g: Option<&'a Tensor<S2, f32, Cpu>>,
    /// The convolution weights of q, k, v.
    pub conv: Option<ConvWeights<'a, Sw, Swv>>,
    /// FAVOR+'s projection.
    pub proj: Option<&'a Tensor<Sp, f32, Cpu>>,
}

/// `step` of a spec with momentum and/or `short_conv`, on an [`ExtState`] or an
/// [`ExtDecodeState`] ([`ExtStepState`]): checks every input, convolves the token with the
/// state's tails (updating them), then runs the momentum recurrence or the spec's generated
/// step. Returns o_t, (B, H, DV) flat.
#[allow(clippy::too_many_arguments)]
pub fn systems_step<K, St, Sk, Sv, S2, Sw, Swv, Sp>(
    spec: &Spec,
    sig: &Signature,
    state: &mut St,
    (q_t, k_t, v_t): StepTokens<'_, Sk, Sv>,
    extras: StepExtras<'_, S2, Sw, Swv, Sp>,
) -> Result<Vec<f32>>
where
    K: Differentiable + Recurrent,
    St: ExtStepState,
    Sk: Shape<Concrete = [usize; 3]>,
    Sv: Shape<Concrete = [usize; 3]>,
    S2: Shape<Concrete = [usize; 2]>,
    Sw: Shape<Concrete = [usize; 3]>,
    Swv: Shape<Concrete = [usize; 3]>,
    Sp: Shape<Concrete = [usize; 2]>,
{
    let [batch, heads, _] = q_t.shape().concrete();
    let p = Problem::step(batch, heads);
    // Every input is checked before the state is touched.
    let (q, k, v) = (
        p.gather_heads("q_t", q_t, sig.dk)?,
        p.gather_heads("k_t", k_t, sig.dk)?,
        p.gather_heads("v_t", v_t, sig.dv)?,
    );
    let conv = match (spec.short_conv, extras.conv) {
        (Some(width), Some((cq, ck, cv))) => {
            let (ckq, cvv) = (Conv { d: sig.dk, width }, Conv { d: sig.dv, width });
            Some((
                (ckq, cvv),
                step_weights("conv_q", heads, ckq, cq)?,
                step_weights("conv_k", heads, ckq, ck)?,
                step_weights("conv_v", heads, cvv, cv)?,
            ))
        }
        _ => None,
    };
    let beta = extras.beta.map_or(Ok(Vec::new()), |t| {
        p.gather_rule_head_scalars("beta_t", ScalarRule::WriteStrength, t)
    })?;
    let g = extras.g.map_or(Ok(Vec::new()), |t| {
        p.gather_rule_head_scalars("g_t", ScalarRule::LogDecay, t)
    })?;
    let proj = crate::api::projection(sig, extras.proj)?;
    state.update(batch, heads, spec, |st| {
        let (mut q, mut k, mut v) = (q, k, v);
        if let Some(((ckq, cvv), wq, wk, wv)) = &conv {
            let [tq, tk, tv] = &mut st.tails;
            q = conv_step(*ckq, heads, &q, tq, wq);
            k = conv_step(*ckq, heads, &k, tk, wk);
            v = conv_step(*cvv, heads, &v, tv, wv);
        }
        if spec.momentum.is_some() {
            let (out, next) =
                momentum_step_buffers::<K>(spec, sig, std::mem::take(st), &p, (&q, &k, &v))?;
            *st = next;
            return Ok(out);
        }
        let mut bufs = Buffers {
            q,
            k,
            v,
            beta,
            g,
            proj,
            s: std::mem::take(&mut st.s),
            z: std::mem::take(&mut st.z),
        };
        let out = K::run_step_all(&p, [sig.dk, sig.dv, sig.f], &mut bufs);
        (st.s, st.z) = (bufs.s, bufs.z);
        out
    })
}

/// A state `systems_step` can update: [`ExtState`] (copied out of its tensors and back) or
/// [`ExtDecodeState`] (updated in place).
pub trait ExtStepState {
    /// Checks the state against a step's batch and head counts and what `spec` carries, then
    /// runs `update` on its buffers.
    fn update<R>(
        &mut self,
        batch: usize,
        heads: usize,
        spec: &Spec,
        update: impl FnOnce(&mut ExtBuffers) -> Result<R>,
    ) -> Result<R>;
}

impl<B: Dim, H: Dim, const F: usize, const DK: usize, const DV: usize> ExtStepState
    for ExtState<B, H, F, DK, DV>
{
    fn update<R>(
        &mut self,
        batch: usize,
        heads: usize,
        spec: &Spec,
        update: impl FnOnce(&mut ExtBuffers) -> Result<R>,
    ) -> Result<R> {
        let mut bufs = self.to_buffers(batch, heads, spec)?;
        let out = update(&mut bufs)?;
        let (b, h) = (self.s.shape().0, self.s.shape().1);
        *self = ExtState::from_buffers(b, h, spec.conv_tail(), bufs)?;
        Ok(out)
    }
}

/// The decoding state of a spec with momentum or `short_conv`: the buffers of an [`ExtState`]
/// owned as plain vectors, which `decode_step` updates in place (no copies out of and back into
/// dfdx tensors per token). Convert with [`ExtDecodeState::from_state`] and
/// [`ExtDecodeState::to_state`].
#[derive(Clone, Debug)]
pub struct ExtDecodeState<B: Dim, H: Dim, const F: usize, const DK: usize, const DV: usize> {
    batch: B,
    heads: H,
    /// Rows of each convolution tail (w - 1; 0 without `short_conv`).
    w1: usize,
    bufs: ExtBuffers,
}

impl<B: Dim, H: Dim, const F: usize, const DK: usize, const DV: usize>
    ExtDecodeState<B, H, F, DK, DV>
{
    /// The all-zero decoding state of `spec`.
    pub fn zeros(batch: B, heads: H, spec: &Spec) -> Result<Self> {
        Self::from_state(&ExtState::zeros(batch, heads, spec)?, spec)
    }

    /// The decoding state holding `state` (e.g. what `forward_with_state` returned).
    pub fn from_state(state: &ExtState<B, H, F, DK, DV>, spec: &Spec) -> Result<Self> {
        let (batch, heads) = (state.s.shape().0, state.s.shape().1);
        Ok(ExtDecodeState {
            batch,
            heads,
            w1: spec.conv_tail(),
            bufs: state.to_buffers(batch.size(), heads.size(), spec)?,
        })
    }

    /// The state as dfdx tensors.
    pub fn to_state(&self) -> Result<ExtState<B, H, F, DK, DV>> {
        ExtState::from_buffers(self.batch, self.heads, self.w1, self.bufs.clone())
    }

    /// The flat buffers (heads first).
    pub fn buffers(&self) -> &ExtBuffers {
        &self.bufs
    }
}

impl<B: Dim, H: Dim, const F: usize, const DK: usize, const DV: usize> ExtStepState
    for ExtDecodeState<B, H, F, DK, DV>
{
    fn update<R>(
        &mut self,
        batch: usize,
        heads: usize,
        _spec: &Spec,
        update: impl FnOnce(&mut ExtBuffers) -> Result<R>,
    ) -> Result<R> {
        let (b, h) = (self.batch.size(), self.heads.size());
        if (b, h) != (batch, heads) {
            return Err(Error::StateMismatch {
                batch,
                heads,
                got_batch: b,
                got_heads: h,
            });
        }
        update(&mut self.bufs)
    }
}

/// What the (uncallable) `step` of an `rpe = toeplitz` spec would return.
pub fn rpe_has_no_step() -> Error {
    Error::Unsupported(
        "a spec with `rpe = toeplitz` has no `step`: decoding with a general Toeplitz weight \
         needs every past key; call `forward` on the whole prefix",
    )
}

/// Implemented by nothing: the bound of the `step` of an `rpe = toeplitz` spec, so that calling
/// it is a compile error that says why.
#[diagnostic::on_unimplemented(
    message = "a spec with `rpe = toeplitz` has no `step`: decoding with a general Toeplitz \
               weight exp(b[s - t]) needs every past key, so there is no fixed-size state",
    label = "no recurrent step for `rpe = toeplitz`",
    note = "call `forward` on the whole prefix instead, or use a spec without `rpe`"
)]
pub trait ToeplitzHasNoStep {}
