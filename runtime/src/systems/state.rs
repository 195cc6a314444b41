//! [`ExtState`]: the state of specs whose systems carry more than `S` and `z`.

use crate::cpu::marshal::contiguous_data;
use crate::error::{Error, Result};
use crate::state::State;
use attnc_codegen::spec::{Normalize, Spec};
use dfdx::shapes::{Const, Dim, HasShape};
use dfdx::tensor::{Cpu, Tensor, TensorFromVec};

/// A (B, H, F, DV) state tensor.
pub type StateMat<B, H, const F: usize, const DV: usize> =
    Tensor<(B, H, Const<F>, Const<DV>), f32, Cpu>;
/// A (B, H, F) state vector.
pub type StateVec<B, H, const F: usize> = Tensor<(B, H, Const<F>), f32, Cpu>;
/// A convolution tail, (B, H, w - 1, D), heads first.
pub type Tail<B, H, const D: usize> = Tensor<(B, H, usize, Const<D>), f32, Cpu>;

/// The state of a spec with `update = momentum(..)` or `short_conv = w`: the contract's
/// [`State`] fields `s` and `z`, plus what those keys carry. Specs without them keep using
/// [`State`] (so code that builds `State { s, z }` is unaffected); these specs' `zero_state()`
/// builds this one.
///
/// - `m` (and `n` with `normalize = sum`): the momentum buffer, shape (B, H, F, DV) and (B, H, F);
///   `Some` exactly for `update = momentum(..)`.
/// - `conv_q`, `conv_k`, `conv_v`: the last `w - 1` raw (unconvolved) rows of q, k and v, heads
///   first, shape (B, H, w - 1, D); `Some` exactly for `short_conv = w`. A fresh state holds
///   zeros, which is what a sequence start sees.
///
/// `F` is the spec's `FEATURE_DIM`, `DK` its `HEAD_DIM`, `DV` its `VALUE_DIM`.
#[derive(Clone, Debug)]
pub struct ExtState<B: Dim, H: Dim, const F: usize, const DK: usize, const DV: usize> {
    /// `S`, shape (B, H, F, DV).
    pub s: StateMat<B, H, F, DV>,
    /// `z`, shape (B, H, F), for `normalize = sum`.
    pub z: Option<StateVec<B, H, F>>,
    /// The momentum `m`, shape (B, H, F, DV).
    pub m: Option<StateMat<B, H, F, DV>>,
    /// The normaliser's momentum `n`, shape (B, H, F) (momentum with `normalize = sum`).
    pub n: Option<StateVec<B, H, F>>,
    /// The last `w - 1` raw query rows, (B, H, w - 1, DK).
    pub conv_q: Option<Tail<B, H, DK>>,
    /// The last `w - 1` raw key rows, (B, H, w - 1, DK).
    pub conv_k: Option<Tail<B, H, DK>>,
    /// The last `w - 1` raw value rows, (B, H, w - 1, DV).
    pub conv_v: Option<Tail<B, H, DV>>,
}

fn tensor_err(e: dfdx::tensor::CpuError) -> Error {
    Error::Tensor(format!("{e:?}"))
}

/// Flat buffers of a whole [`ExtState`] (heads first); empty where the spec carries nothing.
#[derive(Clone, Debug, Default)]
pub struct ExtBuffers {
    /// S.
    pub s: Vec<f32>,
    /// z.
    pub z: Vec<f32>,
    /// m.
    pub m: Vec<f32>,
    /// n.
    pub n: Vec<f32>,
    /// Tails of q, k, v.
    pub tails: [Vec<f32>; 3],
}

impl ExtBuffers {
    /// Zero buffers for `bh` (batch, head) problems of `spec`, each present exactly when the
    /// spec carries it.
    pub fn zeros<const F: usize, const DK: usize, const DV: usize>(bh: usize, spec: &Spec) -> Self {
        let normalized = spec.normalize == Normalize::Sum;
        let (momentum, conv, w1) = (
            spec.momentum.is_some(),
            spec.short_conv.is_some(),
            spec.conv_tail(),
        );
        let zeros = |n: usize, on: bool| if on { vec![0.0; n] } else { Vec::new() };
        ExtBuffers {
            s: vec![0.0; bh * F * DV],
            z: zeros(bh * F, normalized),
            m: zeros(bh * F * DV, momentum),
            n: zeros(bh * F, momentum && normalized),
            tails: [
                zeros(bh * w1 * DK, conv),
                zeros(bh * w1 * DK, conv),
                zeros(bh * w1 * DV, conv),
            ],
        }
    }
}

impl<B: Dim, H: Dim, const F: usize, const DK: usize, const DV: usize> ExtState<B, H, F, DK, DV> {
    /// The all-zero state of `spec` (what `forward` starts from).
    pub fn zeros(batch: B, heads: H, spec: &Spec) -> Result<Self> {
        let bufs = ExtBuffers::zeros::<F, DK, DV>(batch.size() * heads.size(), spec);
        Self::from_buffers(batch, heads, spec.conv_tail(), bufs)
    }

    /// The buffers a call starts from: `initial`'s (checked against the call's batch, heads
    /// and `spec`) or zeros, without building tensors for them.
    pub fn initial_buffers(
        initial: Option<&Self>,
        batch: usize,
        heads: usize,
        spec: &Spec,
    ) -> Result<ExtBuffers> {
        match initial {
            Some(st) => st.to_buffers(batch, heads, spec),
            None => Ok(ExtBuffers::zeros::<F, DK, DV>(batch * heads, spec)),
        }
    }

    /// Builds a state from flat buffers; an empty buffer leaves its field `None`.
    pub fn from_buffers(batch: B, heads: H, w1: usize, b: ExtBuffers) -> Result<Self> {
        let dev = Cpu::default();
        let mat = |v: Vec<f32>| dev.try_tensor_from_vec(v, (batch, heads, Const::<F>, Const::<DV>));
        let vecf = |v: Vec<f32>| dev.try_tensor_from_vec(v, (batch, heads, Const::<F>));
        let opt_mat = |v: Vec<f32>| (!v.is_empty()).then(|| mat(v)).transpose();
        let opt_vec = |v: Vec<f32>| (!v.is_empty()).then(|| vecf(v)).transpose();
        let [tq, tk, tv] = b.tails;
        let conv = !tq.is_empty();
        let tail_k = |v: Vec<f32>| {
            conv.then(|| dev.try_tensor_from_vec(v, (batch, heads, w1, Const::<DK>)))
                .transpose()
        };
        Ok(ExtState {
            s: mat(b.s).map_err(tensor_err)?,
            z: opt_vec(b.z).map_err(tensor_err)?,
            m: opt_mat(b.m).map_err(tensor_err)?,
            n: opt_vec(b.n).map_err(tensor_err)?,
            conv_q: tail_k(tq).map_err(tensor_err)?,
            conv_k: tail_k(tk).map_err(tensor_err)?,
            conv_v: conv
                .then(|| dev.try_tensor_from_vec(tv, (batch, heads, w1, Const::<DV>)))
                .transpose()
                .map_err(tensor_err)?,
        })
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.s.shape().0.size()
    }

    /// Head count.
    pub fn heads(&self) -> usize {
        self.s.shape().1.size()
    }

    /// The contract's [`State`] part (`s`, `z`): the same tensors (no copy).
    pub fn base(&self) -> State<B, H, F, DV> {
        State {
            s: self.s.clone(),
            z: self.z.clone(),
        }
    }

    /// The flat buffers, checked against the call's batch, heads and what `spec` carries.
    pub fn to_buffers(&self, batch: usize, heads: usize, spec: &Spec) -> Result<ExtBuffers> {
        if (self.batch(), self.heads()) != (batch, heads) {
            return Err(Error::StateMismatch {
                batch,
                heads,
                got_batch: self.batch(),
                got_heads: self.heads(),
            });
        }
        let normalized = spec.normalize == Normalize::Sum;
        let momentum = spec.momentum.is_some();
        let w1 = spec.conv_tail();
        let need = |present: bool, wanted: bool, what: &'static str| {
            if present == wanted {
                Ok(())
            } else {
                Err(Error::StateNormalizer(what))
            }
        };
        need(self.z.is_some(), normalized, STATE_Z)?;
        need(self.m.is_some(), momentum, STATE_M)?;
        need(self.n.is_some(), momentum && normalized, STATE_N)?;
        let conv = spec.short_conv.is_some();
        need(
            self.conv_q.is_some() && self.conv_k.is_some() && self.conv_v.is_some(),
            conv,
            STATE_CONV,
        )?;
        let data = |t: &Option<Tensor<(B, H, Const<F>), f32, Cpu>>| {
            t.as_ref().map(contiguous_data).unwrap_or_default()
        };
        Ok(ExtBuffers {
            s: contiguous_data(&self.s),
            z: data(&self.z),
            m: self.m.as_ref().map(contiguous_data).unwrap_or_default(),
            n: data(&self.n),
            tails: [
                tail_data(&self.conv_q, w1)?,
                tail_data(&self.conv_k, w1)?,
                tail_data(&self.conv_v, w1)?,
            ],
        })
    }
}

/// A convolution tail's data, checked to hold `w1` rows.
fn tail_data<B: Dim, H: Dim, const D: usize>(
    t: &Option<Tail<B, H, D>>,
    w1: usize,
) -> Result<Vec<f32>> {
    let Some(t) = t else { return Ok(Vec::new()) };
    if t.shape().2 != w1 {
        return Err(Error::StateNormalizer(STATE_CONV));
    }
    Ok(contiguous_data(t))
}

const STATE_Z: &str = "the state's `z` does not match the spec: it must be `Some` exactly when \
                       the spec has `normalize = sum`; build the state with the spec's \
                       `zero_state()` or take the one `forward_with_state` returned";
pub(crate) const STATE_M: &str =
    "the state's momentum `m` does not match the spec: it must be `Some` \
                       exactly for `update = momentum(..)`; build the state with the spec's \
                       `zero_state()` or take the one `forward_with_state` returned";
pub(crate) const STATE_N: &str =
    "the state's `n` does not match the spec: it must be `Some` exactly for \
                       `update = momentum(..)` with `normalize = sum`; build the state with the \
                       spec's `zero_state()`";
pub(crate) const STATE_CONV: &str =
    "the state's convolution tails (`conv_q`, `conv_k`, `conv_v`) do not \
                          match the spec: they must be `Some` with w - 1 rows exactly for \
                          `short_conv = w`; build the state with the spec's `zero_state()`";
