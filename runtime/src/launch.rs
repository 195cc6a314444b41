//! How a spec's generated CUDA kernels are launched: computed by the CUDA emitter at build time,
//! read by the runtime (cudarc) and by the host emulation in the tests, so both run the same
//! schedule. Plain data: no CUDA needed to build or read it.
//!
//! Every kernel of every spec has one parameter list (pointers first, in this order, then ints):
//!
//! ```text
//! (const float* q, const float* k, const float* v, const float* beta, const float* g,
//!  const float* proj, float* out, float* s, float* z, float* chunk_s, float* chunk_z,
//!  float* work, float* scratch, int n, int heads)
//! ```
//!
//! `q, k, v, out` are in the spec's layout, `beta, g` (B, H, N) or (B, N, H); `proj` is FAVOR+'s
//! projection w, (F, DK) row-major as the user passes it (one for the whole call); `s` (B, H, F, DV)
//! and `z` (B, H, F) hold the initial state on entry and the final state on exit; `chunk_s`,
//! `chunk_z`, `work` and `scratch` are workspaces sized by [`CudaLaunch::workspace`]. Pointers a
//! spec does not use may be any valid allocation.

use crate::exec::TokenLayout;

/// The grid of one kernel, as a function of batch x heads (`bh`) and tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    /// One block per (chunk or query tile, batch x head): `(ceil(n / chunk), bh, 1)`.
    Chunks,
    /// One block per (column block of the state, batch x head): `(blocks, bh, 1)`.
    Columns(u32),
    /// One block per batch x head: `(bh, 1, 1)`.
    Heads,
}

/// One kernel of a spec's CUDA source and how to launch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    /// The `extern "C"` name in the source.
    pub name: &'static str,
    /// Its grid.
    pub grid: Grid,
    /// Dynamic shared memory per block, bytes (above 48 KiB it needs the opt-in attribute).
    pub smem_bytes: u32,
}

/// A spec's launch configuration, computed at build time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaLaunch {
    /// Threads per block (one dimension), for every kernel.
    pub threads: u32,
    /// Chunk (or softmax tile) length C.
    pub chunk: usize,
    /// dk.
    pub dk: usize,
    /// dv.
    pub dv: usize,
    /// F.
    pub f: usize,
    /// Whether the state carries `z`.
    pub normalized: bool,
    /// Whether the kernels read `beta`.
    pub uses_beta: bool,
    /// Whether the kernels read `g`.
    pub uses_gates: bool,
    /// Whether the kernels read `proj` (`feature_map = favor`).
    pub uses_projection: bool,
    /// Axis order of q, k, v, out (and beta, g).
    pub layout: TokenLayout,
    /// The kernels of `forward`, launched in this order on one stream.
    pub forward: &'static [KernelInfo],
    /// The kernels of `step` (one token; `n = 1`), in order. Empty for softmax.
    pub step: &'static [KernelInfo],
    /// Floats per (batch, head, chunk) in `work`: tiles one phase leaves for the next.
    pub work_per_chunk: usize,
    /// Floats per block in `scratch`: tiles too large for shared memory.
    pub scratch_per_block: usize,
    /// Whether `chunk_s` (and `chunk_z` when normalised) hold one state per chunk.
    pub chunk_states: bool,
}

/// Workspace lengths, in floats, for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workspace {
    /// `chunk_s`: (B, H, chunks, F, DV).
    pub chunk_s: usize,
    /// `chunk_z`: (B, H, chunks, F).
    pub chunk_z: usize,
    /// `work`: (B, H, chunks, work_per_chunk).
    pub work: usize,
    /// `scratch`: blocks of the largest grid x scratch_per_block.
    pub scratch: usize,
}

impl CudaLaunch {
    /// Chunks (or query tiles) of a sequence of `n` tokens.
    pub fn chunks(&self, n: usize) -> usize {
        n.div_ceil(self.chunk.max(1))
    }

    /// The grid of a kernel for `bh` = batch x heads and `n` tokens.
    pub fn grid(&self, kernel: &KernelInfo, bh: usize, n: usize) -> (u32, u32, u32) {
        let bh = bh as u32;
        match kernel.grid {
            Grid::Chunks => (self.chunks(n) as u32, bh, 1),
            Grid::Columns(blocks) => (blocks, bh, 1),
            Grid::Heads => (bh, 1, 1),
        }
    }

    /// Workspace sizes for a call running `kernels` on `bh` = batch x heads and `n` tokens.
    pub fn workspace(&self, kernels: &[KernelInfo], bh: usize, n: usize) -> Workspace {
        let chunks = self.chunks(n);
        let blocks = kernels
            .iter()
            .map(|k| {
                let (x, y, z) = self.grid(k, bh, n);
                x as usize * y as usize * z as usize
            })
            .max()
            .unwrap_or(0);
        let states = if self.chunk_states { bh * chunks } else { 0 };
        Workspace {
            chunk_s: states * self.f * self.dv,
            chunk_z: if self.normalized { states * self.f } else { 0 },
            work: bh * chunks * self.work_per_chunk,
            scratch: blocks * self.scratch_per_block,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNELS: &[KernelInfo] = &[
        KernelInfo {
            name: "attnc_intra",
            grid: Grid::Chunks,
            smem_bytes: 0,
        },
        KernelInfo {
            name: "attnc_scan",
            grid: Grid::Columns(2),
            smem_bytes: 0,
        },
    ];

    #[test]
    fn grids_and_workspace_follow_the_sizes() {
        let l = CudaLaunch {
            threads: 256,
            chunk: 64,
            dk: 16,
            dv: 32,
            f: 16,
            normalized: true,
            uses_beta: false,
            uses_gates: false,
            uses_projection: false,
            layout: TokenLayout::Bhnd,
            forward: KERNELS,
            step: &[],
            work_per_chunk: 10,
            scratch_per_block: 3,
            chunk_states: true,
        };
        assert_eq!(l.grid(&KERNELS[0], 6, 130), (3, 6, 1));
        assert_eq!(l.grid(&KERNELS[1], 6, 130), (2, 6, 1));
        let w = l.workspace(KERNELS, 6, 130);
        assert_eq!(w.chunk_s, 6 * 3 * 16 * 32);
        assert_eq!(w.chunk_z, 6 * 3 * 16);
        assert_eq!(w.work, 6 * 3 * 10);
        assert_eq!(w.scratch, 18 * 3);
    }
}
