//! The CUDA printer: spells a plan's resolved CUDA programs as CUDA C. Each op becomes one call
//! of a template in the tile library (`cuda_prelude.cuh`, the CUDA twin of
//! `attnc_runtime::cpu::tile`) on compile-time-sized tiles, followed by a block barrier.
//!
//! Kernels, all with the one parameter list of [`crate::abi`] (FAVOR+'s projection is the
//! `proj` pointer, read in place from global memory):
//! - linear attention, `forward`: `attnc_intra` (per chunk; delta rules only: additive and gated
//!   updates compute each chunk's contribution inside the scan), `attnc_scan` (per column block
//!   of the state, chunks in order), `attnc_output` (per chunk): the plan's [`Phases`];
//! - linear attention, `step`: `attnc_step` (per batch x head): the plan's step routine;
//! - softmax, `forward`: `attnc_softmax` (per query tile): the plan's tiled program;
//! - `update = momentum(..)`, `forward`: `attnc_step` over the whole sequence (the fused
//!   recurrent form);
//! - `short_conv`: every load of q, k and v convolves (`load_rows_conv`), and `attnc_conv_tail`
//!   (per batch x head) ends `forward` and `step` by writing the new tails.
//!
//! Every fact printed here (shapes, live rows, shared-memory and scratch places, slots, launch
//! sizes) comes from the plan.

use crate::abi::{ClassKernels, CudaLaunch, KernelInfo, SmemClass};
use crate::back::{self, binary_symbol, ExprSyntax};
use crate::plan::{
    tokens_first, CudaPlace, Expansion, Extent, Frame, Input, Op, Operand, Phases, Plan, Program,
    ResolvedOp, Routine, RoutineKind, Softmax, Tile, CUDA_THREADS,
};
use crate::spec::{BinOp, BinaryFn, CmpOp, Precision, UnaryFn};
use std::borrow::Cow;
use std::fmt::Write;

/// The tile library every source starts with.
pub const PRELUDE: &str = include_str!("cuda_prelude.cuh");

/// The one parameter list of every kernel ([`crate::abi`]).
const PARAMS: &str = "const float* q, const float* k, const float* v, const float* beta, \
    const float* g, const float* proj, float* out, float* s, float* z, float* chunk_s, \
    float* chunk_z, float* work, float* scratch, const float* conv_q, const float* conv_k, \
    const float* conv_v, float* tail_q, float* tail_k, float* tail_v, float* mom_s, \
    float* mom_z, int n, int heads";

/// Silences unused-parameter warnings for the systems' buffers, which most kernels ignore.
const UNUSED_SYSTEMS: &str = "  (void)conv_q; (void)conv_k; (void)conv_v; (void)tail_q; \
    (void)tail_k; (void)tail_v; (void)mom_s; (void)mom_z;\n";

type CudaOp = ResolvedOp<CudaPlace>;
type CudaOperand = Operand<CudaPlace>;

/// A spec's CUDA C and how to launch it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaProgram {
    /// The whole source: the tile library, then the kernels.
    pub source: String,
    /// The launch configuration the runtime reads.
    pub launch: CudaLaunch,
}

/// Prints the CUDA program of a plan. `spec_text` heads the source as a comment.
pub fn emit(plan: &Plan, spec_text: &str) -> CudaProgram {
    let sig = &plan.signature;
    let mut src = String::new();
    let _ = writeln!(
        src,
        "// attnc: generated CUDA C for `#[attention({spec_text})]`."
    );
    let _ = writeln!(
        src,
        "// dk = {}, dv = {}, F = {}, chunk = {}; {} threads per block; f32 in, f32 accumulation.",
        sig.dk, sig.dv, sig.f, sig.chunk, CUDA_THREADS
    );
    if plan.precision == Precision::Tf32 {
        // `precision = tf32`: one TF32 product per tensor-core step instead of 3xTF32's three.
        src.push_str("#define ATTNC_MMA_PASSES 1\n");
    }
    src.push_str(PRELUDE);
    src.push('\n');
    src.push_str(&phi_functor(plan));
    let bnhd = tokens_first(sig);
    let classes: Vec<ClassOut> = plan
        .cuda
        .iter()
        .map(|(class, program)| {
            let printer = Printer {
                plan,
                bnhd,
                class: *class,
            };
            printer.program(program)
        })
        .collect();
    print_kernels(&classes, &mut src);
    // The spill layout comes from the ops, not the placement: every class has the same.
    let work_per_chunk = classes.first().map_or(0, |c| c.work);
    let classes = classes
        .into_iter()
        .map(|c| ClassKernels {
            class: c.class,
            forward: Cow::Owned(c.forward.into_iter().map(|k| k.info).collect()),
            step: Cow::Owned(c.step.into_iter().map(|k| k.info).collect()),
        })
        .collect::<Vec<_>>();
    CudaProgram {
        source: src,
        launch: CudaLaunch {
            signature: *sig,
            threads: CUDA_THREADS,
            classes: Cow::Owned(classes),
            work_per_chunk,
            chunk_states: !plan.is_softmax() && !sig.momentum && !sig.rpe,
        },
    }
}

/// One printed kernel: its text and launch facts.
#[derive(Clone)]
struct Kernel {
    info: KernelInfo,
    text: String,
}

/// The kernels of one shared-memory class's program.
struct ClassOut {
    class: SmemClass,
    forward: Vec<Kernel>,
    step: Vec<Kernel>,
    /// Floats per (batch, head, chunk) of `work`.
    work: usize,
}

/// Prints every kernel once: a kernel whose text is the same for every class as it is, one
/// that differs as one version per group of classes with the same text, each under
/// `#if ATTNC_SMEM_CLASS == ...` (the source then starts with the class table).
fn print_kernels(classes: &[ClassOut], src: &mut String) {
    let mut names: Vec<&'static str> = Vec::new();
    for c in classes {
        for k in c.forward.iter().chain(&c.step) {
            if !names.contains(&k.info.name) {
                names.push(k.info.name);
            }
        }
    }
    let mut table_printed = false;
    for name in names {
        // (classes, text) groups, in class order.
        let mut groups: Vec<(Vec<SmemClass>, &str)> = Vec::new();
        for c in classes {
            let Some(k) = c
                .forward
                .iter()
                .chain(&c.step)
                .find(|k| k.info.name == name)
            else {
                continue;
            };
            match groups.iter_mut().find(|(_, text)| *text == k.text) {
                Some((members, _)) => members.push(c.class),
                None => groups.push((vec![c.class], &k.text)),
            }
        }
        if let [(_, text)] = groups.as_slice() {
            src.push_str(text);
            continue;
        }
        if !table_printed {
            src.push('\n');
            src.push_str(&SmemClass::preprocessor_table());
            table_printed = true;
        }
        for (i, (members, text)) in groups.iter().enumerate() {
            let cond: Vec<String> = members
                .iter()
                .map(|c| format!("ATTNC_SMEM_CLASS == {}", c.cuda_arch()))
                .collect();
            let directive = if i == 0 { "#if" } else { "#elif" };
            let _ = write!(src, "\n{directive} {}", cond.join(" || "));
            src.push_str(text);
        }
        src.push_str("#endif\n");
    }
}

/// `short_conv`'s last kernel, after every load has read the incoming tails: the tails become
/// the last w - 1 raw rows of q, k and v.
fn conv_tail_kernel(sig: &crate::abi::Signature, bnhd: bool, class: SmemClass) -> Kernel {
    let name = "attnc_conv_tail";
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\n// short_conv, one block per batch x head: the carried tails become the last w - 1 raw \
         rows of q, k and v.\n\
         extern \"C\" __global__ void {name}({PARAMS}) {{\n\
         \x20 constexpr int DK = {dk}, DV = {dv}, KW = {kw};\n\
         \x20 const int bh = blockIdx.x;\n\
         \x20 attnc::conv_tail<KW, DK>(tail_q + (long)bh * (KW - 1) * DK, \
         attnc::tok<{bnhd}>(q, DK, bh, n, heads), n);\n\
         \x20 attnc::conv_tail<KW, DK>(tail_k + (long)bh * (KW - 1) * DK, \
         attnc::tok<{bnhd}>(k, DK, bh, n, heads), n);\n\
         \x20 attnc::conv_tail<KW, DV>(tail_v + (long)bh * (KW - 1) * DV, \
         attnc::tok<{bnhd}>(v, DV, bh, n, heads), n);\n\
         \x20 (void)beta; (void)g; (void)proj; (void)out; (void)s; (void)z; (void)chunk_s; \
         (void)chunk_z; (void)work; (void)scratch; (void)conv_q; (void)conv_k; (void)conv_v; \
         (void)mom_s; (void)mom_z;\n}}",
        dk = sig.dk,
        dv = sig.dv,
        kw = sig.conv,
    );
    Kernel {
        info: KernelInfo {
            name,
            class,
            grid: crate::abi::Grid::Heads,
            smem_bytes: 0,
            scratch_floats: 0,
        },
        text,
    }
}

/// The feature map as a functor `Phi` (the plan's elementwise expression).
fn phi_functor(plan: &Plan) -> String {
    let body = back::lower(&C, &plan.phi);
    format!(
        "\n// The feature map phi, elementwise.\nstruct Phi {{\n  __device__ __forceinline__ float \
         operator()(float x) const {{ return {body}; }}\n}};\n"
    )
}

/// Prints one class's program.
struct Printer<'a> {
    plan: &'a Plan,
    bnhd: bool,
    class: SmemClass,
}

impl Printer<'_> {
    /// The kernels of `program` for `forward` and `step`.
    fn program(&self, program: &Program<CudaPlace>) -> ClassOut {
        let sig = &self.plan.signature;
        let (forward, step, work) = match program {
            Program::Linear(l) => match &l.rpe {
                Some(r) => self.rpe(r),
                None => {
                    let work = l.phases.spills.work_per_chunk;
                    // Momentum's forward is its step program over the whole sequence (fused
                    // recurrent).
                    let phases = (!sig.momentum).then(|| self.phases(&l.phases, work));
                    let step = self.sequential("attnc_step", &l.step, work);
                    let mut forward = phases.unwrap_or_else(|| vec![step.clone()]);
                    let mut step = vec![step];
                    if sig.conv > 0 {
                        let tail = conv_tail_kernel(sig, self.bnhd, self.class);
                        forward.push(tail.clone());
                        step.push(tail);
                    }
                    (forward, step, work)
                }
            },
            Program::Softmax(s) => (vec![self.softmax(s)], Vec::new(), 0),
        };
        ClassOut {
            class: self.class,
            forward,
            step,
            work,
        }
    }

    fn phases(&self, p: &Phases<CudaPlace>, work: usize) -> Vec<Kernel> {
        // Additive and gated updates fuse phase (a) into the scan: no intra kernel.
        let intra = p.intra.passes.iter().any(|ops| !ops.is_empty());
        let mut kernels = Vec::new();
        if intra {
            kernels.push(self.parallel("attnc_intra", &p.intra, work));
        }
        kernels.push(self.sequential("attnc_scan", &p.scan, work));
        kernels.push(self.parallel("attnc_output", &p.output, work));
        kernels
    }

    /// Phases (a) and (c): each block takes chunks with stride gridDim.x (one chunk per block
    /// unless the kernel has scratch, see `Grid::Chunks`).
    fn parallel(&self, name: &'static str, r: &Routine<CudaPlace>, work: usize) -> Kernel {
        let mut text = String::new();
        let src = &mut text;
        let doc = match (self.plan.signature.rpe, r.frame.kind == RoutineKind::Intra) {
            (true, _) => {
                "rpe = toeplitz, one block per (chunk, batch x head): q~, k~ and v to the chunk's \
                 workspace slot."
            }
            (false, true) => {
                "Phase (a), one block per (chunk, batch x head): the chunk's own contribution."
            }
            (false, false) => {
                "Phase (c), one block per (chunk, batch x head): outputs from the incoming state."
            }
        };
        self.preamble(name, doc, &r.frame, work, src);
        // gridDim.x is the chunk count, or fewer blocks (kernels with scratch: Grid::Chunks).
        src.push_str("  for (int c = blockIdx.x; c < chunks; c += gridDim.x) {\n");
        src.push_str("    const int c0 = c * C, rows = attnc::imin(C, n - c0);\n");
        chunk_pointers("    ", src);
        for op in r.passes.iter().flatten() {
            self.emit_op(op, "    ", src);
        }
        src.push_str("  }\n}\n");
        self.kernel(name, &r.frame, text)
    }

    /// Phase (b) and the step routine: chunks in order, the state carried in `t_s` (and
    /// `t_z`), read from `s` (`z`) first and written back last.
    fn sequential(&self, name: &'static str, r: &Routine<CudaPlace>, work: usize) -> Kernel {
        let mut text = String::new();
        let src = &mut text;
        let scan = r.frame.kind == RoutineKind::Scan;
        let doc = if scan {
            "Phase (b), one block per (column block of the state, batch x head): chunks in order."
        } else {
            "The step program (one token; the recurrent form), one block per batch x head."
        };
        let normalized = self.plan.signature.normalized;
        self.preamble(name, doc, &r.frame, work, src);
        src.push_str(
            "  attnc::copy_2d<F, CB>(t_s, attnc::pitch(CB), s + (long)bh * F * DV + col0, DV);\n",
        );
        if normalized {
            src.push_str("  if (lead) attnc::copy<F>(t_z, z + (long)bh * F);\n");
        }
        let momentum = r.frame.get(Tile::M).is_some();
        let momentum_z = r.frame.get(Tile::Mz).is_some();
        if momentum {
            src.push_str(
                "  attnc::copy_2d<F, CB>(t_m, attnc::pitch(CB), mom_s + (long)bh * F * DV + col0, DV);\n",
            );
        }
        if momentum_z {
            src.push_str("  if (lead) attnc::copy<F>(t_mz, mom_z + (long)bh * F);\n");
        }
        src.push_str("  __syncthreads();\n");
        src.push_str("  for (int c = 0; c < chunks; ++c) {\n");
        src.push_str("    const int c0 = c * C, rows = attnc::imin(C, n - c0);\n");
        chunk_pointers("    ", src);
        for op in r.passes.iter().flatten() {
            self.emit_op(op, "    ", src);
        }
        src.push_str("  }\n");
        src.push_str(
            "  attnc::copy_2d<F, CB>(s + (long)bh * F * DV + col0, DV, t_s, attnc::pitch(CB));\n",
        );
        if normalized {
            src.push_str("  if (lead) attnc::copy<F>(z + (long)bh * F, t_z);\n");
        }
        if momentum {
            src.push_str(
                "  attnc::copy_2d<F, CB>(mom_s + (long)bh * F * DV + col0, DV, t_m, attnc::pitch(CB));\n",
            );
        }
        if momentum_z {
            src.push_str("  if (lead) attnc::copy<F>(mom_z + (long)bh * F, t_mz);\n");
        }
        src.push_str("}\n");
        self.kernel(name, &r.frame, text)
    }

    /// Softmax: one query tile per block, its key tiles in order.
    fn softmax(&self, t: &Softmax<CudaPlace>) -> Kernel {
        let name = "attnc_softmax";
        let mut text = String::new();
        let src = &mut text;
        self.preamble(
            name,
            "Exact softmax attention, one block per (query tile, batch x head): online softmax over key tiles.",
            &t.frame,
            0,
            src,
        );
        // Query tiles with stride gridDim.x (fewer blocks than tiles when there is scratch).
        src.push_str("  for (int c = blockIdx.x; c < chunks; c += gridDim.x) {\n");
        src.push_str("    const int c0 = c * C, rows = attnc::imin(C, n - c0);\n");
        for op in &t.prologue {
            self.emit_op(op, "    ", src);
        }
        if t.causal {
            src.push_str("    const int key_end = attnc::imin(c0 + rows, n);\n");
        } else {
            src.push_str("    const int key_end = n;\n");
        }
        src.push_str("    for (int k0 = 0; k0 < key_end; k0 += C) {\n");
        src.push_str("      const int krows = attnc::imin(C, key_end - k0);\n");
        for op in &t.body {
            self.emit_op(op, "      ", src);
        }
        if t.causal {
            src.push_str("      if (k0 == c0) {\n");
            for op in &t.diagonal {
                self.emit_op(op, "        ", src);
            }
            src.push_str("      }\n");
        }
        for op in &t.update {
            self.emit_op(op, "      ", src);
        }
        src.push_str("    }\n");
        for op in &t.epilogue {
            self.emit_op(op, "    ", src);
        }
        src.push_str("  }\n}\n");
        self.kernel(name, &t.frame, text)
    }

    /// One op as one call and a barrier.
    ///
    /// An op that writes only the key-sum vectors (`z`, a chunk's `dz`, momentum's `n`) runs in
    /// the lead block only: in a scan, the other column blocks of a (batch, head) neither need
    /// `z` nor may read a chunk's slot of `chunk_z` while the lead block overwrites it.
    fn emit_op(&self, op: &CudaOp, ind: &str, src: &mut String) {
        let call = match op {
            Op::Load {
                dst, src: input, ..
            } if self.plan.signature.conv > 0 => conv_load(dst, *input).unwrap_or_else(|| call(op)),
            _ => call(op),
        };
        let operands = op.operands();
        let mut written = operands
            .iter()
            .filter(|(_, a)| *a != crate::plan::Access::Read)
            .peekable();
        let key_sum_only = written.peek().is_some()
            && written.all(|(o, _)| matches!(o.tile, Tile::Z | Tile::Dz | Tile::Mz));
        let guard = if key_sum_only { "if (lead) " } else { "" };
        let _ = writeln!(src, "{ind}{guard}{call}\n{ind}__syncthreads();");
    }

    /// `rpe = toeplitz`'s `forward` (no step): the features program spills q~, k~ and v per
    /// chunk; one block per (pair of value columns, batch x head) convolves them with the
    /// Toeplitz weights by FFT (`attnc::rpe_columns`); with the normaliser a last kernel divides.
    fn rpe(&self, r: &crate::plan::Rpe<CudaPlace>) -> (Vec<Kernel>, Vec<Kernel>, usize) {
        let (features, spills, causal) = (&r.features, &r.spills, r.causal);
        let sig = &self.plan.signature;
        let work = spills.work_per_chunk;
        let mut forward = vec![self.parallel("attnc_rpe_features", features, work)];
        let at = |t| spills.slot(t).map_or(0, |s| s.offset);
        let pairs = (sig.dv + usize::from(sig.normalized)).div_ceil(2);
        let mut text = String::new();
        let _ = writeln!(
            text,
            "\n// rpe = toeplitz, one block per (pair of value columns, batch x head): each column \
             of k~_f v (f < F) convolved with\n// the Toeplitz weights exp(bias) by FFT (f64), \
             weighted by q~_f and summed.\n\
             extern \"C\" __global__ void attnc_rpe_fft({PARAMS}) {{\n\
             \x20 constexpr int C = {c}, F = {f}, DV = {dv}, WORK = {work};\n\
             \x20 const int bh = blockIdx.y, pair = blockIdx.x;\n\
             \x20 const long l = attnc::fft_len(n), block = (long)bh * gridDim.x + pair;\n\
             \x20 double* buf = reinterpret_cast<double*>(scratch) + block * (6 * l + 2 * n);\n\
             \x20 float* den = scratch + (long)gridDim.x * gridDim.y * (12 * l + 4 * n);\n\
             \x20 attnc::rpe_columns<C, F, DV, WORK, {sq}, {sk}, {sv}, {norm}, {causal}>(work, proj, \
             attnc::tok<{bnhd}>(out, DV, bh, n, heads), den, buf, n, heads, bh, pair);\n\
             \x20 (void)q; (void)k; (void)v; (void)beta; (void)g; (void)s; (void)z; (void)chunk_s; \
             (void)chunk_z;\n{UNUSED_SYSTEMS}}}",
            c = sig.chunk,
            f = sig.f,
            dv = sig.dv,
            sq = at(Tile::Q),
            sk = at(Tile::K),
            sv = at(Tile::V),
            norm = sig.normalized,
            bnhd = self.bnhd,
        );
        forward.push(Kernel {
            info: KernelInfo {
                name: "attnc_rpe_fft",
                class: self.class,
                grid: crate::abi::Grid::Columns(pairs as u32),
                smem_bytes: 0,
                scratch_floats: 0,
            },
            text,
        });
        if sig.normalized {
            let mut text = String::new();
            let _ = writeln!(
                text,
                "\n// rpe = toeplitz with normalize = sum, one block per (chunk, batch x head): \
                 outputs over their denominators.\n\
                 extern \"C\" __global__ void attnc_rpe_divide({PARAMS}) {{\n\
                 \x20 constexpr int C = {c}, DV = {dv};\n\
                 \x20 const int bh = blockIdx.y, c0 = blockIdx.x * C, rows = attnc::imin(C, n - c0);\n\
                 \x20 const long l = attnc::fft_len(n);\n\
                 \x20 const float* den = scratch + (long){pairs} * gridDim.y * (12 * l + 4 * n) + (long)bh * n;\n\
                 \x20 attnc::rpe_divide<C, DV>(attnc::tok<{bnhd}>(out, DV, bh, n, heads), den, c0, rows, {eps});\n\
                 \x20 (void)q; (void)k; (void)v; (void)beta; (void)g; (void)proj; (void)s; (void)z; \
                 (void)chunk_s; (void)chunk_z; (void)work;\n{UNUSED_SYSTEMS}}}",
                c = sig.chunk,
                dv = sig.dv,
                bnhd = self.bnhd,
                eps = float(crate::plan::NORMALIZER_EPS),
            );
            forward.push(Kernel {
                info: KernelInfo {
                    name: "attnc_rpe_divide",
                    class: self.class,
                    grid: crate::abi::Grid::Chunks,
                    smem_bytes: 0,
                    scratch_floats: 0,
                },
                text,
            });
        }
        (forward, Vec::new(), work)
    }

    /// A printed kernel with its launch facts, from its frame.
    fn kernel(&self, name: &'static str, frame: &Frame<CudaPlace>, text: String) -> Kernel {
        Kernel {
            info: KernelInfo {
                name,
                class: self.class,
                grid: frame.grid(self.plan.signature.dv),
                smem_bytes: (frame.memory.near * 4) as u32,
                scratch_floats: frame.memory.far,
            },
            text,
        }
    }

    /// Constants, block indices and tile pointers every kernel starts with.
    fn preamble(
        &self,
        name: &str,
        doc: &str,
        frame: &Frame<CudaPlace>,
        work: usize,
        src: &mut String,
    ) {
        let sig = &self.plan.signature;
        let _ = writeln!(src, "\n// {doc}");
        let _ = writeln!(src, "extern \"C\" __global__ void {name}({PARAMS}) {{");
        let _ = writeln!(
            src,
            "  constexpr int C = {}, DK = {}, DV = {}, F = {}, CB = {};",
            frame.chunk, sig.dk, sig.dv, sig.f, frame.value_cols
        );
        let _ = writeln!(
            src,
            "  constexpr long WORK = {work}, SCRATCH = {};",
            frame.memory.far
        );
        src.push_str(
            "  (void)C; (void)DK; (void)DV; (void)F; (void)CB; (void)WORK; (void)SCRATCH;\n",
        );
        src.push_str("  ATTNC_DYN_SMEM(attnc_smem);\n");
        let (bh, scan) = match frame.kind {
            RoutineKind::Step => ("blockIdx.x", false),
            RoutineKind::Scan => ("blockIdx.y", true),
            _ => ("blockIdx.y", false),
        };
        // Phase (c) split by value columns: blockIdx.z picks the block (every block reads z).
        let output_columns = frame.kind == RoutineKind::Output && frame.value_cols < sig.dv;
        let _ = writeln!(src, "  const int bh = {bh};");
        // (n - 1) / C + 1, not (n + C - 1) / C: no int overflow for n near INT_MAX.
        src.push_str("  const int chunks = n > 0 ? (n - 1) / C + 1 : 0;\n");
        if scan {
            src.push_str("  const int col0 = blockIdx.x * CB;\n");
            src.push_str("  const bool lead = blockIdx.x == 0;\n");
        } else if output_columns {
            src.push_str("  const int col0 = blockIdx.z * CB;\n  const bool lead = true;\n");
        } else {
            src.push_str("  const int col0 = 0;\n  const bool lead = true;\n");
        }
        src.push_str(
            "  float* block_scratch = scratch + \
             (((long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * SCRATCH;\n",
        );
        for o in &frame.tiles {
            let name = o.tile.name();
            let _ = match o.place {
                CudaPlace::Shared(at) => writeln!(src, "  float* t_{name} = attnc_smem + {at};"),
                CudaPlace::Scratch(at) => {
                    writeln!(src, "  float* t_{name} = block_scratch + {at};")
                }
            };
        }
        let layout = if self.bnhd { "true" } else { "false" };
        for (name, ptr, d) in [
            ("tq", "q", "DK"),
            ("tk", "k", "DK"),
            ("tv", "v", "DV"),
            ("tbeta", "beta", "1"),
            ("tg", "g", "1"),
            ("tout", "out", "DV"),
        ] {
            let _ = writeln!(
                src,
                "  const auto {name} = attnc::tok<{layout}>({ptr}, {d}, bh, n, heads);"
            );
        }
        src.push_str(
            "  (void)chunks; (void)col0; (void)lead; (void)block_scratch; (void)tq; (void)tk; \
             (void)tv; (void)tbeta; (void)tg; (void)tout; (void)proj; (void)chunk_s; \
             (void)chunk_z; (void)work; (void)s; (void)z;\n",
        );
        src.push_str(UNUSED_SYSTEMS);
        if sig.conv > 0 {
            conv_pointers(sig.conv, src);
        }
    }
}

/// `short_conv`: this head's weights (`wq`, `wk`, `wv`) and this (batch, head)'s carried tails
/// (`hq`, `hk`, `hv`), for the loads.
fn conv_pointers(width: usize, src: &mut String) {
    let _ = writeln!(
        src,
        "  constexpr int KW = {width};\n\
         \x20 const long head = bh % heads;\n\
         \x20 const float* wq = conv_q + head * DK * KW;\n\
         \x20 const float* wk = conv_k + head * DK * KW;\n\
         \x20 const float* wv = conv_v + head * DV * KW;\n\
         \x20 const float* hq = tail_q + (long)bh * (KW - 1) * DK;\n\
         \x20 const float* hk = tail_k + (long)bh * (KW - 1) * DK;\n\
         \x20 const float* hv = tail_v + (long)bh * (KW - 1) * DV;\n\
         \x20 (void)wq; (void)wk; (void)wv; (void)hq; (void)hk; (void)hv;"
    );
}

/// `short_conv`: a load of q, k or v, convolved and through SiLU (`None` for per-token scalars,
/// which are not convolved).
fn conv_load(dst: &CudaOperand, input: Input) -> Option<String> {
    let (weights, tail, d) = match input {
        Input::Q => ("wq", "hq", "DK"),
        Input::K => ("wk", "hk", "DK"),
        Input::V => ("wv", "hv", "DV"),
        Input::G | Input::Beta => return None,
    };
    let at = match dst.live_rows {
        Extent::KeyRows => "k0",
        _ => "c0",
    };
    let col = if dst.tile.has_value_columns() {
        "col0"
    } else {
        "0"
    };
    let (r, w) = dims(dst);
    Some(format!(
        "attnc::load_rows_conv<{r}, {w}, KW>({}, t{}, {col}, {at}, {}, {weights}, {tail}, {d});",
        n(dst),
        input.name(),
        extent(dst.live_rows)
    ))
}

/// The per-chunk pointers of the workspaces, for chunk `c`.
fn chunk_pointers(indent: &str, src: &mut String) {
    let _ = writeln!(
        src,
        "{indent}float* slot = work + ((long)bh * chunks + c) * WORK;\n\
         {indent}float* state_s = chunk_s + ((long)bh * chunks + c) * F * DV;\n\
         {indent}float* state_z = chunk_z + ((long)bh * chunks + c) * F;\n\
         {indent}(void)slot; (void)state_s; (void)state_z;"
    );
}

fn n(o: &CudaOperand) -> String {
    format!("t_{}", o.tile.name())
}

fn dims(o: &CudaOperand) -> (usize, usize) {
    (o.rows.n, o.cols.n)
}

/// How many rows or columns hold data, as C.
fn extent(e: Extent) -> String {
    match e {
        Extent::Rows => "rows".into(),
        Extent::KeyRows => "krows".into(),
        Extent::Full(d) => d.n.to_string(),
    }
}

/// The start of a spilled tile in this chunk's slot (value tiles at `col0` in a column block).
fn slot_of(o: &CudaOperand, offset: usize) -> String {
    if o.tile.has_value_columns() {
        format!("slot + {offset} + col0")
    } else {
        format!("slot + {offset}")
    }
}

/// One resolved op as one call of the tile library.
fn call(op: &CudaOp) -> String {
    match op {
        Op::Load { dst, src, .. } => {
            let tok = format!("t{}", src.name());
            let at = match dst.live_rows {
                Extent::KeyRows => "k0",
                _ => "c0",
            };
            let rows = extent(dst.live_rows);
            let (r, w) = dims(dst);
            if src.is_scalar() {
                format!("attnc::load_vec<{w}>({}, {tok}, {at}, {rows});", n(dst))
            } else {
                let col = if dst.tile.has_value_columns() {
                    "col0"
                } else {
                    "0"
                };
                format!(
                    "attnc::load_rows<{r}, {w}>({}, {tok}, {col}, {at}, {rows});",
                    n(dst)
                )
            }
        }
        Op::L2Norm { t, eps } => {
            let (r, w) = dims(t);
            format!(
                "attnc::l2norm_rows<{r}, {w}>({}, {}, {});",
                n(t),
                extent(t.live_rows),
                float(*eps)
            )
        }
        Op::FeatureMap(t) => {
            let (r, w) = dims(t);
            format!(
                "attnc::map_rows<{r}, {w}>({}, {}, Phi());",
                n(t),
                extent(t.live_rows)
            )
        }
        Op::Expand {
            src: x,
            dst: out,
            map,
        } => {
            let ((r, d), f) = (dims(x), out.cols.n);
            let (x, out) = (n(x), n(out));
            match map {
                Expansion::Dpfp { nu } => {
                    format!("attnc::dpfp_rows<{r}, {d}, {f}, {nu}>({x}, rows, {out});")
                }
                Expansion::Favor => {
                    format!("attnc::favor_rows<{r}, {d}, {f}>({x}, rows, proj, {out});")
                }
                Expansion::Taylor2 => {
                    format!("attnc::taylor2_rows<{r}, {d}, {f}>({x}, rows, {out});")
                }
            }
        }
        Op::Scale { t, factor } => {
            let (r, w) = dims(t);
            format!(
                "attnc::scale_rows<{r}, {w}>({}, rows, {});",
                n(t),
                float(*factor)
            )
        }
        Op::CumSum(t) => format!("attnc::cumsum<{}>({}, rows);", t.cols.n, n(t)),
        Op::Transpose { src, dst } => {
            let (r, w) = dims(src);
            format!(
                "attnc::transpose<{r}, {w}>({}, {}, {});",
                n(src),
                extent(src.live_rows),
                n(dst)
            )
        }
        Op::MatMul {
            dst,
            a,
            b,
            tri,
            accumulate,
        } => product("gemm", (a, b, dst), b.cols.n, *tri, *accumulate),
        Op::MatMulBt {
            dst,
            a,
            b,
            tri,
            accumulate,
        } => product("gemm_bt", (a, b, dst), b.rows.n, *tri, *accumulate),
        Op::RowSums { dst, src } => {
            let (r, w) = dims(src);
            format!("attnc::row_sums<{r}, {w}>({}, rows, {});", n(src), n(dst))
        }
        Op::DotRows {
            dst,
            rows,
            vec,
            accumulate,
        } => {
            let (r, w) = dims(rows);
            format!(
                "attnc::dot_rows<{r}, {w}, {accumulate}>({}, {}, rows, {});",
                n(rows),
                n(vec),
                n(dst)
            )
        }
        Op::AddColSums { dst, src } => {
            let (r, w) = dims(src);
            format!(
                "attnc::add_col_sums<{r}, {w}>({}, rows, {});",
                n(src),
                n(dst)
            )
        }
        Op::DivideRows { dst, den, eps } => {
            let (r, w) = dims(dst);
            format!(
                "attnc::divide_rows<{r}, {w}>({}, {}, rows, {});",
                n(dst),
                n(den),
                float(*eps)
            )
        }
        Op::DecayScores { dst, gates } => format!(
            "attnc::decay_scores<{}>({}, {}, rows);",
            dst.rows.n,
            n(dst),
            n(gates)
        ),
        Op::DecayRows { dst, gates } => {
            let (r, w) = dims(dst);
            format!(
                "attnc::decay_rows<{r}, {w}>({}, {}, rows);",
                n(dst),
                n(gates)
            )
        }
        Op::DecayColsToEnd { dst, gates } => {
            let (f, r) = dims(dst);
            format!(
                "attnc::decay_cols_to_end<{f}, {r}>({}, {}, rows);",
                n(dst),
                n(gates)
            )
        }
        Op::DecayAll { dst, gates } => format!(
            "attnc::decay_all<{}>({}, {}, rows);",
            dst.cuda_footprint(),
            n(dst),
            n(gates)
        ),
        Op::SubFrom { dst, src } => {
            let (r, w) = dims(dst);
            format!("attnc::sub_from<{r}, {w}>({}, {}, rows);", n(dst), n(src))
        }
        Op::Solve { dst, lower, beta } => {
            let (r, w) = dims(dst);
            format!(
                "attnc::solve<{r}, {w}>({}, {}, {}, rows);",
                n(dst),
                n(lower),
                n(beta)
            )
        }
        Op::StepUpdate {
            s,
            k,
            v,
            q,
            o,
            gates,
        } => {
            let (f, dv) = dims(s);
            let (decay, g) = match gates {
                Some(g) => ("true", n(g)),
                None => ("false", "nullptr".to_string()),
            };
            format!(
                "attnc::step_update<{f}, {dv}, {decay}>({}, {}, {}, {}, {}, {g});",
                n(s),
                n(k),
                n(v),
                n(q),
                n(o)
            )
        }
        Op::MomentumStep {
            s,
            m,
            k,
            v,
            q,
            o,
            mu,
        } => {
            let (f, dv) = dims(s);
            format!(
                "attnc::momentum_step<{f}, {dv}>({}, {}, {}, {}, {}, {}, {});",
                n(s),
                n(m),
                n(k),
                n(v),
                n(q),
                n(o),
                float(*mu)
            )
        }
        Op::MomentumKeySum { z, n: buf, k, mu } => format!(
            "attnc::momentum_key_sum<{}>({}, {}, {}, {});",
            z.len(),
            n(z),
            n(buf),
            n(k),
            float(*mu)
        ),
        Op::SoftmaxInit { max, sum, acc } => {
            let (r, w) = dims(acc);
            format!(
                "attnc::softmax_init<{r}, {w}>({}, {}, {});",
                n(max),
                n(sum),
                n(acc)
            )
        }
        Op::MaskAboveDiagonal(t) => {
            format!("attnc::mask_above_diagonal<{}>({}, rows);", t.rows.n, n(t))
        }
        Op::OnlineSoftmax {
            scores,
            max,
            sum,
            acc,
        } => {
            let (r, w) = dims(acc);
            format!(
                "attnc::online_softmax<{r}, {w}>({}, rows, krows, {}, {}, {});",
                n(scores),
                n(max),
                n(sum),
                n(acc)
            )
        }
        Op::Store(t) => {
            let (r, w) = dims(t);
            format!(
                "attnc::store_rows<{r}, {w}>({}, tout, col0, c0, rows);",
                n(t)
            )
        }
        // Whole tiles, their rows' padding included.
        Op::Copy { dst, src } => format!(
            "attnc::copy<{}>({}, {});",
            dst.cuda_footprint(),
            n(dst),
            n(src)
        ),
        Op::Zero(t) => format!("attnc::zero<{}>({});", t.cuda_footprint(), n(t)),
        Op::AddTo { dst, src } => format!(
            "attnc::add_to<{}>({}, {});",
            dst.cuda_footprint(),
            n(dst),
            n(src)
        ),
        Op::Spill { t, slot } => slot_copy(t, slot, true),
        Op::Fill { t, slot } => slot_copy(t, slot, false),
        Op::SaveChunkState { s, z } => {
            let mut call = format!(
                "attnc::copy_2d<F, CB>(state_s + col0, DV, {}, attnc::pitch(CB));",
                n(s)
            );
            if let Some(z) = z {
                let _ = write!(call, " if (lead) attnc::copy<F>(state_z, {});", n(z));
            }
            call
        }
        Op::LoadChunkState { s, z } => {
            let mut call = format!(
                "attnc::copy_2d<F, CB>({}, attnc::pitch(CB), state_s + col0, DV);",
                n(s)
            );
            if let Some(z) = z {
                let _ = write!(call, " if (lead) attnc::copy<F>({}, state_z);", n(z));
            }
            call
        }
        Op::ReadState { s, z } => {
            let mut call = format!(
                "attnc::copy_2d<F, CB>({}, attnc::pitch(CB), s + (long)bh * F * DV + col0, DV);",
                n(s)
            );
            if let Some(z) = z {
                let _ = write!(
                    call,
                    " if (lead) attnc::copy<F>({}, z + (long)bh * F);",
                    n(z)
                );
            }
            call
        }
    }
}

/// `attnc::{name}<M, K, N, TRI, ACC>(a, b, dst, rows, depth)`: a product of `n` columns.
fn product(
    name: &str,
    (a, b, dst): (&CudaOperand, &CudaOperand, &CudaOperand),
    n_cols: usize,
    tri: crate::abi::Tri,
    accumulate: bool,
) -> String {
    let (m, kd) = dims(a);
    let tri = match tri {
        crate::abi::Tri::Full => "attnc::FULL",
        crate::abi::Tri::LowerOut => "attnc::LOWER_OUT",
        crate::abi::Tri::LowerA => "attnc::LOWER_A",
    };
    format!(
        "attnc::{name}<{m}, {kd}, {n_cols}, {tri}, {accumulate}>({}, {}, {}, {}, {});",
        n(a),
        n(b),
        n(dst),
        extent(a.live_rows),
        extent(a.live_cols)
    )
}

/// A spilled tile to (`spill`) or from its place in this chunk's workspace slot, whose rows are
/// `slot.row_len` long (the full width of a column-blocked tile).
fn slot_copy(t: &CudaOperand, slot: &crate::plan::Slot, spill: bool) -> String {
    let (r, w) = dims(t);
    let (tile, at, full) = (n(t), slot_of(t, slot.offset), slot.row_len);
    let pitch = crate::plan::ir::cuda_pitch(w);
    if spill {
        format!("attnc::copy_2d<{r}, {w}>({at}, {full}, {tile}, {pitch});")
    } else {
        format!("attnc::copy_2d<{r}, {w}>({tile}, {pitch}, {at}, {full});")
    }
}

/// An f32 as a C literal that reads back to the same value.
fn float(v: f32) -> String {
    if v.is_finite() {
        let s = format!("{v:?}");
        if s.contains(['.', 'e']) {
            format!("{s}f")
        } else {
            format!("{s}.0f")
        }
    } else if v.is_nan() {
        "__int_as_float(0x7fc00000)".into()
    } else if v > 0.0 {
        "(-attnc::neg_inf())".into()
    } else {
        "attnc::neg_inf()".into()
    }
}

/// C's spelling of the expression language, over `x`.
struct C;

impl ExprSyntax for C {
    type Out = String;

    fn var(&self) -> String {
        "x".into()
    }

    fn lit(&self, v: f32) -> String {
        float(v)
    }

    fn neg(&self, a: String) -> String {
        format!("(-{a})")
    }

    fn binary(&self, op: BinOp, a: String, b: String) -> String {
        format!("({a} {} {b})", binary_symbol(op))
    }

    fn unary(&self, f: UnaryFn, a: String) -> String {
        let f = match f {
            UnaryFn::Exp => "expf",
            UnaryFn::Ln => "logf",
            UnaryFn::Sqrt => "sqrtf",
            UnaryFn::Abs => "fabsf",
            UnaryFn::Tanh => "tanhf",
        };
        format!("{f}({a})")
    }

    fn binary_fn(&self, f: BinaryFn, a: String, b: String) -> String {
        let f = match f {
            BinaryFn::Max => "fmaxf",
            BinaryFn::Min => "fminf",
            BinaryFn::Powf => "powf",
        };
        format!("{f}({a}, {b})")
    }

    fn powi(&self, a: String, k: i32) -> String {
        format!("attnc::powi({a}, {k})")
    }

    fn select(&self, op: CmpOp, lhs: String, rhs: String, then: String, other: String) -> String {
        format!("({lhs} {} {rhs} ? {then} : {other})", op.symbol())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_literals_read_back() {
        assert_eq!(float(1.0), "1.0f");
        assert_eq!(float(0.125), "0.125f");
        assert_eq!(float(1e-6), "1e-6f");
        assert_eq!(float(f32::NEG_INFINITY), "attnc::neg_inf()");
    }
}
