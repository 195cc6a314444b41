//! # attnc — attention kernels compiled from one attribute
//!
//! Declare an attention variant on a unit struct; the [`attention`] macro turns it at build
//! time into a fused chunkwise-parallel CPU kernel (AVX-512, AVX2+FMA and portable variants,
//! picked at run time) and CUDA C kernels (compiled with NVRTC on first use on a GPU) behind
//! statically shaped dfdx tensors, with `forward`, `forward_with_state` and a recurrent `step`
//! (and their `_cuda` siblings on [`CudaTensor`]s), differentiable on dfdx's tape.
//!
//! ```
//! use attnc::prelude::*;
//!
//! /// Causal linear attention with the elu+1 feature map (Katharopoulos et al., 2020).
//! #[attention(head_dim = 16, feature_map = elu_plus_one, normalize = sum, chunk = 16)]
//! pub struct LinearAttention;
//!
//! let dev = Cpu::default();
//! let q: Tensor<Rank4<1, 2, 40, 16>, f32, _> = dev.sample_normal();
//! let k: Tensor<Rank4<1, 2, 40, 16>, f32, _> = dev.sample_normal();
//! let v: Tensor<Rank4<1, 2, 40, 16>, f32, _> = dev.sample_normal();
//! // By value, as dfdx's ops: clones are `Arc` clones, no copies.
//! let o = LinearAttention::forward(q.clone(), k.clone(), v.clone())?;
//! assert_eq!(o.shape(), &(Const::<1>, Const::<2>, Const::<40>, Const::<16>));
//! # Ok::<(), attnc::Error>(())
//! ```
//!
//! - The keys of the spec language, their rules and which tensor axis is which: [`attention`].
//! - What every spec generates, with an example per method on real specs: `attnc::showcase`
//!   (with the `showcase` feature, on by default on docs.rs).
//! - Gradients: with an `OwnedTape` on any input (`.leaky_trace()`), `forward` records its
//!   backward on dfdx's tape; `loss.backward()` then holds the gradients of q, k, v, beta, g,
//!   FAVOR+'s projection and the initial state by tensor id. `step` is inference only.
//! - Errors: every entry point returns [`Error`], whose messages say what to do; library code
//!   never panics on user input.
//!
#![doc = include_str!("../docs/meaning.md")]
//!
#![doc = include_str!("../docs/runtime.md")]
#![warn(missing_docs)]

// The generated code names `::attnc`, which inside this crate (the showcase) is itself.
extern crate self as attnc;

pub use attnc_codegen::abi::{BackwardAlgorithm, BackwardPlan};
pub use attnc_codegen::spec::{self, Spec};
#[doc = include_str!("../docs/keys.md")]
pub use attnc_dsl::attention;
pub use attnc_runtime::cuda::launch::{ClassKernels, CudaLaunch, Grid, KernelInfo, SmemClass};
pub use attnc_runtime::cuda::{CudaDevice, CudaExtState, CudaState, CudaTensor};
pub use attnc_runtime::systems::ExtDecodeState;
pub use attnc_runtime::{
    finite_check, set_finite_check, CpuIsa, DecodeState, Device, Error, ExtState, Schedule, State,
};

/// The CUDA side of the runtime: NVRTC compilation with its on-disk PTX cache, and whether a
/// driver and NVRTC are present. Device tensors and states are re-exported at the crate root.
pub mod cuda {
    pub use attnc_runtime::cuda::{
        cache_dir, compile_ptx, compile_ptx_uncached, compile_report, driver_available,
        nvrtc_available, nvrtc_version,
    };
}

/// FAVOR+ (Performer): `feature_map = favor(features = m)` takes a projection w (m x dk) at run
/// time, last among the inputs of `forward`, `forward_with_state` and `step` (and of their
/// `_cuda` siblings, as a [`CudaTensor`]). [`favor::orthogonal_gaussian`] samples it as Performer
/// does; `phi(x)_i = exp(w_i . x' - |x'|^2 / 2) / sqrt(m)` with `x' = x / dk^(1/4)`, the
/// stabiliser c being 0 (no overflow for any input norm: the exponent is at most
/// `|w_i|^2 / 2`). The full account: [`orthogonal_gaussian`](favor::orthogonal_gaussian).
///
/// ```
/// use attnc::prelude::*;
///
/// /// Performer: causal FAVOR+ attention with 64 random features.
/// #[attention(head_dim = 16, feature_map = favor(features = 64), normalize = sum, chunk = 16)]
/// pub struct Performer;
///
/// let dev = Cpu::default();
/// let q: Tensor<Rank4<1, 2, 40, 16>, f32, _> = dev.sample_normal();
/// let k: Tensor<Rank4<1, 2, 40, 16>, f32, _> = dev.sample_normal();
/// let v: Tensor<Rank4<1, 2, 40, 16>, f32, _> = dev.sample_normal();
/// // (FEATURE_DIM, HEAD_DIM) = (64, 16), inferred from `forward`'s signature; seeded.
/// let w = attnc::favor::orthogonal_gaussian(42)?;
/// let o = Performer::forward(q.clone(), k.clone(), v.clone(), w.clone())?;
/// assert_eq!(Performer::FEATURE_DIM, 64);
/// assert!(o.as_vec().iter().all(|x| x.is_finite()));
///
/// // Decoding continues from forward's state with the same projection.
/// let (_, mut state) = Performer::forward_with_state(q, k, v, w.clone(), None)?;
/// let q_t: Tensor<Rank3<1, 2, 16>, f32, _> = dev.sample_normal();
/// let o_t = Performer::step(&mut state, &q_t, &q_t, &q_t, &w)?;
/// assert_eq!(o_t.shape(), &(Const::<1>, Const::<2>, Const::<16>));
/// # Ok::<(), attnc::Error>(())
/// ```
pub mod favor {
    pub use attnc_runtime::favor::{orthogonal_gaussian, orthogonal_gaussian_vec};
}

/// Everything needed to declare a spec, build inputs and read outputs.
pub mod prelude {
    // `Device` (attnc's device choice) stays at `attnc::Device`: dfdx's prelude has a trait of
    // that name, and importing both preludes must not make either ambiguous.
    pub use crate::{
        attention, CudaDevice, CudaExtState, CudaState, CudaTensor, DecodeState, Error,
        ExtDecodeState, ExtState, Spec, State,
    };
    pub use dfdx::shapes::{
        Const, ConstDim, Dim, HasShape, Rank0, Rank1, Rank2, Rank3, Rank4, Shape,
    };
    pub use dfdx::tensor::{
        AsArray, Cpu, OnesTensor, SampleTensor, Tensor, TensorFrom, TensorFromVec, ZerosTensor,
    };
    // Training: trace inputs, reduce to a loss, run the tape.
    pub use dfdx::tensor::{Gradients, NoneTape, OwnedTape, Trace};
    pub use dfdx::tensor_ops::{Backward, SumTo};
}

#[cfg(feature = "showcase")]
pub mod showcase;

/// What generated code refers to. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use attnc_codegen::abi::{
        BackwardAlgorithm, BackwardPlan, ClassKernels, CudaLaunch, Grid, KernelInfo, Layout,
        Signature, SmemClass, Tri,
    };
    pub use attnc_codegen::deriv::eval_derivative;
    pub use attnc_runtime::api::{contiguous, forward, forward_tiled, output_tensor, step};
    pub use attnc_runtime::check::Problem;
    pub use attnc_runtime::cpu::grad::{dphi_rows, phi_rows, Differentiable};
    pub use attnc_runtime::cpu::schedule::{run_forward, run_recurrent, run_step, Buffers};
    pub use attnc_runtime::cpu::tile;
    pub use attnc_runtime::cpu::{Isa, Kernel, Phase, PhaseTask, Recurrent, Task};
    pub use attnc_runtime::cuda::{
        forward_cuda, rpe_forward_cuda, step_cuda, systems_forward_cuda, systems_step_cuda,
        CudaExtState, CudaTensor,
    };
    pub use attnc_runtime::systems;
    pub use attnc_runtime::train::{backward, Saved};
    pub use attnc_runtime::{Error, Result};
    pub use dfdx::nn::Module;
    pub use dfdx::shapes::{Const, Dim, HasShape};
    pub use dfdx::tensor::{Cpu, Merge, NoneTape, PutTape, SplitTape, Tape, Tensor};
    pub use std::borrow::Cow;
}
