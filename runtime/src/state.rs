//! The recurrent state shared by every spec.

use crate::cpu::marshal::contiguous_data;
use crate::cpu::pool::recycle;
use crate::error::{Error, Result};
use dfdx::shapes::{Const, Dim, HasShape};
use dfdx::tensor::{Cpu, Tensor, TensorFromVec};
use dfdx::tensor_ops::ReshapeTo;

/// The state of a linear-attention layer after some tokens: `S` (F x DV per batch and head) and,
/// for `normalize = sum`, the running key sum `z` (F per batch and head).
///
/// `F` is the spec's `FEATURE_DIM` and `DV` its `VALUE_DIM`, so a state of one spec cannot be
/// passed to another of different dims. `forward_with_state` returns it; `step` updates it.
///
/// ```
/// # use attnc_runtime as attnc;
/// use attnc::State;
/// use dfdx::shapes::Const;
/// let state: State<usize, Const<4>, 16, 16> = State::zeros(2, Const, false).unwrap();
/// assert_eq!((state.batch(), state.heads()), (2, 4));
/// assert!(state.z.is_none());
/// ```
#[derive(Clone, Debug)]
pub struct State<B: Dim, H: Dim, const F: usize, const DV: usize> {
    /// `S`, shape (B, H, F, DV): o_t = S_t^T q~_t.
    pub s: Tensor<(B, H, Const<F>, Const<DV>), f32, Cpu>,
    /// `z`, shape (B, H, F): the running sum of feature-mapped keys; `Some` only for
    /// `normalize = sum`.
    pub z: Option<Tensor<(B, H, Const<F>), f32, Cpu>>,
}

impl<B: Dim, H: Dim, const F: usize, const DV: usize> State<B, H, F, DV> {
    /// An all-zero state (what `forward` starts from), with `z` when `normalized`.
    pub fn zeros(batch: B, heads: H, normalized: bool) -> Result<Self> {
        let bh = batch.size() * heads.size();
        let z = normalized.then(|| vec![0.0; bh * F]);
        Self::from_vecs(batch, heads, vec![0.0; bh * F * DV], z)
    }

    /// Builds a state from flat row-major buffers (batch, head, F, DV) and (batch, head, F).
    pub fn from_vecs(batch: B, heads: H, s: Vec<f32>, z: Option<Vec<f32>>) -> Result<Self> {
        let dev = Cpu::default();
        let s = dev
            .try_tensor_from_vec(s, (batch, heads, Const::<F>, Const::<DV>))
            .map_err(|e| Error::Tensor(format!("{e:?}")))?;
        let z = match z {
            Some(z) => Some(
                dev.try_tensor_from_vec(z, (batch, heads, Const::<F>))
                    .map_err(|e| Error::Tensor(format!("{e:?}")))?,
            ),
            None => None,
        };
        Ok(State { s, z })
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.s.shape().0.size()
    }

    /// Head count.
    pub fn heads(&self) -> usize {
        self.s.shape().1.size()
    }

    /// The state as flat buffers `(S, z)`, checked against the expected batch and head counts and
    /// normaliser presence.
    pub fn to_vecs(
        &self,
        batch: usize,
        heads: usize,
        normalized: bool,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        self.check(batch, heads, normalized)?;
        Ok((
            contiguous_data(&self.s),
            self.z.as_ref().map(|z| z.as_vec()),
        ))
    }

    /// Checks the state against the inputs' batch and head counts and the spec's normaliser.
    fn check(&self, batch: usize, heads: usize, normalized: bool) -> Result<()> {
        let z_batch_heads = self
            .z
            .as_ref()
            .map(|z| (z.shape().0.size(), z.shape().1.size()));
        check_state(
            (batch, heads, normalized),
            (self.batch(), self.heads()),
            z_batch_heads,
        )
    }
}

impl<B: Dim, H: Dim, const F: usize, const DV: usize> State<B, H, F, DV> {
    /// For `step`: checks the state, and copies it into pooled flat buffers `(S, z)` (`z` empty
    /// without a normaliser). The tensors are first made standard-layout (free when they are),
    /// so [`State::write_back`] can update them in place.
    fn read_for_update(
        &mut self,
        batch: usize,
        heads: usize,
        normalized: bool,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        self.check(batch, heads, normalized)?;
        let tensor_err = |e: dfdx::tensor::CpuError| Error::Tensor(format!("{e:?}"));
        self.s = self.s.clone().try_contiguous().map_err(tensor_err)?;
        let s = contiguous_data(&self.s);
        let z = match &mut self.z {
            Some(z) => {
                *z = z.clone().try_contiguous().map_err(tensor_err)?;
                contiguous_data(z)
            }
            None => Vec::new(),
        };
        Ok((s, z))
    }

    /// For `step`: writes updated buffers back into the tensors, in place when this state owns
    /// them alone (dfdx copies on write when a clone shares them), else as new tensors.
    fn write_back(&mut self, s: Vec<f32>, z: Vec<f32>) -> Result<()> {
        let in_place = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.s.copy_from(&s);
            if let Some(zt) = &mut self.z {
                zt.copy_from(&z);
            }
        }));
        if in_place.is_ok() {
            recycle([s, z]);
            return Ok(());
        }
        let (b, h) = (self.s.shape().0, self.s.shape().1);
        *self = State::from_vecs(b, h, s, self.z.is_some().then_some(z))?;
        Ok(())
    }
}

/// A recurrent state that `step` can update: [`State`] (copied out of its tensors and back) or
/// [`DecodeState`] (updated in place).
pub trait StepState {
    /// Checks the state against a step's batch and head counts and the spec's normaliser, then
    /// runs `update` on its buffers `(S, z)` (`z` empty without a normaliser). The state keeps
    /// what `update` leaves when it returns `Ok`.
    fn update<R>(
        &mut self,
        batch: usize,
        heads: usize,
        normalized: bool,
        update: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> Result<R>,
    ) -> Result<R>;
}

impl<B: Dim, H: Dim, const F: usize, const DV: usize> StepState for State<B, H, F, DV> {
    fn update<R>(
        &mut self,
        batch: usize,
        heads: usize,
        normalized: bool,
        update: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> Result<R>,
    ) -> Result<R> {
        let (mut s, mut z) = self.read_for_update(batch, heads, normalized)?;
        match update(&mut s, &mut z) {
            Ok(out) => {
                self.write_back(s, z)?;
                Ok(out)
            }
            Err(e) => {
                recycle([s, z]);
                Err(e)
            }
        }
    }
}

impl<B: Dim, H: Dim, const F: usize, const DV: usize> StepState for DecodeState<B, H, F, DV> {
    fn update<R>(
        &mut self,
        batch: usize,
        heads: usize,
        normalized: bool,
        update: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> Result<R>,
    ) -> Result<R> {
        let z_batch_heads = self.z.as_ref().map(|_| (self.batch(), self.heads()));
        check_state(
            (batch, heads, normalized),
            (self.batch(), self.heads()),
            z_batch_heads,
        )?;
        let mut no_z = Vec::new();
        update(&mut self.s, self.z.as_mut().unwrap_or(&mut no_z))
    }
}

/// Checks a state against the inputs: the first tuple is (batch, heads) of the inputs and whether
/// the spec normalises, the second the state's (batch, heads), `z` the normaliser's
/// (batch, heads) when the state has one.
/// Shared by the CPU and CUDA paths so both give the same errors.
pub(crate) fn check_state(
    (batch, heads, normalized): (usize, usize, bool),
    (got_batch, got_heads): (usize, usize),
    z: Option<(usize, usize)>,
) -> Result<()> {
    if (got_batch, got_heads) != (batch, heads) {
        return Err(Error::StateMismatch {
            batch,
            heads,
            got_batch,
            got_heads,
        });
    }
    match (normalized, z) {
        (true, None) => Err(Error::StateNormalizer(
            "this spec uses normalize = sum, so the state needs `z`: build it with \
             State::zeros(batch, heads, true) or take it from forward_with_state",
        )),
        (false, Some(_)) => Err(Error::StateNormalizer(
            "this spec has no normaliser but the state carries `z`: set `z` to None",
        )),
        (_, Some((zb, zh))) if (zb, zh) != (batch, heads) => Err(Error::StateMismatch {
            batch,
            heads,
            got_batch: zb,
            got_heads: zh,
        }),
        _ => Ok(()),
    }
}

/// A recurrent state that owns flat buffers, for token-by-token decoding with `decode_step`.
///
/// [`State`] holds dfdx tensors, as the rest of the API does; dfdx 0.13 gives no mutable access to
/// a tensor's buffer, so every `step` on a [`State`] copies `S` out and back in (2 x 128 KiB per
/// token at H = 8, d = 64: more than the update itself). `DecodeState` keeps `S` and `z` as plain
/// `Vec`s that the kernel updates in place. Convert at the ends of a generation:
/// [`DecodeState::from_state`] after a prefill, [`DecodeState::to_state`] to hand the state back
/// to `forward_with_state`.
///
/// Layouts: `S` is (batch, head, F, DV) row-major, `z` (batch, head, F), as in [`State`].
///
/// ```
/// # use attnc_runtime as attnc;
/// use attnc::{DecodeState, State};
/// use dfdx::shapes::Const;
/// let state: State<usize, Const<2>, 4, 4> = State::zeros(1, Const, true).unwrap();
/// let dec = DecodeState::from_state(&state);
/// assert_eq!((dec.batch(), dec.heads(), dec.s().len()), (1, 2, 32));
/// assert_eq!(dec.z().map(<[f32]>::len), Some(8));
/// ```
#[derive(Clone, Debug)]
pub struct DecodeState<B: Dim, H: Dim, const F: usize, const DV: usize> {
    batch: B,
    heads: H,
    s: Vec<f32>,
    z: Option<Vec<f32>>,
}

impl<B: Dim, H: Dim, const F: usize, const DV: usize> DecodeState<B, H, F, DV> {
    /// An all-zero state, with `z` when `normalized` (the spec has `normalize = sum`).
    pub fn zeros(batch: B, heads: H, normalized: bool) -> Self {
        let bh = batch.size() * heads.size();
        DecodeState {
            batch,
            heads,
            s: vec![0.0; bh * F * DV],
            z: normalized.then(|| vec![0.0; bh * F]),
        }
    }

    /// A copy of `state`'s buffers (in logical order, whatever the tensors' strides).
    pub fn from_state(state: &State<B, H, F, DV>) -> Self {
        DecodeState {
            batch: state.s.shape().0,
            heads: state.s.shape().1,
            s: contiguous_data(&state.s),
            z: state.z.as_ref().map(|z| z.as_vec()),
        }
    }

    /// The same state as dfdx tensors, for `forward_with_state` or inspection.
    pub fn to_state(&self) -> Result<State<B, H, F, DV>> {
        State::from_vecs(self.batch, self.heads, self.s.clone(), self.z.clone())
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.batch.size()
    }

    /// Head count.
    pub fn heads(&self) -> usize {
        self.heads.size()
    }

    /// `S`, (batch, head, F, DV) row-major.
    pub fn s(&self) -> &[f32] {
        &self.s
    }

    /// `z`, (batch, head, F) row-major; `Some` only for `normalize = sum`.
    pub fn z(&self) -> Option<&[f32]> {
        self.z.as_deref()
    }
}
