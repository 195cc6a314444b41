//! # attnc — attention kernels compiled from one attribute
//!
//! Declare an attention variant on a unit struct; the `#[attention(...)]` macro turns it at build
//! time into a fused chunkwise-parallel CPU kernel (AVX-512, AVX2+FMA and portable variants,
//! picked at run time) and CUDA C kernels (compiled with NVRTC on first use on a GPU) behind
//! statically shaped dfdx tensors, with `forward`, `forward_with_state` and a recurrent `step`
//! (and their `_cuda` siblings on [`CudaTensor`]s).
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
//! let o = LinearAttention::forward(&q, &k, &v).unwrap();
//! assert_eq!(o.shape(), &(Const::<1>, Const::<2>, Const::<40>, Const::<16>));
//! ```
//!
//! The contract (spec language, numerical meaning, API) is DESIGN.md; the README summarises it.

#![warn(missing_docs)]

pub use attnc_codegen::spec::{self, Spec};
pub use attnc_dsl::attention;
pub use attnc_runtime::cuda::{CudaDevice, CudaState, CudaTensor};
pub use attnc_runtime::launch::{CudaLaunch, Grid, KernelInfo};
pub use attnc_runtime::{finite_check, set_finite_check, CpuIsa, Device, Error, State};

/// The CUDA side of the runtime: NVRTC compilation with its on-disk PTX cache, and whether a
/// driver and NVRTC are present. Device tensors and states are re-exported at the crate root.
pub mod cuda {
    pub use attnc_runtime::cuda::{
        cache_dir, compile_ptx, compile_ptx_uncached, driver_available, nvrtc_available,
        nvrtc_version,
    };
}

/// Everything needed to declare a spec, build inputs and read outputs.
pub mod prelude {
    pub use crate::{attention, CudaDevice, CudaState, CudaTensor, Device, Error, Spec, State};
    pub use dfdx::shapes::{
        Const, ConstDim, Dim, HasShape, Rank0, Rank1, Rank2, Rank3, Rank4, Shape,
    };
    pub use dfdx::tensor::{
        AsArray, Cpu, OnesTensor, SampleTensor, Tensor, TensorFrom, TensorFromVec, ZerosTensor,
    };
}

/// What generated code refers to. Not a public API: it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use attnc_runtime::api::{forward, output_tensor, step, Config};
    pub use attnc_runtime::cuda::{forward_cuda, step_cuda, CudaTensor};
    pub use attnc_runtime::exec::{Kernel, Task, TokenLayout};
    pub use attnc_runtime::isa::Isa;
    pub use attnc_runtime::launch::{CudaLaunch, Grid, KernelInfo};
    pub use attnc_runtime::tile;
    pub use attnc_runtime::{Error, Result};
    pub use dfdx::shapes::{Const, Dim, HasShape};
    pub use dfdx::tensor::{Cpu, Tensor};
}
