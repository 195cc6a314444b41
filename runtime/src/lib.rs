//! attnc's runtime: what generated kernels call and what users hold.
//!
//! - [`State`]: the recurrent state shared by every spec;
//! - [`Error`]: every failure, never a panic on user input;
//! - [`Device`] and [`CpuIsa`]: where kernels run and which instruction-set variant;
//! - [`tile`]: the tile primitives the CPU emitter lowers the kernel plan to;
//! - [`favor`]: FAVOR+'s projection sampler and what its feature map computes;
//! - [`exec`]: argument checks, layout conversion, (batch, head) parallelism, ISA dispatch;
//! - [`cuda`]: GPU tensors and state, NVRTC compilation with an on-disk PTX cache, launches.

#![warn(missing_docs)]

pub mod cuda;
pub mod device;
pub mod error;
pub mod exec;
pub mod favor;
pub mod isa;
pub mod launch;
pub mod state;
pub mod tile;

pub use device::Device;
pub use error::{Error, Result};
pub use exec::{finite_check, set_finite_check};
pub use isa::CpuIsa;
pub use state::{DecodeState, State, StepState};

pub mod api;
