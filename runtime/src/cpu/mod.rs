//! The CPU backend.
//!
//! - [`kernel`]: the ABI generated kernels implement ([`Kernel`], [`Recurrent`], [`Task`],
//!   [`PhaseTask`], [`Phase`]);
//! - [`tile`]: the tile primitives the CPU emitter lowers the kernel plan to;
//! - [`isa`]: the instruction-set variants ([`CpuIsa`]) and the [`Isa`] markers kernels are
//!   generic over;
//! - `dispatch`: the `#[target_feature]` trampolines that run a kernel with the selected ISA;
//! - [`schedule`]: how a call is spread over the threads ([`Schedule`]: by heads, or the
//!   chunk-parallel phases);
//! - [`marshal`]: dfdx tensors to and from the kernels' flat buffers, layout permutes;
//! - [`pool`]: the buffer pool that keeps large copies and workspaces between calls.

pub(crate) mod dispatch;
pub mod grad;
pub mod isa;
pub mod kernel;
pub mod marshal;
pub mod pool;
pub mod schedule;
pub mod tile;

pub use isa::{CpuIsa, Isa};
pub use kernel::{Kernel, Phase, PhaseTask, Recurrent, Task};
pub use schedule::Schedule;
