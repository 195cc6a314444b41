//! How a spec's generated CUDA kernels are launched: computed by the CUDA emitter at build time,
//! read by the runtime (cudarc) and by the host emulation in the tests, so both run the same
//! schedule. Plain data: no CUDA needed to build or read it; the types are defined once, in
//! `attnc_codegen::abi`, and re-exported here.
//!
//! Every kernel of every spec has one parameter list (pointers first, in this order, then ints):
//!
//! ```text
//! (const float* q, const float* k, const float* v, const float* beta, const float* g,
//!  const float* proj, float* out, float* s, float* z, float* chunk_s, float* chunk_z,
//!  float* work, float* scratch, const float* conv_q, const float* conv_k,
//!  const float* conv_v, float* tail_q, float* tail_k, float* tail_v, float* mom_s,
//!  float* mom_z, int n, int heads)
//! ```
//!
//! `q, k, v, out` are in the spec's layout, `beta, g` (B, H, N) or (B, N, H); `proj` is FAVOR+'s
//! projection w, (F, DK) row-major as the user passes it (one for the whole call), or
//! `rpe = toeplitz`'s log-weights `bias` (H, 2N - 1); `s` (B, H, F, DV)
//! and `z` (B, H, F) hold the initial state on entry and the final state on exit; `chunk_s`,
//! `chunk_z`, `work` and `scratch` are workspaces sized by [`CudaLaunch::workspace`]; `conv_*`,
//! `tail_*`, `mom_s` and `mom_z` are `short_conv`'s and momentum's buffers
//! (`attnc_codegen::abi` has their shapes). Pointers a spec does not use may be any valid
//! allocation.

pub use attnc_codegen::abi::{ClassKernels, CudaLaunch, Grid, KernelInfo, SmemClass, Workspace};
