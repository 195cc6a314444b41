//! The ABI between generated code and the runtime: plain data, one definition each.
//!
//! The planner and the emitters compute these values at build time and print them into the
//! expansion (one `ToTokens` per type, feature `syn`); the runtime (`attnc-runtime` depends on
//! this crate without the `syn` feature) and the host emulation of the tests read them. Nothing
//! here needs CUDA.
//!
//! Every CUDA kernel of every spec has one parameter list (pointers first, in this order, then ints):
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
//! `chunk_z`, `work` and `scratch` are workspaces sized by [`CudaLaunch::workspace`].
//!
//! The systems' buffers ([`Signature::conv`], [`Signature::momentum`]): `conv_q`, `conv_k`
//! (H, DK, W) and `conv_v` (H, DV, W) are `short_conv`'s weights; `tail_q`, `tail_k` (B, H, W-1,
//! DK) and `tail_v` (B, H, W-1, DV) the carried raw rows, oldest first (the initial tail on
//! entry, the final one on exit); `mom_s` (B, H, F, DV) and `mom_z` (B, H, F) momentum's buffers
//! m and n, in and out like `s` and `z`.
//!
//! Pointers a spec does not use may be any valid allocation.

use std::borrow::Cow;

pub use crate::spec::Layout;

/// Which part of a tile product is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tri {
    /// The whole product.
    Full,
    /// Only the lower triangle (with diagonal) of the output; the rest is set to zero
    /// (causal scores: token t sees s <= t).
    LowerOut,
    /// The left operand is lower triangular: row t only reads `a[t][..=t]` (causal scores
    /// times values).
    LowerA,
}

/// A spec's kernel signature, the same on every device: sizes, and which optional inputs the
/// kernels read and which state they carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Axis order of q, k, v, out (and beta, g).
    pub layout: Layout,
    /// Chunk (or softmax tile) length C.
    pub chunk: usize,
    /// dk.
    pub dk: usize,
    /// dv.
    pub dv: usize,
    /// F, the feature dim: rows of the state.
    pub f: usize,
    /// Whether the state carries `z` (`normalize = sum`).
    pub normalized: bool,
    /// Whether the kernels read `beta` (delta updates).
    pub uses_beta: bool,
    /// Whether the kernels read `g` (gated updates).
    pub uses_gates: bool,
    /// Whether the kernels read FAVOR+'s projection w (F x DK).
    pub uses_projection: bool,
    /// H when the spec fixes it (`heads = H`): the generated signatures then take `Const<H>`.
    pub heads: Option<usize>,
    /// `short_conv`'s width W (0 without it): the CUDA kernels' loads of q, k and v convolve
    /// them (reading `conv_*` and `tail_*`), and `forward` ends by writing the new tails.
    pub conv: usize,
    /// Whether the state carries momentum's buffers (`update = momentum(..)`): `mom_s`, `mom_z`.
    pub momentum: bool,
    /// `rpe = toeplitz`: `forward` only, by FFT; its log-weights `bias` (H, 2N - 1) come in the
    /// `proj` pointer (rpe excludes FAVOR+) and its FFTs work in `scratch`
    /// ([`CudaLaunch::rpe_scratch`]).
    pub rpe: bool,
}

/// SMs of the largest GPU a launch plans for (A100 108, H100/H200 132, B200 148).
pub const MAX_SMS: usize = 160;

/// GPUs grouped by their shared memory per SM. Each class gets kernels planned for its own
/// budget ([`SmemClass::budgets`]): the generated source holds one version of a kernel per
/// class where their plans differ, selected by `ATTNC_SMEM_CLASS` ([`SmemClass::cuda_arch`]),
/// which the source derives from `__CUDA_ARCH__` by the table [`SmemClass::preprocessor_table`]
/// prints, the same table the runtime reads the device's class from ([`SmemClass::of_arch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SmemClass {
    /// sm_90, sm_100 and sm_103 (H100, H200, B200): 228 KiB per SM, 227 KiB per block.
    Sm90,
    /// sm_80 and sm_87 (A100, Orin): 164 KiB per SM, 163 KiB per block.
    Sm80,
    /// sm_86, sm_89, sm_120 and any newer arch not listed (RTX 30/40/50, L4, L40): 100 KiB per
    /// SM, 99 KiB per block, 1536 threads per SM.
    Sm86,
    /// sm_75 and older (T4, RTX 20): 64 KiB per SM and per block, 1024 threads per SM.
    Sm75,
}

impl SmemClass {
    /// Every class, in the order the architecture table is read (the first whose ranges hold
    /// the arch wins).
    pub const ALL: [SmemClass; 4] = [
        SmemClass::Sm90,
        SmemClass::Sm80,
        SmemClass::Sm86,
        SmemClass::Sm75,
    ];

    /// The `__CUDA_ARCH__` values (major x 100 + minor x 10) of the class, as half-open ranges,
    /// read in [`SmemClass::ALL`]'s order.
    fn arch_ranges(self) -> &'static [(u32, u32)] {
        match self {
            SmemClass::Sm90 => &[(900, 1100)],
            SmemClass::Sm80 => &[(800, 810), (870, 880)],
            SmemClass::Sm86 => &[(800, u32::MAX)],
            SmemClass::Sm75 => &[(0, 800)],
        }
    }

    /// The class of a `__CUDA_ARCH__` value (900 for sm_90).
    pub fn of_cuda_arch(arch: u32) -> SmemClass {
        SmemClass::ALL
            .into_iter()
            .find(|c| {
                c.arch_ranges()
                    .iter()
                    .any(|(lo, hi)| (*lo..*hi).contains(&arch))
            })
            .unwrap_or(SmemClass::Sm75)
    }

    /// The class of an NVRTC architecture name (`sm_90`, `sm_90a`, `compute_86`, `sm_120`);
    /// `None` when it does not read as one.
    pub fn of_arch(arch: &str) -> Option<SmemClass> {
        let rest = arch
            .strip_prefix("sm_")
            .or_else(|| arch.strip_prefix("compute_"))?;
        let digits = rest.trim_end_matches(|c: char| c.is_ascii_lowercase());
        let suffix = rest.len() - digits.len();
        if !(2..=3).contains(&digits.len()) || !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        if suffix > 1 {
            return None;
        }
        // "90" is 9.0, "120" is 12.0: the last digit is the minor version.
        digits
            .parse::<u32>()
            .ok()
            .map(|v| Self::of_cuda_arch(v * 10))
    }

    /// The value `ATTNC_SMEM_CLASS` takes for this class in the generated source: the
    /// `__CUDA_ARCH__` of its first architecture.
    pub fn cuda_arch(self) -> u32 {
        match self {
            SmemClass::Sm90 => 900,
            SmemClass::Sm80 => 800,
            SmemClass::Sm86 => 860,
            SmemClass::Sm75 => 750,
        }
    }

    /// Shared memory per SM, bytes.
    pub fn smem_per_sm(self) -> usize {
        match self {
            SmemClass::Sm90 => 228 * 1024,
            SmemClass::Sm80 => 164 * 1024,
            SmemClass::Sm86 => 100 * 1024,
            SmemClass::Sm75 => 64 * 1024,
        }
    }

    /// The most dynamic shared memory one block may opt into, bytes.
    pub fn max_block_smem(self) -> usize {
        match self {
            SmemClass::Sm75 => 64 * 1024,
            _ => self.smem_per_sm() - 1024,
        }
    }

    /// Shared memory the hardware reserves per resident block, bytes (1 KiB from sm_80 on).
    pub fn reserved_per_block(self) -> usize {
        match self {
            SmemClass::Sm75 => 0,
            _ => 1024,
        }
    }

    /// Threads one SM holds.
    pub fn threads_per_sm(self) -> usize {
        match self {
            SmemClass::Sm90 | SmemClass::Sm80 => 2048,
            SmemClass::Sm86 => 1536,
            SmemClass::Sm75 => 1024,
        }
    }

    /// Blocks of `threads` threads using `smem_bytes` of dynamic shared memory that one SM
    /// holds at once (0 when one block does not fit).
    pub fn blocks_per_sm(self, smem_bytes: usize, threads: u32) -> usize {
        if smem_bytes > self.max_block_smem() {
            return 0;
        }
        let by_smem = self.smem_per_sm() / (smem_bytes + self.reserved_per_block()).max(1);
        let by_threads = self.threads_per_sm() / (threads.max(1) as usize);
        by_smem.min(by_threads)
    }

    /// The shared-memory budgets a block's tiles are planned for, bytes, in order of preference:
    /// two blocks per SM (so one block's barriers and loads overlap the other's work), then the
    /// most one block may have. The planner takes the first under which a kernel needs no
    /// global scratch.
    pub fn budgets(self) -> [usize; 2] {
        let two = (self.smem_per_sm() / 2 - self.reserved_per_block()).min(self.max_block_smem());
        [two, self.max_block_smem()]
    }

    /// The preprocessor lines that define `ATTNC_SMEM_CLASS` from `__CUDA_ARCH__` (unless the
    /// compiler's options define it), printed from the table [`SmemClass::of_cuda_arch`] reads.
    pub fn preprocessor_table() -> String {
        let mut out = String::from(
            "// The shared-memory class of the architecture compiled for: kernels whose plans differ by\n\
             // class come in one version per class (attnc's runtime reads the same table).\n\
             #ifndef ATTNC_SMEM_CLASS\n#if !defined(__CUDA_ARCH__)\n",
        );
        out.push_str(&format!(
            "#define ATTNC_SMEM_CLASS {}\n",
            SmemClass::ALL[0].cuda_arch()
        ));
        for c in SmemClass::ALL {
            let cond: Vec<String> = c
                .arch_ranges()
                .iter()
                .map(|&(lo, hi)| match (lo, hi) {
                    (0, hi) => format!("__CUDA_ARCH__ < {hi}"),
                    (lo, u32::MAX) => format!("__CUDA_ARCH__ >= {lo}"),
                    (lo, hi) => format!("(__CUDA_ARCH__ >= {lo} && __CUDA_ARCH__ < {hi})"),
                })
                .collect();
            out.push_str(&format!(
                "#elif {}\n#define ATTNC_SMEM_CLASS {}\n",
                cond.join(" || "),
                c.cuda_arch()
            ));
        }
        out.push_str("#endif\n#endif\n");
        out
    }
}

/// The grid of one CUDA kernel, as a function of batch x heads (`bh`) and tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    /// One block per (chunk or query tile, batch x head): `(ceil(n / chunk), bh, 1)`; kernels
    /// loop over chunks with stride `gridDim.x`, so a kernel with global scratch gets no more
    /// blocks than can be resident at once ([`KernelInfo::resident_blocks`]) and its scratch is
    /// sized by residency, not by chunks.
    Chunks,
    /// One block per (column block of the state, batch x head): `(blocks, bh, 1)`.
    Columns(u32),
    /// As [`Grid::Chunks`], once per block of value columns: `(chunks, bh, blocks)`.
    ChunkColumns(u32),
    /// One block per batch x head: `(bh, 1, 1)`.
    Heads,
}

/// One kernel of a spec's CUDA source and how to launch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    /// The `extern "C"` name in the source.
    pub name: &'static str,
    /// The shared-memory class this version of the kernel is planned for.
    pub class: SmemClass,
    /// Its grid.
    pub grid: Grid,
    /// Dynamic shared memory per block, bytes (above 48 KiB it needs the opt-in attribute).
    pub smem_bytes: u32,
    /// Floats of global scratch per block: tiles too large for shared memory.
    pub scratch_floats: usize,
}

impl KernelInfo {
    /// At least as many blocks as any GPU of its class keeps resident at once for this kernel:
    /// [`MAX_SMS`] times the blocks per SM the class's shared memory and thread limits allow.
    pub fn resident_blocks(&self, threads: u32) -> usize {
        MAX_SMS * self.blocks_per_sm(threads).max(1)
    }

    /// Blocks of this kernel one SM of its class holds at once.
    pub fn blocks_per_sm(&self, threads: u32) -> usize {
        self.class.blocks_per_sm(self.smem_bytes as usize, threads)
    }
}

/// The kernels of one shared-memory class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassKernels {
    /// The class.
    pub class: SmemClass,
    /// The kernels of `forward`, launched in this order on one stream.
    pub forward: Cow<'static, [KernelInfo]>,
    /// The kernels of `step` (one token; `n = 1`), in order. Empty for softmax.
    pub step: Cow<'static, [KernelInfo]>,
}

/// A spec's CUDA launch configuration, computed at build time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaLaunch {
    /// Sizes and inputs, as on the CPU.
    pub signature: Signature,
    /// Threads per block (one dimension), for every kernel.
    pub threads: u32,
    /// The kernels of `forward` and `step` for each shared-memory class, in
    /// [`SmemClass::ALL`]'s order ([`CudaLaunch::kernels`]).
    pub classes: Cow<'static, [ClassKernels]>,
    /// Floats per (batch, head, chunk) in `work`: tiles one phase leaves for the next.
    pub work_per_chunk: usize,
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
    /// `scratch`: blocks of the largest grid x the largest per-block scratch.
    pub scratch: usize,
}

impl CudaLaunch {
    /// The kernels for a GPU of `class`; `None` only if the launch lacks the class (a
    /// description not made by attnc's emitter).
    pub fn kernels(&self, class: SmemClass) -> Option<&ClassKernels> {
        self.classes.iter().find(|k| k.class == class)
    }

    /// Chunks (or query tiles) of a sequence of `n` tokens.
    pub fn chunks(&self, n: usize) -> usize {
        n.div_ceil(self.signature.chunk.max(1))
    }

    /// The grid of a kernel for `bh` = batch x heads and `n` tokens.
    pub fn grid(&self, kernel: &KernelInfo, bh: usize, n: usize) -> (u32, u32, u32) {
        let chunks = self.chunks(n);
        let cols = match kernel.grid {
            Grid::ChunkColumns(blocks) => blocks as usize,
            _ => 1,
        };
        let x = match kernel.scratch_floats {
            0 => chunks,
            _ => chunks.min((kernel.resident_blocks(self.threads) / (bh * cols).max(1)).max(1)),
        };
        let bh = bh as u32;
        match kernel.grid {
            Grid::Chunks => (x as u32, bh, 1),
            Grid::ChunkColumns(blocks) => (x as u32, bh, blocks),
            Grid::Columns(blocks) => (blocks, bh, 1),
            Grid::Heads => (bh, 1, 1),
        }
    }

    /// Workspace sizes for a call running `kernels` on `bh` = batch x heads and `n` tokens.
    pub fn workspace(&self, kernels: &[KernelInfo], bh: usize, n: usize) -> Workspace {
        let chunks = self.chunks(n);
        // Each kernel indexes its own blocks' scratch; the kernels run one after another.
        let scratch = kernels
            .iter()
            .map(|k| {
                let (x, y, z) = self.grid(k, bh, n);
                x as usize * y as usize * z as usize * k.scratch_floats
            })
            .max()
            .unwrap_or(0);
        let sig = &self.signature;
        let states = if self.chunk_states { bh * chunks } else { 0 };
        let rpe = match sig.rpe {
            true => self.rpe_scratch(bh, n),
            false => 0,
        };
        Workspace {
            chunk_s: states * sig.f * sig.dv,
            chunk_z: if sig.normalized { states * sig.f } else { 0 },
            work: bh * chunks * self.work_per_chunk,
            scratch: scratch.max(rpe),
        }
    }

    /// `rpe = toeplitz`: value columns its FFT kernel takes two at a time (the normaliser's
    /// ones column included), one block per pair and (batch, head).
    pub fn rpe_pairs(&self) -> usize {
        (self.signature.dv + usize::from(self.signature.normalized)).div_ceil(2)
    }

    /// `rpe = toeplitz`: the FFT length for `n` tokens, the power of two >= 2n (a linear, not
    /// circular, correlation of two length-n sequences).
    pub fn rpe_fft_len(n: usize) -> usize {
        (2 * n).next_power_of_two()
    }

    /// `rpe = toeplitz`: floats of `scratch` for `bh` = batch x heads and `n` tokens: per block
    /// of the FFT kernel three complex f64 sequences of the FFT length (the weights' spectrum, a
    /// pair of columns and its ping-pong buffer) and two f64 accumulators of length n, then the
    /// normaliser's denominators (bh x n).
    pub fn rpe_scratch(&self, bh: usize, n: usize) -> usize {
        let l = Self::rpe_fft_len(n);
        self.rpe_pairs() * bh * (12 * l + 4 * n) + bh * n
    }
}

/// How a spec's backward pass runs on the CPU, decided at build time from its update rule and
/// sizes ([`crate::plan::Plan::backward`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackwardAlgorithm {
    /// Linear attention, every update: per chunk, C x C and C x F products from the chunk's saved
    /// incoming state, a reverse scan over chunk states carrying dS (and dz); dg as a reverse
    /// cumulative sum within the chunk. Delta rules recompute the chunk's WY system
    /// (I + L) U = diag(β)(V - diag(γ) K S) and take dR = (I + L)^-T dU by back substitution.
    Chunkwise,
    /// Exact softmax: FlashAttention-2's backward, tiles of C queries and C keys, scores and the
    /// row log-sum-exp recomputed, D = rowsum(dO ⊙ O) from the saved output.
    FlashTiles,
}

/// The backward pass of a spec: its algorithm and what it saves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackwardPlan {
    /// The algorithm.
    pub algorithm: BackwardAlgorithm,
    /// Tokens between saved states (F x DV each; the chunk). 0 for softmax, which has none.
    pub state_stride: usize,
    /// F x DV, the floats of one state.
    pub state_floats: usize,
}

impl BackwardPlan {
    /// Floats the backward holds per (batch, head) for `n` tokens beyond the inputs and their
    /// gradients: one state per `state_stride` tokens (everything else is recomputed per chunk).
    /// Saving every token's state instead would hold `n x state_floats`.
    pub fn saved_floats(&self, n: usize) -> usize {
        match self.algorithm {
            BackwardAlgorithm::FlashTiles => 0,
            BackwardAlgorithm::Chunkwise => {
                n.div_ceil(self.state_stride.max(1)) * self.state_floats
            }
        }
    }
}

/// How generated code spells these values: paths through `::attnc::__private`.
#[cfg(feature = "syn")]
mod tokens {
    use super::*;
    use proc_macro2::{Literal, TokenStream};
    use quote::{quote, ToTokens};

    fn private() -> TokenStream {
        quote!(::attnc::__private)
    }

    impl ToTokens for Tri {
        fn to_tokens(&self, out: &mut TokenStream) {
            let p = private();
            out.extend(match self {
                Tri::Full => quote!(#p::Tri::Full),
                Tri::LowerOut => quote!(#p::Tri::LowerOut),
                Tri::LowerA => quote!(#p::Tri::LowerA),
            });
        }
    }

    impl ToTokens for BackwardPlan {
        fn to_tokens(&self, out: &mut TokenStream) {
            let algorithm = match self.algorithm {
                BackwardAlgorithm::Chunkwise => quote!(::attnc::BackwardAlgorithm::Chunkwise),
                BackwardAlgorithm::FlashTiles => quote!(::attnc::BackwardAlgorithm::FlashTiles),
            };
            let [stride, floats] =
                [self.state_stride, self.state_floats].map(Literal::usize_unsuffixed);
            out.extend(quote! {
                ::attnc::BackwardPlan {
                    algorithm: #algorithm,
                    state_stride: #stride,
                    state_floats: #floats,
                }
            });
        }
    }

    impl ToTokens for Layout {
        fn to_tokens(&self, out: &mut TokenStream) {
            let p = private();
            out.extend(match self {
                Layout::Bhnd => quote!(#p::Layout::Bhnd),
                Layout::Bnhd => quote!(#p::Layout::Bnhd),
            });
        }
    }

    impl ToTokens for Signature {
        fn to_tokens(&self, out: &mut TokenStream) {
            let p = private();
            let Signature {
                layout,
                chunk,
                dk,
                dv,
                f,
                normalized,
                uses_beta,
                uses_gates,
                uses_projection,
                heads,
                conv,
                momentum,
                rpe,
            } = *self;
            let heads = match heads {
                Some(h) => {
                    let h = Literal::usize_unsuffixed(h);
                    quote!(::core::option::Option::Some(#h))
                }
                None => quote!(::core::option::Option::None),
            };
            let [chunk, dk, dv, f, conv] = [chunk, dk, dv, f, conv].map(Literal::usize_unsuffixed);
            out.extend(quote! {
                #p::Signature {
                    layout: #layout,
                    chunk: #chunk,
                    dk: #dk,
                    dv: #dv,
                    f: #f,
                    normalized: #normalized,
                    uses_beta: #uses_beta,
                    uses_gates: #uses_gates,
                    uses_projection: #uses_projection,
                    heads: #heads,
                    conv: #conv,
                    momentum: #momentum,
                    rpe: #rpe,
                }
            });
        }
    }

    impl ToTokens for Grid {
        fn to_tokens(&self, out: &mut TokenStream) {
            let p = private();
            out.extend(match self {
                Grid::Chunks => quote!(#p::Grid::Chunks),
                Grid::ChunkColumns(n) => {
                    let n = Literal::u32_unsuffixed(*n);
                    quote!(#p::Grid::ChunkColumns(#n))
                }
                Grid::Columns(n) => {
                    let n = Literal::u32_unsuffixed(*n);
                    quote!(#p::Grid::Columns(#n))
                }
                Grid::Heads => quote!(#p::Grid::Heads),
            });
        }
    }

    impl ToTokens for SmemClass {
        fn to_tokens(&self, out: &mut TokenStream) {
            let p = private();
            out.extend(match self {
                SmemClass::Sm90 => quote!(#p::SmemClass::Sm90),
                SmemClass::Sm80 => quote!(#p::SmemClass::Sm80),
                SmemClass::Sm86 => quote!(#p::SmemClass::Sm86),
                SmemClass::Sm75 => quote!(#p::SmemClass::Sm75),
            });
        }
    }

    impl ToTokens for KernelInfo {
        fn to_tokens(&self, out: &mut TokenStream) {
            let p = private();
            let name = Literal::string(self.name);
            let (class, grid) = (self.class, self.grid);
            let smem = Literal::u32_unsuffixed(self.smem_bytes);
            let scratch = Literal::usize_unsuffixed(self.scratch_floats);
            out.extend(quote! {
                #p::KernelInfo {
                    name: #name, class: #class, grid: #grid, smem_bytes: #smem,
                    scratch_floats: #scratch,
                }
            });
        }
    }

    impl ToTokens for ClassKernels {
        fn to_tokens(&self, out: &mut TokenStream) {
            let p = private();
            let class = self.class;
            let (forward, step) = (self.forward.iter(), self.step.iter());
            out.extend(quote! {
                #p::ClassKernels {
                    class: #class,
                    forward: #p::Cow::Borrowed(&[#(#forward),*]),
                    step: #p::Cow::Borrowed(&[#(#step),*]),
                }
            });
        }
    }

    impl ToTokens for CudaLaunch {
        fn to_tokens(&self, out: &mut TokenStream) {
            let p = private();
            let sig = self.signature;
            let threads = Literal::u32_unsuffixed(self.threads);
            let classes = self.classes.iter();
            let work = Literal::usize_unsuffixed(self.work_per_chunk);
            let states = self.chunk_states;
            out.extend(quote! {
                #p::CudaLaunch {
                    signature: #sig,
                    threads: #threads,
                    classes: #p::Cow::Borrowed(&[#(#classes),*]),
                    work_per_chunk: #work,
                    chunk_states: #states,
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNELS: &[KernelInfo] = &[
        KernelInfo {
            name: "attnc_intra",
            class: SmemClass::Sm90,
            grid: Grid::Chunks,
            smem_bytes: 0,
            scratch_floats: 3,
        },
        KernelInfo {
            name: "attnc_scan",
            class: SmemClass::Sm90,
            grid: Grid::Columns(2),
            smem_bytes: 0,
            scratch_floats: 1,
        },
    ];

    #[test]
    fn grids_and_workspace_follow_the_sizes() {
        let l = CudaLaunch {
            signature: Signature {
                layout: Layout::Bhnd,
                chunk: 64,
                dk: 16,
                dv: 32,
                f: 16,
                normalized: true,
                uses_beta: false,
                uses_gates: false,
                uses_projection: false,
                heads: None,
                conv: 0,
                momentum: false,
                rpe: false,
            },
            threads: 256,
            classes: Cow::Borrowed(&[]),
            work_per_chunk: 10,
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

    #[test]
    fn rpe_workspace_grows_linearly_never_n_squared() {
        let mut l = CudaLaunch {
            signature: Signature {
                layout: Layout::Bhnd,
                chunk: 64,
                dk: 64,
                dv: 64,
                f: 64,
                normalized: true,
                uses_beta: false,
                uses_gates: false,
                uses_projection: false,
                heads: None,
                conv: 0,
                momentum: false,
                rpe: true,
            },
            threads: 256,
            classes: Cow::Borrowed(&[]),
            work_per_chunk: 0,
            chunk_states: false,
        };
        assert_eq!(CudaLaunch::rpe_fft_len(100), 256);
        assert_eq!(CudaLaunch::rpe_fft_len(4096), 8192);
        // (64 + 1) columns in 33 pairs: 33 blocks per (batch, head).
        assert_eq!(l.rpe_pairs(), 33);
        // Per (batch, head) and token: 33 x (12 x 2 + 4) + 1 floats, at every power of two.
        for n in [1024, 4096, 65536] {
            assert_eq!(l.rpe_scratch(8, n), 8 * n * (33 * 28 + 1));
            assert_eq!(l.workspace(&[], 8, n).scratch, l.rpe_scratch(8, n));
        }
        l.signature.rpe = false;
        assert_eq!(l.workspace(&[], 8, 4096).scratch, 0);
    }

    #[test]
    fn architectures_map_to_their_shared_memory_class() {
        let cases = [
            ("sm_70", SmemClass::Sm75),
            ("sm_75", SmemClass::Sm75),
            ("sm_80", SmemClass::Sm80),
            ("sm_86", SmemClass::Sm86),
            ("sm_87", SmemClass::Sm80),
            ("sm_89", SmemClass::Sm86),
            ("sm_90", SmemClass::Sm90),
            ("sm_90a", SmemClass::Sm90),
            ("compute_90", SmemClass::Sm90),
            ("sm_100", SmemClass::Sm90),
            ("sm_120", SmemClass::Sm86),
            ("sm_130", SmemClass::Sm86),
        ];
        for (arch, class) in cases {
            assert_eq!(SmemClass::of_arch(arch), Some(class), "{arch}");
        }
        for bad in [
            "sm90", "sm_9", "sm_1000", "gfx90a", "sm_9x", "sm_90ab", "sm_9A",
        ] {
            assert_eq!(SmemClass::of_arch(bad), None, "{bad}");
        }
        // Each class's own value maps back to it.
        for c in SmemClass::ALL {
            assert_eq!(SmemClass::of_cuda_arch(c.cuda_arch()), c);
        }
    }

    #[test]
    fn two_block_budgets_fit_two_blocks_and_the_largest_fits_one() {
        for c in SmemClass::ALL {
            let [two, one] = c.budgets();
            assert!(c.blocks_per_sm(two, 256) >= 2, "{c:?}: {two}");
            assert!(
                c.blocks_per_sm(two + 1024, 256) < 2 || two == one,
                "{c:?}: {two}"
            );
            assert_eq!(c.blocks_per_sm(one, 256), 1, "{c:?}");
            assert_eq!(c.blocks_per_sm(one + 4, 256), 0, "{c:?}");
        }
        // The numbers the planner works with (KiB): 113/227, 81/163, 49/99, 32/64.
        let kib = SmemClass::ALL.map(|c| c.budgets().map(|b| b / 1024));
        assert_eq!(kib, [[113, 227], [81, 163], [49, 99], [32, 64]]);
    }

    #[test]
    fn the_preprocessor_table_spells_the_same_ranges() {
        let t = SmemClass::preprocessor_table();
        assert!(t.contains(
            "#elif (__CUDA_ARCH__ >= 800 && __CUDA_ARCH__ < 810) || \
             (__CUDA_ARCH__ >= 870 && __CUDA_ARCH__ < 880)\n#define ATTNC_SMEM_CLASS 800"
        ));
        assert!(t.contains("#elif __CUDA_ARCH__ >= 800\n#define ATTNC_SMEM_CLASS 860"));
        assert!(t.contains("#elif __CUDA_ARCH__ < 800\n#define ATTNC_SMEM_CLASS 750"));
        assert_eq!(t.matches("#if").count(), 2);
        assert_eq!(t.matches("#endif").count(), 2);
    }
}
