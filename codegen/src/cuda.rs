//! The CUDA emitter: lowers a [`Plan`] to CUDA C. Each tile op becomes one call of a template in
//! the tile library (`cuda_prelude.cuh`, the CUDA twin of `attnc_runtime::tile`) on
//! compile-time-sized tiles, followed by a block barrier.
//!
//! Kernels, all with one parameter list (see [`crate::abi`]; FAVOR+'s projection is
//! the `proj` pointer, read in place from global memory):
//! - linear attention, `forward`: `attnc_intra` (per chunk), `attnc_scan` (per column block of the
//!   state, chunks in order), `attnc_output` (per chunk): the plan's [`Phased`] program;
//! - linear attention, `step`: `attnc_step` (per batch x head): the plan's step program;
//! - softmax, `forward`: `attnc_softmax` (per query tile): the plan's tiled program.
//!
//! Tiles live in dynamic shared memory up to [`SMEM_BUDGET_FLOATS`]; larger ones (an expanded
//! feature map's `C x F` tiles, say) go to a per-block scratch area in global memory. The launch
//! configuration is computed here, at build time, and emitted next to the source.

use crate::abi::{CudaLaunch, Grid, KernelInfo, Layout, Signature};
use crate::plan::{Input, Op, Phased, Plan, Tile, Tiled, Tri};
use crate::spec::{BinOp, BinaryFn, CmpOp, Expr, FeatureMap, UnaryFn};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The tile library every source starts with.
pub const PRELUDE: &str = include_str!("cuda_prelude.cuh");

/// Threads per block, every kernel.
pub const THREADS: u32 = 256;

/// Shared memory one block may use for tiles, in floats (96 KiB: fits sm_80, sm_86/89, sm_90).
pub const SMEM_BUDGET_FLOATS: usize = 96 * 1024 / 4;

/// A spec's CUDA C and how to launch it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaProgram {
    /// The whole source: the tile library, then the kernels.
    pub source: String,
    /// How its kernels are launched.
    pub launch: CudaLaunch,
}

/// Which kernel a program is lowered into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Phase (a): one chunk per block.
    Intra,
    /// Phase (b): chunks in order, one column block of the state per block.
    Scan,
    /// Phase (c): one chunk per block.
    Output,
    /// The step program: one (batch, head) per block, chunks (of one token) in order.
    Step,
    /// Softmax: one query tile per block.
    Softmax,
}

/// Where a tile lives.
#[derive(Clone, Copy, Debug)]
enum Place {
    Shared(usize),
    Scratch(usize),
}

/// Everything the lowering of one kernel needs to know.
struct Kernel<'a> {
    plan: &'a Plan,
    kind: Kind,
    bnhd: bool,
    /// Chunk length of this kernel (1 for step).
    c: usize,
    /// Width of value-column tiles: dv, or the column block in `scan`.
    dvt: usize,
    places: BTreeMap<TileKey, Place>,
    slots: &'a BTreeMap<TileKey, usize>,
}

/// `Tile` in a `BTreeMap` (ordered by its debug name: deterministic output).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TileKey(&'static str);

fn key(t: Tile) -> TileKey {
    TileKey(match t {
        Tile::Q => "q",
        Tile::Qx => "qx",
        Tile::Kx => "kx",
        Tile::K => "k",
        Tile::V => "v",
        Tile::Kt => "kt",
        Tile::A => "a",
        Tile::O => "o",
        Tile::S => "s",
        Tile::Z => "z",
        Tile::G => "g",
        Tile::Den => "den",
        Tile::Max => "max",
        Tile::Beta => "beta",
        Tile::Kk => "kk",
        Tile::U => "u",
        Tile::Ds => "ds",
        Tile::Dz => "dz",
        Tile::W => "w",
        Tile::X => "x",
    })
}

const ALL_TILES: [Tile; 20] = [
    Tile::Q,
    Tile::Qx,
    Tile::Kx,
    Tile::K,
    Tile::V,
    Tile::Kt,
    Tile::A,
    Tile::O,
    Tile::S,
    Tile::Z,
    Tile::G,
    Tile::Den,
    Tile::Max,
    Tile::Beta,
    Tile::Kk,
    Tile::U,
    Tile::Ds,
    Tile::Dz,
    Tile::W,
    Tile::X,
];

/// Whether a tile's columns are value columns (column-blocked in `scan`).
fn value_columns(t: Tile) -> bool {
    matches!(
        t,
        Tile::S | Tile::Ds | Tile::V | Tile::U | Tile::X | Tile::O
    )
}

/// Rows x columns of a tile for chunk length `c` and value-tile width `dvt`.
fn dims(plan: &Plan, t: Tile, c: usize, dvt: usize) -> (usize, usize) {
    match t {
        Tile::Q | Tile::K | Tile::W => (c, plan.f),
        Tile::Qx | Tile::Kx => (c, plan.dk),
        Tile::V | Tile::O | Tile::U | Tile::X => (c, dvt),
        Tile::Kt => (plan.f, c),
        Tile::A | Tile::Kk => (c, c),
        Tile::S | Tile::Ds => (plan.f, dvt),
        Tile::Z | Tile::Dz => (1, plan.f),
        Tile::G | Tile::Den | Tile::Beta | Tile::Max => (1, c),
    }
}

/// Emits the CUDA program of a plan. `spec_text` heads the source as a comment.
pub fn emit(plan: &Plan, bnhd: bool, spec_text: &str) -> CudaProgram {
    let mut src = String::new();
    let _ = writeln!(
        src,
        "// attnc: generated CUDA C for `#[attention({spec_text})]`."
    );
    let _ = writeln!(
        src,
        "// dk = {}, dv = {}, F = {}, chunk = {}; {} threads per block; f32 in, f32 accumulation.",
        plan.dk, plan.dv, plan.f, plan.chunk, THREADS
    );
    src.push_str(PRELUDE);
    src.push('\n');
    src.push_str(&emit_phi(&plan.feature_map));
    let slots = spill_slots(plan);
    let work_per_chunk = slots_len(plan, &slots);
    let mut forward = Vec::new();
    let mut step = Vec::new();
    match (&plan.softmax, &plan.phased) {
        (Some(tiled), _) => {
            let all: Vec<Op> = [
                &tiled.prologue,
                &tiled.body,
                &tiled.diagonal,
                &tiled.update,
                &tiled.epilogue,
            ]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
            let k = Kernel::new(plan, Kind::Softmax, bnhd, &all, &slots);
            forward.push(k.emit_softmax(tiled, &mut src));
        }
        (None, Some(phased)) => {
            forward = emit_phases(plan, phased, bnhd, &slots, &mut src);
            let k = Kernel::new(plan, Kind::Step, bnhd, &plan.step, &slots);
            step.push(k.emit_sequential("attnc_step", &plan.step, &mut src));
        }
        (None, None) => {}
    }
    let layout = if bnhd { Layout::Bnhd } else { Layout::Bhnd };
    CudaProgram {
        source: src,
        launch: CudaLaunch {
            signature: Signature::of(plan, layout),
            threads: THREADS,
            forward: Cow::Owned(forward),
            step: Cow::Owned(step),
            work_per_chunk,
            chunk_states: plan.phased.is_some(),
        },
    }
}

fn emit_phases(
    plan: &Plan,
    phased: &Phased,
    bnhd: bool,
    slots: &BTreeMap<TileKey, usize>,
    src: &mut String,
) -> Vec<KernelInfo> {
    let intra = Kernel::new(plan, Kind::Intra, bnhd, &phased.intra, slots);
    let scan = Kernel::new(plan, Kind::Scan, bnhd, &phased.scan, slots);
    let output = Kernel::new(plan, Kind::Output, bnhd, &phased.output, slots);
    vec![
        intra.emit_parallel("attnc_intra", &phased.intra, src),
        scan.emit_sequential("attnc_scan", &phased.scan, src),
        output.emit_parallel("attnc_output", &phased.output, src),
    ]
}

/// Columns of the state one `scan` block carries: value columns split so that several blocks
/// share a (batch, head).
pub fn column_block(dv: usize) -> usize {
    [32, 16, 8]
        .into_iter()
        .find(|cb| dv.is_multiple_of(*cb))
        .unwrap_or(dv)
}

/// Offsets (floats) of the spilled tiles in a chunk's `work` slot, at full width.
fn spill_slots(plan: &Plan) -> BTreeMap<TileKey, usize> {
    let mut slots = BTreeMap::new();
    let Some(phased) = &plan.phased else {
        return slots;
    };
    let mut at = 0;
    for op in phased.intra.iter().chain(&phased.scan) {
        if let Op::Spill(t) = op {
            if let std::collections::btree_map::Entry::Vacant(e) = slots.entry(key(*t)) {
                e.insert(at);
                let (r, c) = dims(plan, *t, plan.chunk, plan.dv);
                at += (r * c).next_multiple_of(4);
            }
        }
    }
    slots
}

fn slots_len(plan: &Plan, slots: &BTreeMap<TileKey, usize>) -> usize {
    ALL_TILES
        .iter()
        .filter_map(|t| {
            slots.get(&key(*t)).map(|at| {
                let (r, c) = dims(plan, *t, plan.chunk, plan.dv);
                at + (r * c).next_multiple_of(4)
            })
        })
        .max()
        .unwrap_or(0)
}

impl<'a> Kernel<'a> {
    fn new(
        plan: &'a Plan,
        kind: Kind,
        bnhd: bool,
        ops: &[Op],
        slots: &'a BTreeMap<TileKey, usize>,
    ) -> Kernel<'a> {
        let c = if kind == Kind::Step { 1 } else { plan.chunk };
        let dvt = if kind == Kind::Scan {
            column_block(plan.dv)
        } else {
            plan.dv
        };
        let mut used: Vec<Tile> = ALL_TILES
            .into_iter()
            .filter(|t| ops.iter().any(|op| op.tiles().contains(t)))
            .collect();
        // Sequential kernels carry the state in S (and z) across chunks.
        if matches!(kind, Kind::Scan | Kind::Step) {
            for t in [Tile::S, Tile::Z] {
                if !used.contains(&t) && (t == Tile::S || plan.normalized) {
                    used.push(t);
                }
            }
        }
        // Smallest tiles first into shared memory; what does not fit goes to scratch.
        used.sort_by_key(|t| {
            let (r, cols) = dims(plan, *t, c, dvt);
            r * cols
        });
        let (mut shared, mut scratch) = (0, 0);
        let mut places = BTreeMap::new();
        for t in used {
            let (r, cols) = dims(plan, t, c, dvt);
            let len = (r * cols).next_multiple_of(4);
            if shared + len <= SMEM_BUDGET_FLOATS {
                places.insert(key(t), Place::Shared(shared));
                shared += len;
            } else {
                places.insert(key(t), Place::Scratch(scratch));
                scratch += len;
            }
        }
        Kernel {
            plan,
            kind,
            bnhd,
            c,
            dvt,
            places,
            slots,
        }
    }

    fn smem_floats(&self) -> usize {
        self.places
            .iter()
            .filter_map(|(k, p)| match p {
                Place::Shared(at) => Some(at + self.len_of(*k)),
                Place::Scratch(_) => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn scratch_floats(&self) -> usize {
        self.places
            .iter()
            .filter_map(|(k, p)| match p {
                Place::Scratch(at) => Some(at + self.len_of(*k)),
                Place::Shared(_) => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn len_of(&self, k: TileKey) -> usize {
        ALL_TILES
            .iter()
            .find(|t| key(**t) == k)
            .map(|t| {
                let (r, c) = self.dims(*t);
                (r * c).next_multiple_of(4)
            })
            .unwrap_or(0)
    }

    fn dims(&self, t: Tile) -> (usize, usize) {
        dims(self.plan, t, self.c, self.dvt)
    }

    fn desc(&self, name: &'static str, grid: Grid) -> KernelInfo {
        KernelInfo {
            name,
            grid,
            smem_bytes: (self.smem_floats() * 4) as u32,
            scratch_floats: self.scratch_floats(),
        }
    }

    /// Constants, block indices and tile pointers every kernel starts with.
    fn preamble(&self, name: &str, doc: &str, src: &mut String) {
        let p = self.plan;
        let _ = writeln!(src, "\n// {doc}");
        let _ = writeln!(
            src,
            "extern \"C\" __global__ void {name}(const float* q, const float* k, const float* v, \
             const float* beta, const float* g, const float* proj, float* out, float* s, float* z, \
             float* chunk_s, float* chunk_z, float* work, float* scratch, int n, int heads) {{"
        );
        let _ = writeln!(
            src,
            "  constexpr int C = {}, DK = {}, DV = {}, F = {}, CB = {};",
            self.c, p.dk, p.dv, p.f, self.dvt
        );
        let _ = writeln!(
            src,
            "  constexpr long WORK = {}, SCRATCH = {};",
            slots_len(p, self.slots),
            self.scratch_floats()
        );
        src.push_str(
            "  (void)C; (void)DK; (void)DV; (void)F; (void)CB; (void)WORK; (void)SCRATCH;\n",
        );
        src.push_str("  ATTNC_DYN_SMEM(attnc_smem);\n");
        let bh = if self.kind == Kind::Step {
            "blockIdx.x"
        } else {
            "blockIdx.y"
        };
        let _ = writeln!(src, "  const int bh = {bh};");
        src.push_str("  const int chunks = (n + C - 1) / C;\n");
        if self.kind == Kind::Scan {
            src.push_str("  const int col0 = blockIdx.x * CB;\n");
            src.push_str("  const bool lead = blockIdx.x == 0;\n");
        } else {
            src.push_str("  const int col0 = 0;\n  const bool lead = true;\n");
        }
        src.push_str(
            "  float* block_scratch = scratch + ((long)blockIdx.y * gridDim.x + blockIdx.x) * SCRATCH;\n",
        );
        for (k, place) in &self.places {
            let _ = match place {
                Place::Shared(at) => writeln!(src, "  float* t_{} = attnc_smem + {at};", k.0),
                Place::Scratch(at) => writeln!(src, "  float* t_{} = block_scratch + {at};", k.0),
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
    }

    /// The per-chunk pointers of the workspaces, for chunk `c`.
    fn chunk_pointers(&self, indent: &str, src: &mut String) {
        let _ = writeln!(
            src,
            "{indent}float* slot = work + ((long)bh * chunks + c) * WORK;\n\
             {indent}float* state_s = chunk_s + ((long)bh * chunks + c) * F * DV;\n\
             {indent}float* state_z = chunk_z + ((long)bh * chunks + c) * F;\n\
             {indent}(void)slot; (void)state_s; (void)state_z;"
        );
    }

    /// Phases (a) and (c): one chunk per block.
    fn emit_parallel(&self, name: &'static str, ops: &[Op], src: &mut String) -> KernelInfo {
        let doc = if self.kind == Kind::Intra {
            "Phase (a), one block per (chunk, batch x head): the chunk's own contribution."
        } else {
            "Phase (c), one block per (chunk, batch x head): outputs from the incoming state."
        };
        self.preamble(name, doc, src);
        src.push_str("  const int c = blockIdx.x;\n");
        src.push_str("  const int c0 = c * C, rows = attnc::imin(C, n - c0);\n");
        self.chunk_pointers("  ", src);
        for op in ops {
            self.emit_op(op, "  ", src);
        }
        src.push_str("}\n");
        self.desc(name, Grid::Chunks)
    }

    /// Phase (b) and the step program: chunks in order, the state carried in `t_s` (and `t_z`),
    /// read from `s` (`z`) first and written back last.
    fn emit_sequential(&self, name: &'static str, ops: &[Op], src: &mut String) -> KernelInfo {
        let doc = if self.kind == Kind::Scan {
            "Phase (b), one block per (column block of the state, batch x head): chunks in order."
        } else {
            "The step program (one token; the recurrent form), one block per batch x head."
        };
        self.preamble(name, doc, src);
        src.push_str("  attnc::copy_2d<F, CB>(t_s, CB, s + (long)bh * F * DV + col0, DV);\n");
        if self.plan.normalized {
            src.push_str("  attnc::copy<F>(t_z, z + (long)bh * F);\n");
        }
        src.push_str("  __syncthreads();\n");
        src.push_str("  for (int c = 0; c < chunks; ++c) {\n");
        src.push_str("    const int c0 = c * C, rows = attnc::imin(C, n - c0);\n");
        self.chunk_pointers("    ", src);
        for op in ops {
            self.emit_op(op, "    ", src);
        }
        src.push_str("  }\n");
        src.push_str("  attnc::copy_2d<F, CB>(s + (long)bh * F * DV + col0, DV, t_s, CB);\n");
        if self.plan.normalized {
            src.push_str("  if (lead) attnc::copy<F>(z + (long)bh * F, t_z);\n");
        }
        src.push_str("}\n");
        let grid = if self.kind == Kind::Scan {
            Grid::Columns((self.plan.dv / self.dvt) as u32)
        } else {
            Grid::Heads
        };
        self.desc(name, grid)
    }

    /// Softmax: one query tile per block, its key tiles in order.
    fn emit_softmax(&self, t: &Tiled, src: &mut String) -> KernelInfo {
        let name = "attnc_softmax";
        self.preamble(
            name,
            "Exact softmax attention, one block per (query tile, batch x head): online softmax over key tiles.",
            src,
        );
        src.push_str("  const int c = blockIdx.x;\n");
        src.push_str("  const int c0 = c * C, rows = attnc::imin(C, n - c0);\n");
        for op in &t.prologue {
            self.emit_op(op, "  ", src);
        }
        if t.causal {
            src.push_str("  const int key_end = attnc::imin(c0 + rows, n);\n");
        } else {
            src.push_str("  const int key_end = n;\n");
        }
        src.push_str("  for (int k0 = 0; k0 < key_end; k0 += C) {\n");
        src.push_str("    const int krows = attnc::imin(C, key_end - k0);\n");
        for op in &t.body {
            self.emit_op(op, "    ", src);
        }
        if t.causal {
            src.push_str("    if (k0 == c0) {\n");
            for op in &t.diagonal {
                self.emit_op(op, "      ", src);
            }
            src.push_str("    }\n");
        }
        for op in &t.update {
            self.emit_op(op, "    ", src);
        }
        src.push_str("  }\n");
        for op in &t.epilogue {
            self.emit_op(op, "  ", src);
        }
        src.push_str("}\n");
        self.desc(name, Grid::Chunks)
    }

    fn is_key_tile(&self, t: Tile) -> bool {
        self.kind == Kind::Softmax && matches!(t, Tile::K | Tile::V)
    }

    /// How many rows of a tile hold data (as C source).
    fn live_rows(&self, t: Tile) -> String {
        if self.is_key_tile(t) {
            return "krows".into();
        }
        match t {
            Tile::Kt | Tile::S | Tile::Z | Tile::Ds | Tile::Dz => "F".into(),
            _ => "rows".into(),
        }
    }

    /// How many columns of a tile hold data (the depth of a product it is the left operand of).
    fn live_cols(&self, t: Tile) -> String {
        if self.kind == Kind::Softmax && matches!(t, Tile::Kt | Tile::A) {
            return "krows".into();
        }
        match t {
            Tile::Kt | Tile::A | Tile::Kk => "rows".into(),
            Tile::Qx | Tile::Kx => "DK".into(),
            _ => self.dims(t).1.to_string(),
        }
    }

    fn name(t: Tile) -> String {
        format!("t_{}", key(t).0)
    }

    /// The start of a spilled tile in this chunk's slot (full width; value tiles at `col0`).
    fn slot_of(&self, t: Tile) -> String {
        let at = self.slots.get(&key(t)).copied().unwrap_or(0);
        if value_columns(t) {
            format!("slot + {at} + col0")
        } else {
            format!("slot + {at}")
        }
    }

    /// Full row width of a tile in the workspaces.
    fn full_cols(&self, t: Tile) -> usize {
        dims(self.plan, t, self.c, self.plan.dv).1
    }

    /// Lowers one op to one call and a barrier.
    fn emit_op(&self, op: &Op, ind: &str, src: &mut String) {
        let call = self.lower(op);
        let _ = writeln!(src, "{ind}{call}\n{ind}__syncthreads();");
    }

    fn lower(&self, op: &Op) -> String {
        let n = Self::name;
        let dims = |t: Tile| self.dims(t);
        match op {
            Op::Load { dst, src } => {
                let (tok, d) = match src {
                    Input::Q => ("tq", "DK"),
                    Input::K => ("tk", "DK"),
                    Input::V => ("tv", "DV"),
                    Input::G => ("tg", ""),
                    Input::Beta => ("tbeta", ""),
                };
                let (at, rows) = if self.is_key_tile(*dst) {
                    ("k0", "krows")
                } else {
                    ("c0", "rows")
                };
                let (r, w) = dims(*dst);
                if d.is_empty() {
                    format!("attnc::load_vec<{w}>({}, {tok}, {at}, {rows});", n(*dst))
                } else {
                    let col = if *src == Input::V { "col0" } else { "0" };
                    format!(
                        "attnc::load_rows<{r}, {w}>({}, {tok}, {col}, {at}, {rows});",
                        n(*dst)
                    )
                }
            }
            Op::L2Norm(t) => {
                let (r, w) = dims(*t);
                format!(
                    "attnc::l2norm_rows<{r}, {w}>({}, {});",
                    n(*t),
                    self.live_rows(*t)
                )
            }
            Op::FeatureMap(t) => {
                let (r, w) = dims(*t);
                format!("attnc::map_rows<{r}, {w}>({}, rows, Phi());", n(*t))
            }
            Op::Expand { src, dst } => {
                let (r, d) = dims(*src);
                let f = dims(*dst).1;
                match &self.plan.feature_map {
                    FeatureMap::Dpfp { nu } => format!(
                        "attnc::dpfp_rows<{r}, {d}, {f}, {nu}>({}, rows, {});",
                        n(*src),
                        n(*dst)
                    ),
                    FeatureMap::Favor { .. } => format!(
                        "attnc::favor_rows<{r}, {d}, {f}>({}, rows, proj, {});",
                        n(*src),
                        n(*dst)
                    ),
                    _ => format!(
                        "attnc::taylor2_rows<{r}, {d}, {f}>({}, rows, {});",
                        n(*src),
                        n(*dst)
                    ),
                }
            }
            Op::Scale(t) => {
                let (r, w) = dims(*t);
                format!(
                    "attnc::scale_rows<{r}, {w}>({}, rows, {});",
                    n(*t),
                    float(self.plan.scale)
                )
            }
            Op::CumSum(t) => format!("attnc::cumsum<{}>({}, rows);", dims(*t).1, n(*t)),
            Op::Transpose { src, dst } => {
                let (r, w) = dims(*src);
                format!(
                    "attnc::transpose<{r}, {w}>({}, {}, {});",
                    n(*src),
                    self.live_rows(*src),
                    n(*dst)
                )
            }
            Op::MatMul {
                dst,
                a,
                b,
                tri,
                accumulate,
            } => {
                let (m, kd) = dims(*a);
                let nn = dims(*b).1;
                let tri = match tri {
                    Tri::Full => "attnc::FULL",
                    Tri::LowerOut => "attnc::LOWER_OUT",
                    Tri::LowerA => "attnc::LOWER_A",
                };
                format!(
                    "attnc::gemm<{m}, {kd}, {nn}, {tri}, {accumulate}>({}, {}, {}, {}, {});",
                    n(*a),
                    n(*b),
                    n(*dst),
                    self.live_rows(*a),
                    self.live_cols(*a)
                )
            }
            Op::RowSums { dst, src } => {
                let (r, w) = dims(*src);
                format!("attnc::row_sums<{r}, {w}>({}, rows, {});", n(*src), n(*dst))
            }
            Op::DotRows {
                dst,
                rows,
                vec,
                accumulate,
            } => {
                let (r, w) = dims(*rows);
                format!(
                    "attnc::dot_rows<{r}, {w}, {accumulate}>({}, {}, rows, {});",
                    n(*rows),
                    n(*vec),
                    n(*dst)
                )
            }
            Op::AddColSums { dst, src } => {
                let (r, w) = dims(*src);
                format!(
                    "attnc::add_col_sums<{r}, {w}>({}, rows, {});",
                    n(*src),
                    n(*dst)
                )
            }
            Op::DivideRows { dst, den } => {
                let (r, w) = dims(*dst);
                // Linear attention adds DESIGN §3.5's 1e-6; softmax's sum is >= 1.
                let eps = if self.kind == Kind::Softmax {
                    "0.0f"
                } else {
                    "1e-6f"
                };
                format!(
                    "attnc::divide_rows<{r}, {w}>({}, {}, rows, {eps});",
                    n(*dst),
                    n(*den)
                )
            }
            Op::DecayScores { dst, gates } => format!(
                "attnc::decay_scores<{}>({}, {}, rows);",
                dims(*dst).0,
                n(*dst),
                n(*gates)
            ),
            Op::DecayRows { dst, gates } => {
                let (r, w) = dims(*dst);
                format!(
                    "attnc::decay_rows<{r}, {w}>({}, {}, rows);",
                    n(*dst),
                    n(*gates)
                )
            }
            Op::DecayColsToEnd { dst, gates } => {
                let (f, r) = dims(*dst);
                format!(
                    "attnc::decay_cols_to_end<{f}, {r}>({}, {}, rows);",
                    n(*dst),
                    n(*gates)
                )
            }
            Op::DecayAll { dst, gates } => {
                let (r, w) = dims(*dst);
                format!(
                    "attnc::decay_all<{}>({}, {}, rows);",
                    r * w,
                    n(*dst),
                    n(*gates)
                )
            }
            Op::SubFrom { dst, src } => {
                let (r, w) = dims(*dst);
                format!("attnc::sub_from<{r}, {w}>({}, {}, rows);", n(*dst), n(*src))
            }
            Op::Solve { dst, lower, beta } => {
                let (r, w) = dims(*dst);
                format!(
                    "attnc::solve<{r}, {w}>({}, {}, {}, rows);",
                    n(*dst),
                    n(*lower),
                    n(*beta)
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
                let (f, dv) = dims(*s);
                let (decay, g) = match gates {
                    Some(g) => ("true", n(*g)),
                    None => ("false", "nullptr".to_string()),
                };
                format!(
                    "attnc::step_update<{f}, {dv}, {decay}>({}, {}, {}, {}, {}, {g});",
                    n(*s),
                    n(*k),
                    n(*v),
                    n(*q),
                    n(*o)
                )
            }
            Op::SoftmaxInit { max, sum, acc } => {
                let (r, w) = dims(*acc);
                format!(
                    "attnc::softmax_init<{r}, {w}>({}, {}, {});",
                    n(*max),
                    n(*sum),
                    n(*acc)
                )
            }
            Op::MaskAboveDiagonal(t) => {
                format!(
                    "attnc::mask_above_diagonal<{}>({}, rows);",
                    dims(*t).0,
                    n(*t)
                )
            }
            Op::OnlineSoftmax {
                scores,
                max,
                sum,
                acc,
            } => {
                let (r, w) = dims(*acc);
                format!(
                    "attnc::online_softmax<{r}, {w}>({}, rows, krows, {}, {}, {});",
                    n(*scores),
                    n(*max),
                    n(*sum),
                    n(*acc)
                )
            }
            Op::Store(t) => {
                let (r, w) = dims(*t);
                format!(
                    "attnc::store_rows<{r}, {w}>({}, tout, col0, c0, rows);",
                    n(*t)
                )
            }
            Op::Copy { dst, src } => {
                let (r, w) = dims(*dst);
                format!("attnc::copy<{}>({}, {});", r * w, n(*dst), n(*src))
            }
            Op::Zero(t) => {
                let (r, w) = dims(*t);
                format!("attnc::zero<{}>({});", r * w, n(*t))
            }
            Op::AddTo { dst, src } => {
                let (r, w) = dims(*dst);
                format!("attnc::add_to<{}>({}, {});", r * w, n(*dst), n(*src))
            }
            Op::Spill(t) => {
                let (r, w) = dims(*t);
                format!(
                    "attnc::copy_2d<{r}, {w}>({}, {}, {}, {w});",
                    self.slot_of(*t),
                    self.full_cols(*t),
                    n(*t)
                )
            }
            Op::Fill(t) => {
                let (r, w) = dims(*t);
                format!(
                    "attnc::copy_2d<{r}, {w}>({}, {w}, {}, {});",
                    n(*t),
                    self.slot_of(*t),
                    self.full_cols(*t)
                )
            }
            Op::SaveChunkState { s, z } => {
                let mut call = format!("attnc::copy_2d<F, CB>(state_s + col0, DV, {}, CB);", n(*s));
                if let Some(z) = z {
                    let _ = write!(call, " if (lead) attnc::copy<F>(state_z, {});", n(*z));
                }
                call
            }
            Op::LoadChunkState { s, z } => {
                let mut call = format!("attnc::copy_2d<F, CB>({}, CB, state_s + col0, DV);", n(*s));
                if let Some(z) = z {
                    let _ = write!(call, " attnc::copy<F>({}, state_z);", n(*z));
                }
                call
            }
            Op::ReadState { s: st, z: zt } => {
                let mut call = format!(
                    "attnc::copy_2d<F, CB>({}, CB, s + (long)bh * F * DV + col0, DV);",
                    n(*st)
                );
                if let Some(zt) = zt {
                    let _ = write!(call, " attnc::copy<F>({}, z + (long)bh * F);", n(*zt));
                }
                call
            }
        }
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

/// The feature map as a functor `Phi` (elementwise maps; `x` for the others).
fn emit_phi(map: &FeatureMap) -> String {
    let body = match map {
        FeatureMap::EluPlusOne => "x > 0.0f ? x + 1.0f : expf(x)".to_string(),
        FeatureMap::Relu => "fmaxf(x, 0.0f)".to_string(),
        FeatureMap::SquaredRelu => "fmaxf(x, 0.0f) * fmaxf(x, 0.0f)".to_string(),
        FeatureMap::Sigmoid => "1.0f / (1.0f + expf(-x))".to_string(),
        FeatureMap::Closure(c) => c_expr(&c.body),
        _ => "x".to_string(),
    };
    format!(
        "\n// The feature map phi, elementwise.\nstruct Phi {{\n  __device__ __forceinline__ float \
         operator()(float x) const {{ return {body}; }}\n}};\n"
    )
}

/// A closure body as C over `x`, fully parenthesised.
fn c_expr(e: &Expr) -> String {
    match e {
        Expr::Var => "x".into(),
        Expr::Lit(v) => float(*v),
        Expr::Neg(a) => format!("(-{})", c_expr(a)),
        Expr::Binary(op, a, b) => {
            let op = match op {
                BinOp::Add => "+",
                BinOp::Sub => "-",
                BinOp::Mul => "*",
                BinOp::Div => "/",
            };
            format!("({} {op} {})", c_expr(a), c_expr(b))
        }
        Expr::Unary(f, a) => {
            let f = match f {
                UnaryFn::Exp => "expf",
                UnaryFn::Ln => "logf",
                UnaryFn::Sqrt => "sqrtf",
                UnaryFn::Abs => "fabsf",
                UnaryFn::Tanh => "tanhf",
            };
            format!("{f}({})", c_expr(a))
        }
        Expr::Binary2(f, a, b) => {
            let f = match f {
                BinaryFn::Max => "fmaxf",
                BinaryFn::Min => "fminf",
                BinaryFn::Powf => "powf",
            };
            format!("{f}({}, {})", c_expr(a), c_expr(b))
        }
        Expr::Powi(a, k) => format!("attnc::powi({}, {k})", c_expr(a)),
        Expr::If {
            cond,
            then,
            otherwise,
        } => {
            let op = match cond.op {
                CmpOp::Lt => "<",
                CmpOp::Le => "<=",
                CmpOp::Gt => ">",
                CmpOp::Ge => ">=",
                CmpOp::Eq => "==",
                CmpOp::Ne => "!=",
            };
            format!(
                "({} {op} {} ? {} : {})",
                c_expr(&cond.lhs),
                c_expr(&cond.rhs),
                c_expr(then),
                c_expr(otherwise)
            )
        }
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

    #[test]
    fn column_blocks_divide_dv() {
        assert_eq!(column_block(64), 32);
        assert_eq!(column_block(48), 16);
        assert_eq!(column_block(40), 8);
    }
}
