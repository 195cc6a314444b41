//! attnc's runtime: what generated kernels call and what users hold.
//!
//! Shared by both devices, at the root:
//! - [`State`]: the recurrent state shared by every spec;
//! - [`Error`]: every failure, never a panic on user input;
//! - [`Device`]: where kernels run;
//! - [`check`]: the argument checks of every entry point (shapes, the rules of `g` and `beta`,
//!   optional finite check);
//! - [`favor`]: FAVOR+'s projection sampler and what its feature map computes;
//! - [`api`]: the generic halves of the generated CPU entry points.
//!
//! One module per device:
//! - [`cpu`]: the kernel ABI, the tile primitives the CPU emitter lowers the kernel plan to,
//!   instruction-set variants and their dispatch ([`CpuIsa`]), (batch, head) and chunk-parallel
//!   scheduling ([`Schedule`]), tensor marshalling and the buffer pool;
//! - [`cuda`]: GPU tensors and state, NVRTC compilation with an on-disk PTX cache, launches.

#![warn(missing_docs)]

pub mod api;
pub mod check;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod error;
pub mod favor;
pub mod state;
pub mod systems;
pub mod train;

pub use check::{finite_check, set_finite_check};
pub use cpu::{CpuIsa, Schedule};
pub use device::Device;
pub use error::{Error, Result};
pub use state::{DecodeState, State, StepState};
pub use systems::ExtState;
