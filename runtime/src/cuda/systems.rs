//! `update = momentum(..)` and `short_conv` on the GPU: the state they carry
//! ([`CudaExtState`]) and the calls generated code makes ([`systems_forward_cuda`],
//! [`systems_step_cuda`]).
//!
//! Both keys are part of the spec's generated CUDA program (`attnc_codegen::cuda`): the
//! convolution is fused into the chunk program's loads of q, k and v (a last kernel writes the
//! new tails), and momentum's `forward` is its step program run over the whole sequence (the
//! fused recurrent form, state and momentum buffer held on chip), so `forward` and `step` are
//! the same recurrence.

use super::api::{
    check_forward, check_step, launch_call, Call, ForwardShapes, StepShapes, SystemsBufs,
};
use super::backend::Buf;
use super::launch::CudaLaunch;
use super::{CudaDevice, CudaTensor};
use crate::error::{Error, Result};
use crate::systems::state::{STATE_CONV, STATE_M, STATE_N};
use crate::systems::ExtState;
use attnc_codegen::abi::Signature;
use dfdx::shapes::{Const, Dim, Shape};

/// A (B, H, F, DV) device tensor.
type DevMat<B, H, const F: usize, const DV: usize> = CudaTensor<(B, H, Const<F>, Const<DV>)>;
/// A (B, H, F) device tensor.
type DevVec<B, H, const F: usize> = CudaTensor<(B, H, Const<F>)>;
/// A convolution tail on the device, (B, H, w - 1, D).
type DevTail<B, H, const D: usize> = CudaTensor<(B, H, usize, Const<D>)>;

/// [`ExtState`] on a GPU: `S`, `z`, momentum's `m` and `n` and `short_conv`'s tails, with the
/// same shapes and presence rules. Made by [`CudaDevice::upload_ext_state`] (upload the spec's
/// `zero_state()` to start a sequence) or returned by a systems spec's
/// `forward_with_state_cuda`; `step_cuda` updates it.
#[derive(Debug)]
pub struct CudaExtState<B: Dim, H: Dim, const F: usize, const DK: usize, const DV: usize> {
    /// `S`, (B, H, F, DV).
    pub s: DevMat<B, H, F, DV>,
    /// `z`, (B, H, F), for `normalize = sum`.
    pub z: Option<DevVec<B, H, F>>,
    /// Momentum's `m`, (B, H, F, DV).
    pub m: Option<DevMat<B, H, F, DV>>,
    /// Momentum's `n`, (B, H, F) (with `normalize = sum`).
    pub n: Option<DevVec<B, H, F>>,
    /// The last `w - 1` raw query rows, (B, H, w - 1, DK).
    pub conv_q: Option<DevTail<B, H, DK>>,
    /// The last `w - 1` raw key rows, (B, H, w - 1, DK).
    pub conv_k: Option<DevTail<B, H, DK>>,
    /// The last `w - 1` raw value rows, (B, H, w - 1, DV).
    pub conv_v: Option<DevTail<B, H, DV>>,
}

/// Downloads an optional device tensor.
fn down<S: Shape>(
    t: &Option<CudaTensor<S>>,
) -> Result<Option<dfdx::tensor::Tensor<S, f32, dfdx::tensor::Cpu>>> {
    t.as_ref().map(CudaTensor::download).transpose()
}

/// Copies an optional device tensor on its device.
fn clone_opt<S: Shape>(t: &Option<CudaTensor<S>>) -> Result<Option<CudaTensor<S>>> {
    t.as_ref().map(CudaTensor::try_clone).transpose()
}

impl<B: Dim, H: Dim, const F: usize, const DK: usize, const DV: usize>
    CudaExtState<B, H, F, DK, DV>
{
    /// Copies the state to the CPU.
    pub fn download(&self) -> Result<ExtState<B, H, F, DK, DV>> {
        Ok(ExtState {
            s: self.s.download()?,
            z: down(&self.z)?,
            m: down(&self.m)?,
            n: down(&self.n)?,
            conv_q: down(&self.conv_q)?,
            conv_k: down(&self.conv_k)?,
            conv_v: down(&self.conv_v)?,
        })
    }

    /// A copy on the same GPU.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(CudaExtState {
            s: self.s.try_clone()?,
            z: clone_opt(&self.z)?,
            m: clone_opt(&self.m)?,
            n: clone_opt(&self.n)?,
            conv_q: clone_opt(&self.conv_q)?,
            conv_k: clone_opt(&self.conv_k)?,
            conv_v: clone_opt(&self.conv_v)?,
        })
    }

    /// The GPU it lives on.
    pub fn device(&self) -> &CudaDevice {
        self.s.device()
    }

    /// (batch, heads) of `S` and of `z` when there is one, for the base checks.
    fn dims(&self) -> super::api::StateDims {
        let bh = |s: &(B, H, Const<F>)| (s.0.size(), s.1.size());
        let s = self.s.shape();
        (
            (s.0.size(), s.1.size()),
            self.z.as_ref().map(|z| bh(z.shape())),
        )
    }

    /// Checks what the state carries against the spec (its base `S`, `z` are checked with the
    /// call's shapes).
    fn check(&self, sig: &Signature) -> Result<()> {
        let need = |present: bool, wanted: bool, what: &'static str| match present == wanted {
            true => Ok(()),
            false => Err(Error::StateNormalizer(what)),
        };
        let bh = (self.s.shape().0.size(), self.s.shape().1.size());
        let same = |b: usize, h: usize| (b, h) == bh;
        need(self.m.is_some(), sig.momentum, STATE_M)?;
        need(self.n.is_some(), sig.momentum && sig.normalized, STATE_N)?;
        let tails_ok = match (&self.conv_q, &self.conv_k, &self.conv_v) {
            (Some(q), Some(k), Some(v)) => [q.shape().2, k.shape().2, v.shape().2]
                .iter()
                .all(|rows| *rows + 1 == sig.conv),
            _ => false,
        };
        need(tails_ok, sig.conv > 0, STATE_CONV)?;
        let mut others = Vec::new();
        others.extend(
            self.m
                .iter()
                .map(|t| (t.shape().0.size(), t.shape().1.size())),
        );
        others.extend(
            self.n
                .iter()
                .map(|t| (t.shape().0.size(), t.shape().1.size())),
        );
        others.extend(
            self.conv_q
                .iter()
                .map(|t| (t.shape().0.size(), t.shape().1.size())),
        );
        others.extend(
            self.conv_k
                .iter()
                .map(|t| (t.shape().0.size(), t.shape().1.size())),
        );
        others.extend(
            self.conv_v
                .iter()
                .map(|t| (t.shape().0.size(), t.shape().1.size())),
        );
        match others.into_iter().find(|(b, h)| !same(*b, *h)) {
            Some((got_batch, got_heads)) => Err(Error::StateMismatch {
                batch: bh.0,
                heads: bh.1,
                got_batch,
                got_heads,
            }),
            None => Ok(()),
        }
    }

    /// A fresh state for `(b, h)` as the spec carries it (zeros, the start of a sequence).
    fn zeros(dev: &CudaDevice, (b, h): (B, H), sig: &Signature) -> Result<Self> {
        let w1 = sig.conv.saturating_sub(1);
        let conv = sig.conv > 0;
        let tail_k = || conv.then(|| dev.zeros((b, h, w1, Const::<DK>))).transpose();
        let tail_v = || conv.then(|| dev.zeros((b, h, w1, Const::<DV>))).transpose();
        Ok(CudaExtState {
            s: dev.zeros((b, h, Const::<F>, Const::<DV>))?,
            z: sig
                .normalized
                .then(|| dev.zeros((b, h, Const::<F>)))
                .transpose()?,
            m: sig
                .momentum
                .then(|| dev.zeros((b, h, Const::<F>, Const::<DV>)))
                .transpose()?,
            n: (sig.momentum && sig.normalized)
                .then(|| dev.zeros((b, h, Const::<F>)))
                .transpose()?,
            conv_q: tail_k()?,
            conv_k: tail_k()?,
            conv_v: tail_v()?,
        })
    }
}

impl CudaDevice {
    /// Copies a CPU [`ExtState`] (a systems spec's `zero_state()`, or a state a CPU call
    /// returned) to the GPU.
    pub fn upload_ext_state<B: Dim, H: Dim, const F: usize, const DK: usize, const DV: usize>(
        &self,
        st: &ExtState<B, H, F, DK, DV>,
    ) -> Result<CudaExtState<B, H, F, DK, DV>> {
        let up = |t: Option<&dfdx::tensor::Tensor<(B, H, Const<F>), f32, dfdx::tensor::Cpu>>| {
            t.map(|t| self.upload(t)).transpose()
        };
        Ok(CudaExtState {
            s: self.upload(&st.s)?,
            z: up(st.z.as_ref())?,
            m: st.m.as_ref().map(|m| self.upload(m)).transpose()?,
            n: up(st.n.as_ref())?,
            conv_q: st.conv_q.as_ref().map(|t| self.upload(t)).transpose()?,
            conv_k: st.conv_k.as_ref().map(|t| self.upload(t)).transpose()?,
            conv_v: st.conv_v.as_ref().map(|t| self.upload(t)).transpose()?,
        })
    }
}

/// `short_conv`'s weights on the device: `conv_q`, `conv_k` (H, DK, w) and `conv_v` (H, DV, w).
pub type ConvWeights<'a, Sw, Swv> = (&'a CudaTensor<Sw>, &'a CudaTensor<Sw>, &'a CudaTensor<Swv>);

/// Checks the convolution weights' shapes: (H, D, w) each, as the spec's signature says.
fn check_weights<'a, Sw, Swv>(
    sig: &Signature,
    heads: usize,
    conv: Option<ConvWeights<'a, Sw, Swv>>,
) -> Result<Option<[&'a Buf; 3]>>
where
    Sw: Shape<Concrete = [usize; 3]>,
    Swv: Shape<Concrete = [usize; 3]>,
{
    let Some((cq, ck, cv)) = conv else {
        return match sig.conv {
            0 => Ok(None),
            _ => Err(Error::Internal(
                "the spec has short_conv but no weights were passed",
            )),
        };
    };
    for (arg, got, d) in [
        ("conv_q", cq.shape().concrete(), sig.dk),
        ("conv_k", ck.shape().concrete(), sig.dk),
        ("conv_v", cv.shape().concrete(), sig.dv),
    ] {
        if got != [heads, d, sig.conv] {
            return Err(Error::ShapeMismatch {
                arg,
                expected: vec![heads, d, sig.conv],
                got: got.to_vec(),
                axes: "(H, D, w)",
            });
        }
    }
    Ok(Some([cq.buf(), ck.buf(), cv.buf()]))
}

/// Launches `call` on `state`'s own buffers (updated in place) with `short_conv`'s weights.
fn launch_on<B: Dim, H: Dim, const F: usize, const DK: usize, const DV: usize>(
    state: &mut CudaExtState<B, H, F, DK, DV>,
    call: Call<'_>,
    conv: Option<[&Buf; 3]>,
) -> Result<Buf> {
    let CudaExtState {
        s,
        z,
        m,
        n,
        conv_q,
        conv_k,
        conv_v,
    } = state;
    let tails = match (conv_q.as_mut(), conv_k.as_mut(), conv_v.as_mut()) {
        (Some(q), Some(k), Some(v)) => Some([&mut q.buf, &mut k.buf, &mut v.buf]),
        _ => None,
    };
    let systems = SystemsBufs {
        conv,
        tails,
        mom_s: m.as_mut().map(|t| &mut t.buf),
        mom_z: n.as_mut().map(|t| &mut t.buf),
    };
    launch_call(call, (&mut s.buf, z.as_mut().map(|t| &mut t.buf)), systems)
}

pub use super::api::Extras;

/// `forward_with_state` of a spec with momentum or `short_conv`, on the GPU: the output (v's
/// shape, the spec's layout) and the final [`CudaExtState`]. `initial: None` starts from zeros
/// (and zero tails); `initial` is copied, never modified. Errors as the CPU path's.
#[allow(clippy::type_complexity)]
pub fn systems_forward_cuda<
    B,
    H,
    Sq,
    Sv,
    S3,
    Sp,
    Sw,
    Swv,
    const F: usize,
    const DK: usize,
    const DV: usize,
>(
    launch: &CudaLaunch,
    source: &'static str,
    (b, h): (B, H),
    (q, k, v): (&CudaTensor<Sq>, &CudaTensor<Sq>, &CudaTensor<Sv>),
    (beta, g, proj): Extras<'_, S3, Sp>,
    conv: Option<ConvWeights<'_, Sw, Swv>>,
    initial: Option<&CudaExtState<B, H, F, DK, DV>>,
) -> Result<(CudaTensor<Sv>, CudaExtState<B, H, F, DK, DV>)>
where
    B: Dim,
    H: Dim,
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
    S3: Shape<Concrete = [usize; 3]>,
    Sp: Shape<Concrete = [usize; 2]>,
    Sw: Shape<Concrete = [usize; 3]>,
    Swv: Shape<Concrete = [usize; 3]>,
{
    let sig = &launch.signature;
    let p = check_forward(
        launch,
        &ForwardShapes {
            q: q.shape().concrete(),
            k: k.shape().concrete(),
            v: v.shape().concrete(),
            beta: beta.map(|t| t.shape().concrete()),
            g: g.map(|t| t.shape().concrete()),
            proj: proj.map(|t| t.shape().concrete()),
            state: initial.map(CudaExtState::dims),
            out_bh: (b.size(), h.size()),
            f_dv: (F, DV),
        },
    )?;
    if let Some(st) = initial {
        st.check(sig)?;
    }
    let weights = check_weights(sig, p.heads, conv)?;
    let dev = q.device();
    let mut state = match initial {
        Some(st) => st.try_clone()?,
        None => CudaExtState::zeros(dev, (b, h), sig)?,
    };
    // `state` is already the call's own copy: the kernels update it in place.
    let out = launch_on(
        &mut state,
        Call::new((launch, source), &p, true, (q, k, v), (beta, g, proj)),
        weights,
    )?;
    Ok((CudaTensor::wrap(out, *v.shape(), dev), state))
}

/// `step` of a spec with momentum or `short_conv`, on the GPU: one token per (batch, head);
/// updates `state` in place (after every check) and returns o_t, (B, H, DV).
#[allow(clippy::type_complexity)]
pub fn systems_step_cuda<
    B,
    H,
    Sk,
    Sv,
    S2,
    Sp,
    Sw,
    Swv,
    const F: usize,
    const DK: usize,
    const DV: usize,
>(
    launch: &CudaLaunch,
    source: &'static str,
    state: &mut CudaExtState<B, H, F, DK, DV>,
    (q_t, k_t, v_t): (&CudaTensor<Sk>, &CudaTensor<Sk>, &CudaTensor<Sv>),
    (beta_t, g_t, proj): Extras<'_, S2, Sp>,
    conv: Option<ConvWeights<'_, Sw, Swv>>,
) -> Result<CudaTensor<Sv>>
where
    B: Dim,
    H: Dim,
    Sk: Shape<Concrete = [usize; 3]>,
    Sv: Shape<Concrete = [usize; 3]>,
    S2: Shape<Concrete = [usize; 2]>,
    Sp: Shape<Concrete = [usize; 2]>,
    Sw: Shape<Concrete = [usize; 3]>,
    Swv: Shape<Concrete = [usize; 3]>,
{
    let sig = &launch.signature;
    let p = check_step(
        launch,
        &StepShapes {
            q: q_t.shape().concrete(),
            k: k_t.shape().concrete(),
            v: v_t.shape().concrete(),
            beta: beta_t.map(|t| t.shape().concrete()),
            g: g_t.map(|t| t.shape().concrete()),
            proj: proj.map(|t| t.shape().concrete()),
            state: state.dims(),
            f_dv: (F, DV),
        },
    )?;
    state.check(sig)?;
    let weights = check_weights(sig, p.heads, conv)?;
    let dev = q_t.device();
    // In place: every check above runs before the first kernel.
    let out = launch_on(
        state,
        Call::new(
            (launch, source),
            &p,
            false,
            (q_t, k_t, v_t),
            (beta_t, g_t, proj),
        ),
        weights,
    )?;
    Ok(CudaTensor::wrap(out, *v_t.shape(), dev))
}

/// `forward` of an `rpe = toeplitz` spec on the GPU: the output in v's shape and the spec's
/// layout. `bias` holds the per-offset log-weights, (H, 2N - 1) with `bias[h, (s - t) + N - 1]`;
/// `conv` `short_conv`'s weights (the convolution starts from zero tails, as on the CPU).
pub fn rpe_forward_cuda<Sq, Sv, Sb, Sw, Swv>(
    launch: &CudaLaunch,
    source: &'static str,
    (q, k, v): (&CudaTensor<Sq>, &CudaTensor<Sq>, &CudaTensor<Sv>),
    conv: Option<ConvWeights<'_, Sw, Swv>>,
    bias: &CudaTensor<Sb>,
) -> Result<CudaTensor<Sv>>
where
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
    Sb: Shape<Concrete = [usize; 2]>,
    Sw: Shape<Concrete = [usize; 3]>,
    Swv: Shape<Concrete = [usize; 3]>,
{
    let sig = &launch.signature;
    // rpe returns no state: the (batch, heads) to check against are q's own.
    let own = crate::check::Problem::from_q(sig.layout, q.shape().concrete())?;
    let p = check_forward(
        launch,
        &ForwardShapes {
            q: q.shape().concrete(),
            k: k.shape().concrete(),
            v: v.shape().concrete(),
            beta: None,
            g: None,
            proj: None,
            state: None,
            out_bh: (own.batch, own.heads),
            f_dv: (sig.f, sig.dv),
        },
    )?;
    let expected = [p.heads, 2 * p.tokens - 1];
    if bias.shape().concrete() != expected {
        return Err(Error::ShapeMismatch {
            arg: "bias",
            expected: expected.to_vec(),
            got: bias.shape().concrete().to_vec(),
            axes: "(H, 2N - 1)",
        });
    }
    let weights = check_weights(sig, p.heads, conv)?;
    let dev = q.device();
    let ctx = dev.ctx();
    let bh = p.batch * p.heads;
    let w1 = sig.conv.saturating_sub(1);
    let mut tails = match sig.conv {
        0 => None,
        _ => Some([
            ctx.zeros(bh * w1 * sig.dk)?,
            ctx.zeros(bh * w1 * sig.dk)?,
            ctx.zeros(bh * w1 * sig.dv)?,
        ]),
    };
    let mut s = ctx.zeros(1)?;
    let systems = SystemsBufs {
        conv: weights,
        tails: tails.as_mut().map(|[q, k, v]| [q, k, v]),
        mom_s: None,
        mom_z: None,
    };
    let out = launch_call(
        Call {
            dev,
            launch,
            source,
            p: &p,
            forward: true,
            inputs: [q.buf(), k.buf(), v.buf()],
            out_len: v.len(),
            beta: None,
            g: None,
            proj: Some(bias.buf()),
        },
        (&mut s, None),
        systems,
    )?;
    Ok(CudaTensor::wrap(out, *v.shape(), dev))
}
