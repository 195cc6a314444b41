//! The generic halves of the generated entry points: the generated `forward`, `forward_with_state`
//! and `step` only fix the types and call these. The generated `forward`s take their tensors by
//! value, each with its dfdx tape: they split the tapes off (no copies), pass the untaped
//! tensors here by reference, and record the backward ([`crate::train`]) when the tape owns one.

use crate::check::{checked, Problem, ScalarRule};
use crate::cpu::kernel::{Kernel, Recurrent};
use crate::cpu::pool::recycle;
use crate::cpu::schedule::Buffers;
use crate::error::{Error, Result};
#[cfg(doc)]
use crate::state::DecodeState;
use crate::state::{State, StepState};
use attnc_codegen::abi::Signature;
use dfdx::shapes::{Dim, HasShape, Shape};
use dfdx::tensor::{Cpu, Tensor, TensorFromVec};

/// dk, dv and F of a spec, in the order the runners take them.
fn dims(sig: &Signature) -> [usize; 3] {
    [sig.dk, sig.dv, sig.f]
}

/// The FAVOR+ projection w (F x DK), checked, transposed to (DK, F) for the kernels
/// (`Task::proj`); empty when the spec takes none.
pub(crate) fn projection<Sp: Shape<Concrete = [usize; 2]>>(
    sig: &Signature,
    proj: Option<&Tensor<Sp, f32, Cpu>>,
) -> Result<Vec<f32>> {
    let Some(w) = proj else {
        return Ok(Vec::new());
    };
    if w.shape().concrete() != [sig.f, sig.dk] {
        return Err(Error::Internal(
            "the projection's shape disagrees with the spec's FEATURE_DIM x HEAD_DIM",
        ));
    }
    let w = checked("proj", w.as_vec())?;
    let mut wt = vec![0.0; w.len()];
    for (i, row) in w.chunks_exact(sig.dk.max(1)).enumerate() {
        for (d, x) in row.iter().enumerate() {
            if let Some(slot) = wt.get_mut(d * sig.f + i) {
                *slot = *x;
            }
        }
    }
    Ok(wt)
}

/// Initial state buffers: the given state (checked) or zeros.
fn initial_state<B: Dim, H: Dim, const F: usize, const DV: usize>(
    sig: &Signature,
    p: &Problem,
    initial: Option<&State<B, H, F, DV>>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let bh = p.batch * p.heads;
    match initial {
        Some(st) => {
            let (s, z) = st.to_vecs(p.batch, p.heads, sig.normalized)?;
            Ok((s, z.unwrap_or_default()))
        }
        None => Ok((
            vec![0.0; bh * sig.f * sig.dv],
            if sig.normalized {
                vec![0.0; bh * sig.f]
            } else {
                Vec::new()
            },
        )),
    }
}

/// `forward_with_state` for any layout: returns the output in the spec's layout and the state.
/// `proj` is FAVOR+'s projection (F x DK), `Some` exactly for `feature_map = favor`.
#[allow(clippy::too_many_arguments)]
pub fn forward<K, B, H, Sq, Sv, S3, Sp, const F: usize, const DV: usize>(
    sig: &Signature,
    (b, h): (B, H),
    q: &Tensor<Sq, f32, Cpu>,
    k: &Tensor<Sq, f32, Cpu>,
    v: &Tensor<Sv, f32, Cpu>,
    beta: Option<&Tensor<S3, f32, Cpu>>,
    g: Option<&Tensor<S3, f32, Cpu>>,
    proj: Option<&Tensor<Sp, f32, Cpu>>,
    initial: Option<&State<B, H, F, DV>>,
) -> Result<(Vec<f32>, State<B, H, F, DV>)>
where
    K: Recurrent,
    B: Dim,
    H: Dim,
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
    S3: Shape<Concrete = [usize; 3]>,
    Sp: Shape<Concrete = [usize; 2]>,
{
    let p = Problem::from_q(sig.layout, q.shape().concrete())?;
    let (s, z) = initial_state(sig, &p, initial)?;
    let (q, k, v) = gather_qkv(sig, &p, q, k, v);
    let mut bufs = Buffers {
        q: q?,
        k: k?,
        v: v?,
        beta: beta.map_or(Ok(Vec::new()), |t| {
            p.gather_rule_scalars("beta", ScalarRule::WriteStrength, t)
        })?,
        g: g.map_or(Ok(Vec::new()), |t| {
            p.gather_rule_scalars("g", ScalarRule::LogDecay, t)
        })?,
        proj: projection(sig, proj)?,
        s,
        z,
    };
    let out = K::run_all(&p, dims(sig), &mut bufs)?;
    recycle([bufs.q, bufs.k, bufs.v]);
    let z = sig.normalized.then_some(bufs.z);
    let state = State::from_vecs(b, h, bufs.s, z)?;
    Ok((p.from_heads_first(out, sig.dv), state))
}

/// The forward of exact softmax attention (a [`Kernel`] with no state): returns the output in
/// the spec's layout.
pub fn forward_tiled<K, Sq, Sv>(
    sig: &Signature,
    q: &Tensor<Sq, f32, Cpu>,
    k: &Tensor<Sq, f32, Cpu>,
    v: &Tensor<Sv, f32, Cpu>,
) -> Result<Vec<f32>>
where
    K: Kernel,
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
{
    let p = Problem::from_q(sig.layout, q.shape().concrete())?;
    let (q, k, v) = gather_qkv(sig, &p, q, k, v);
    let mut bufs = Buffers {
        q: q?,
        k: k?,
        v: v?,
        beta: Vec::new(),
        g: Vec::new(),
        proj: Vec::new(),
        s: Vec::new(),
        z: Vec::new(),
    };
    let out = K::run_all(&p, dims(sig), &mut bufs)?;
    recycle([bufs.q, bufs.k, bufs.v]);
    Ok(p.from_heads_first(out, sig.dv))
}

/// q, k and v checked and copied heads first. The three copies run on the pool's threads at
/// once: one thread does not saturate the memory bus, and at H = 1 the copies are otherwise the
/// serial part of a call.
#[allow(clippy::type_complexity)]
fn gather_qkv<Sq, Sv>(
    sig: &Signature,
    p: &Problem,
    q: &Tensor<Sq, f32, Cpu>,
    k: &Tensor<Sq, f32, Cpu>,
    v: &Tensor<Sv, f32, Cpu>,
) -> (Result<Vec<f32>>, Result<Vec<f32>>, Result<Vec<f32>>)
where
    Sq: Shape<Concrete = [usize; 4]>,
    Sv: Shape<Concrete = [usize; 4]>,
{
    let (q, (k, v)) = rayon::join(
        || p.gather_tokens("q", q, sig.dk),
        || {
            rayon::join(
                || p.gather_tokens("k", k, sig.dk),
                || p.gather_tokens("v", v, sig.dv),
            )
        },
    );
    (q, k, v)
}

/// `step` for any spec, on a [`State`] or a [`DecodeState`] ([`StepState`]): updates `state`
/// and returns o_t, (B, H, DV) flat. `proj` as for [`forward`].
#[allow(clippy::too_many_arguments)]
pub fn step<K, St, Sk, Sv, S2, Sp>(
    sig: &Signature,
    state: &mut St,
    q_t: &Tensor<Sk, f32, Cpu>,
    k_t: &Tensor<Sk, f32, Cpu>,
    v_t: &Tensor<Sv, f32, Cpu>,
    beta_t: Option<&Tensor<S2, f32, Cpu>>,
    g_t: Option<&Tensor<S2, f32, Cpu>>,
    proj: Option<&Tensor<Sp, f32, Cpu>>,
) -> Result<Vec<f32>>
where
    K: Recurrent,
    St: StepState,
    Sk: Shape<Concrete = [usize; 3]>,
    Sv: Shape<Concrete = [usize; 3]>,
    S2: Shape<Concrete = [usize; 2]>,
    Sp: Shape<Concrete = [usize; 2]>,
{
    let [batch, heads, _] = q_t.shape().concrete();
    let inputs = StepInputs {
        q_t,
        k_t,
        v_t,
        beta_t,
        g_t,
        proj,
    };
    state.update(batch, heads, sig.normalized, |s, z| {
        step_in_place::<K, _, _, _, _>(sig, s, z, inputs)
    })
}

/// One token's inputs to `step`.
struct StepInputs<'a, Sk: Shape, Sv: Shape, S2: Shape, Sp: Shape> {
    q_t: &'a Tensor<Sk, f32, Cpu>,
    k_t: &'a Tensor<Sk, f32, Cpu>,
    v_t: &'a Tensor<Sv, f32, Cpu>,
    beta_t: Option<&'a Tensor<S2, f32, Cpu>>,
    g_t: Option<&'a Tensor<S2, f32, Cpu>>,
    proj: Option<&'a Tensor<Sp, f32, Cpu>>,
}

/// Runs one step on checked state buffers `s` and `z` (empty without a normaliser), which it
/// updates in place, and returns o_t. The buffers are lent to the kernel and always given back,
/// even when an input is refused.
fn step_in_place<K, Sk, Sv, S2, Sp>(
    sig: &Signature,
    s: &mut Vec<f32>,
    z: &mut Vec<f32>,
    x: StepInputs<'_, Sk, Sv, S2, Sp>,
) -> Result<Vec<f32>>
where
    K: Recurrent,
    Sk: Shape<Concrete = [usize; 3]>,
    Sv: Shape<Concrete = [usize; 3]>,
    S2: Shape<Concrete = [usize; 2]>,
    Sp: Shape<Concrete = [usize; 2]>,
{
    let [batch, heads, _] = x.q_t.shape().concrete();
    let p = Problem::step(batch, heads);
    let mut bufs = Buffers {
        q: p.gather_heads("q_t", x.q_t, sig.dk)?,
        k: p.gather_heads("k_t", x.k_t, sig.dk)?,
        v: p.gather_heads("v_t", x.v_t, sig.dv)?,
        beta: x.beta_t.map_or(Ok(Vec::new()), |t| {
            p.gather_rule_head_scalars("beta_t", ScalarRule::WriteStrength, t)
        })?,
        g: x.g_t.map_or(Ok(Vec::new()), |t| {
            p.gather_rule_head_scalars("g_t", ScalarRule::LogDecay, t)
        })?,
        proj: projection(sig, x.proj)?,
        s: std::mem::take(s),
        z: std::mem::take(z),
    };
    let out = K::run_step_all(&p, dims(sig), &mut bufs);
    *s = std::mem::take(&mut bufs.s);
    *z = std::mem::take(&mut bufs.z);
    recycle([bufs.q, bufs.k, bufs.v]);
    out
}

/// `t` in the standard layout through dfdx's `contiguous` (free when it already is; a traced
/// copy otherwise, whose backward routes gradients back through the view).
pub fn contiguous<S: Shape, T: dfdx::tensor::Tape<f32, Cpu>>(
    t: Tensor<S, f32, Cpu, T>,
) -> Result<Tensor<S, f32, Cpu, T>> {
    dfdx::tensor_ops::ReshapeTo::try_contiguous(t).map_err(|e| Error::Tensor(format!("{e:?}")))
}

/// Wraps output data in a tensor on `like`'s device.
pub fn output_tensor<S: Shape, S2: Shape>(
    like: &Tensor<S2, f32, Cpu>,
    data: Vec<f32>,
    shape: S,
) -> Result<Tensor<S, f32, Cpu>> {
    like.device()
        .try_tensor_from_vec(data, shape)
        .map_err(|e| Error::Tensor(format!("{e:?}")))
}
