//! Resolution: every tile fact, computed once. Shapes, live rows and columns, the memory place
//! on each target, the spill slots. Printers read these; they compute no geometry.

use super::build::BuiltOp;
use super::ir::{Access, CpuPlace, CudaPlace, Dim, DimOf, Extent, Op, Operand, Slot, Tile};
use crate::abi::{Grid, Signature, SmemClass};
use std::collections::BTreeMap;
use std::ops::Range;

/// Threads per CUDA block, every kernel.
pub const CUDA_THREADS: u32 = 256;

/// CPU tiles of at most this many floats are stack arrays; larger ones are heap tiles.
pub const STACK_TILE_MAX: usize = 2048;

/// Spill slots (and CUDA tile places) start at multiples of this many floats (16 bytes: a
/// vector load's alignment).
pub const SLOT_ALIGN: usize = 4;

/// Which routine a frame belongs to: how it is launched and what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoutineKind {
    /// The sequential chunk program (CPU, per (batch, head)).
    Forward,
    /// The step program: one token.
    Step,
    /// Phase (a): one chunk at a time, in parallel.
    Intra,
    /// Phase (b): chunks in order.
    Scan,
    /// Phase (c): one chunk at a time, in parallel.
    Output,
    /// Exact softmax: one query tile, its key tiles in order.
    Softmax,
}

impl RoutineKind {
    /// Whether the routine carries the state `S` (and `z`) from chunk to chunk, read from the
    /// call's state on entry and written back on exit.
    pub fn carries_state(self) -> bool {
        matches!(
            self,
            RoutineKind::Forward | RoutineKind::Step | RoutineKind::Scan
        )
    }
}

/// Floats a frame keeps in its two kinds of memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// CPU: stack arrays; CUDA: dynamic shared memory.
    pub near: usize,
    /// CPU: heap tiles; CUDA: the block's global scratch.
    pub far: usize,
}

/// What a routine declares: its geometry and every tile it uses, resolved and placed.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame<P> {
    /// The routine.
    pub kind: RoutineKind,
    /// Tokens per chunk (1 in the step program).
    pub chunk: usize,
    /// Value columns of value tiles: dv, or a CUDA scan's column block.
    pub value_cols: usize,
    /// The tiles, in the order the target declares them.
    pub tiles: Vec<Operand<P>>,
    /// Its memory footprint, in floats.
    pub memory: Memory,
    /// When each tile holds a value that is still to be read (CUDA places tiles whose
    /// lifetimes are disjoint at the same address).
    pub lifetimes: BTreeMap<Tile, Lifetime>,
}

/// The ops during which a tile holds a value some later op reads: indices `first..=last` into
/// the routine's ops, flattened in program order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// The first op that touches the tile (or 0 when the value comes from outside the ops).
    pub first: usize,
    /// The last op that needs it.
    pub last: usize,
}

impl Lifetime {
    /// Alive during every op.
    pub const ALWAYS: Lifetime = Lifetime {
        first: 0,
        last: usize::MAX,
    };

    /// Whether the two tiles hold values at the same time (so they may not share memory).
    pub fn overlaps(&self, other: &Lifetime) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Each tile's lifetime in `ops`, where `loops` are the op ranges the kernel repeats.
///
/// A tile that is read before any op writes it (the carried state, or a value from the previous
/// trip around a loop) lives through the whole routine; one written before a loop and touched
/// inside it lives until the loop's end, as the next trip reads it again. Otherwise a tile lives
/// from the op that overwrites it to its last reader.
pub fn lifetimes(
    kind: RoutineKind,
    ops: &[&BuiltOp],
    loops: &[Range<usize>],
) -> BTreeMap<Tile, Lifetime> {
    let mut out: BTreeMap<Tile, (Lifetime, bool)> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        for (t, access) in op.operands() {
            out.entry(t)
                .and_modify(|(l, _)| l.last = i)
                .or_insert((Lifetime { first: i, last: i }, access != Access::Write));
        }
    }
    let carried = [Tile::S, Tile::Z, Tile::M, Tile::Mz];
    out.into_iter()
        .map(|(t, (mut l, read_first))| {
            if read_first || (kind.carries_state() && carried.contains(&t)) {
                l = Lifetime::ALWAYS;
            }
            for r in loops {
                let touched = ops[r.clone()]
                    .iter()
                    .any(|op| op.operands().iter().any(|(o, _)| *o == t));
                if touched && l.first < r.start {
                    l.last = l.last.max(r.end.saturating_sub(1));
                }
            }
            (t, l)
        })
        .collect()
}

impl Frame<CudaPlace> {
    /// The CUDA grid of the routine's kernel: a block per chunk (phases (a) and (c), softmax's
    /// query tiles), per column block of the state (the scan) or per (batch, head) (the step).
    pub fn grid(&self, dv: usize) -> Grid {
        match self.kind {
            RoutineKind::Scan => Grid::Columns((dv / self.value_cols.max(1)) as u32),
            RoutineKind::Step | RoutineKind::Forward => Grid::Heads,
            RoutineKind::Output if self.value_cols < dv => {
                Grid::ChunkColumns((dv / self.value_cols.max(1)) as u32)
            }
            RoutineKind::Intra | RoutineKind::Output | RoutineKind::Softmax => Grid::Chunks,
        }
    }
}

impl<P: Copy> Frame<P> {
    /// The resolved operand of a tile, if the frame declares it.
    pub fn get(&self, t: Tile) -> Option<Operand<P>> {
        self.tiles.iter().find(|o| o.tile == t).copied()
    }
}

/// The spill layout of the chunk-parallel schedule: each spilled tile's slot in a chunk's
/// `work` area, at full width, in the order of first spill.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpillLayout {
    /// Every spilled tile and its slot.
    pub slots: Vec<(Tile, Slot)>,
    /// Floats per (batch, head, chunk).
    pub work_per_chunk: usize,
}

impl SpillLayout {
    /// Lays out the tiles the ops spill, once, for [`SLOT_ALIGN`].
    pub fn new(sig: &Signature, ops: &[BuiltOp]) -> SpillLayout {
        let mut layout = SpillLayout::default();
        for op in ops {
            let Op::Spill { t, .. } = op else { continue };
            if layout.slot(*t).is_some() {
                continue;
            }
            let (rows, cols) = shape(sig, *t, sig.chunk, sig.dv);
            layout.slots.push((
                *t,
                Slot {
                    offset: layout.work_per_chunk,
                    row_len: cols.n,
                },
            ));
            layout.work_per_chunk += (rows.n * cols.n).next_multiple_of(SLOT_ALIGN);
        }
        layout
    }

    /// A spilled tile's slot.
    pub fn slot(&self, t: Tile) -> Option<Slot> {
        self.slots.iter().find(|(s, _)| *s == t).map(|(_, s)| *s)
    }

    /// The ops with every spill and fill given its slot (a fill of a tile never spilled keeps
    /// [`Slot::UNASSIGNED`], which validation reports).
    pub fn assign(&self, ops: &[BuiltOp]) -> Vec<BuiltOp> {
        ops.iter()
            .map(|op| match *op {
                Op::Spill { t, slot } => Op::Spill {
                    t,
                    slot: self.slot(t).unwrap_or(slot),
                },
                Op::Fill { t, slot } => Op::Fill {
                    t,
                    slot: self.slot(t).unwrap_or(slot),
                },
                ref other => other.clone(),
            })
            .collect()
    }
}

/// Rows x columns of a tile for chunk length `c` and value width `dvt`.
pub fn shape(sig: &Signature, t: Tile, c: usize, dvt: usize) -> (Dim, Dim) {
    let chunk = Dim {
        n: c,
        of: DimOf::Chunk,
    };
    let f = Dim {
        n: sig.f,
        of: DimOf::Features,
    };
    let dk = Dim {
        n: sig.dk,
        of: DimOf::KeyDim,
    };
    let dv = Dim {
        n: dvt,
        of: DimOf::ValueCols,
    };
    let one = Dim {
        n: 1,
        of: DimOf::One,
    };
    match t {
        Tile::Q | Tile::K | Tile::W => (chunk, f),
        Tile::Qx | Tile::Kx => (chunk, dk),
        Tile::V | Tile::O | Tile::U | Tile::X => (chunk, dv),
        Tile::Kt => (f, chunk),
        Tile::A | Tile::Kk => (chunk, chunk),
        Tile::S | Tile::Ds | Tile::M => (f, dv),
        Tile::Z | Tile::Dz | Tile::Mz => (one, f),
        Tile::G | Tile::Den | Tile::Beta | Tile::Max => (one, chunk),
    }
}

/// Which rows and columns of a tile hold data in the current chunk. In softmax, key and value
/// tiles (and the scores' columns) follow the key tile's `krows`.
fn live(kind: RoutineKind, t: Tile, rows: Dim, cols: Dim) -> (Extent, Extent) {
    let softmax = kind == RoutineKind::Softmax;
    let live_rows = match t {
        Tile::K | Tile::V if softmax => Extent::KeyRows,
        Tile::Kt | Tile::S | Tile::Z | Tile::Ds | Tile::Dz | Tile::M | Tile::Mz => {
            Extent::Full(rows)
        }
        _ => Extent::Rows,
    };
    let live_cols = match t {
        Tile::Kt | Tile::A if softmax => Extent::KeyRows,
        Tile::Kt | Tile::A | Tile::Kk | Tile::G | Tile::Den | Tile::Beta | Tile::Max => {
            Extent::Rows
        }
        _ => Extent::Full(cols),
    };
    (live_rows, live_cols)
}

/// The tiles a routine's ops use, in [`Tile::ALL`] order, then the state it carries.
fn used_tiles<'a>(
    sig: &Signature,
    kind: RoutineKind,
    ops: impl Iterator<Item = &'a BuiltOp> + Clone,
) -> Vec<Tile> {
    let mut used: Vec<Tile> = Tile::ALL
        .into_iter()
        .filter(|t| {
            ops.clone()
                .any(|op| op.operands().iter().any(|(o, _)| o == t))
        })
        .collect();
    if kind.carries_state() {
        for t in [Tile::S, Tile::Z] {
            if !used.contains(&t) && (t == Tile::S || sig.normalized) {
                used.push(t);
            }
        }
    }
    used
}

/// A tile's operand before placement.
fn unplaced(sig: &Signature, kind: RoutineKind, t: Tile, c: usize, dvt: usize) -> Operand<()> {
    let (rows, cols) = shape(sig, t, c, dvt);
    let (live_rows, live_cols) = live(kind, t, rows, cols);
    Operand {
        tile: t,
        rows,
        cols,
        live_rows,
        live_cols,
        place: (),
    }
}

fn placed<P>(o: Operand<()>, place: P) -> Operand<P> {
    Operand {
        tile: o.tile,
        rows: o.rows,
        cols: o.cols,
        live_rows: o.live_rows,
        live_cols: o.live_cols,
        place,
    }
}

/// The order the CPU printer declares tiles in: the carried state first.
const CPU_ORDER: [Tile; 22] = [
    Tile::S,
    Tile::Z,
    Tile::M,
    Tile::Mz,
    Tile::Qx,
    Tile::Kx,
    Tile::Q,
    Tile::K,
    Tile::V,
    Tile::Kt,
    Tile::A,
    Tile::Kk,
    Tile::U,
    Tile::O,
    Tile::W,
    Tile::X,
    Tile::Ds,
    Tile::G,
    Tile::Den,
    Tile::Beta,
    Tile::Max,
    Tile::Dz,
];

/// A target's placement policy.
pub trait Target {
    /// Where a tile lives.
    type Place: Copy + std::fmt::Debug + PartialEq;
    /// Places a routine's tiles with `budget` floats of near memory; returns them in
    /// declaration order, with the footprint.
    fn place(
        &self,
        kind: RoutineKind,
        tiles: Vec<Operand<()>>,
        lifetimes: &BTreeMap<Tile, Lifetime>,
        budget: usize,
    ) -> (Vec<Operand<Self::Place>>, Memory);
    /// Value columns of a routine's value tiles, in order of preference.
    fn value_cols(&self, kind: RoutineKind, dv: usize) -> Vec<usize>;
    /// Near-memory budgets in floats, in order of preference. A frame takes the first
    /// (budget, value columns) pair, budgets first, under which its tiles all fit near memory;
    /// when none does, the first value columns under the last budget.
    fn budgets(&self) -> Vec<usize>;
    /// Whether a load the chunk program only reads may read its input in place.
    const LOADS_IN_PLACE: bool;
    /// Whether phase (a) of additive and gated updates runs inside the scan
    /// ([`super::build::LinearPrograms::fused_scan`]).
    const FUSED_SCAN: bool;
    /// Whether products read a key tile in place of its transpose ([`super::fold_transposes`]).
    const READS_TRANSPOSED: bool;
}

/// The CPU: the carried state in the task's buffers, small tiles on the stack, chunk tiles on
/// the heap, per-token vectors by value.
pub struct Cpu;

impl Target for Cpu {
    type Place = CpuPlace;
    // The inputs are contiguous (tokens, d) rows per head, exactly a tile's layout.
    const LOADS_IN_PLACE: bool = true;
    // Phase (a) in parallel over chunks keeps every core busy at small batch x heads.
    const FUSED_SCAN: bool = false;
    // The CPU tile library transposes once and streams the transposed tile.
    const READS_TRANSPOSED: bool = false;

    // Stack arrays: the compiler reuses their storage itself.
    fn place(
        &self,
        kind: RoutineKind,
        tiles: Vec<Operand<()>>,
        _: &BTreeMap<Tile, Lifetime>,
        _: usize,
    ) -> (Vec<Operand<CpuPlace>>, Memory) {
        let mut memory = Memory::default();
        let mut out = Vec::new();
        for t in CPU_ORDER {
            let Some(o) = tiles.iter().find(|o| o.tile == t) else {
                continue;
            };
            let place = match t {
                Tile::S | Tile::Z if kind.carries_state() => CpuPlace::Task,
                Tile::S => CpuPlace::Heap,
                Tile::Z => CpuPlace::Stack,
                _ if t.is_vector() => CpuPlace::Local,
                _ if o.len() <= STACK_TILE_MAX => CpuPlace::Stack,
                _ => CpuPlace::Heap,
            };
            match place {
                CpuPlace::Stack | CpuPlace::Local => memory.near += o.len(),
                CpuPlace::Heap => memory.far += o.len(),
                CpuPlace::Task => {}
            }
            out.push(placed(*o, place));
        }
        (out, memory)
    }

    fn value_cols(&self, _: RoutineKind, dv: usize) -> Vec<usize> {
        vec![dv]
    }

    // Tiles above STACK_TILE_MAX go to the heap whatever the budget.
    fn budgets(&self) -> Vec<usize> {
        vec![usize::MAX]
    }
}

/// CUDA on GPUs of one shared-memory class: tiles whose lifetimes are disjoint share addresses
/// (first fit: shared memory within the budget, else the block's scratch), placed largest first
/// or first alive first, whichever needs less; declared in name order. The budgets are the
/// class's ([`SmemClass::budgets`]): two blocks per SM if the kernel fits, else one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cuda {
    /// The GPUs planned for.
    pub class: SmemClass,
}

impl Target for Cuda {
    // Every tile is staged in shared memory.
    const LOADS_IN_PLACE: bool = false;
    // Blocks per (batch, head, column block) fill a GPU; the state goes to memory once per chunk.
    const FUSED_SCAN: bool = true;
    // Tensor-core B fragments read a key tile's rows as well as a transposed tile's columns.
    const READS_TRANSPOSED: bool = true;
    type Place = CudaPlace;

    // Two orders, largest first and first alive first; the one with less scratch (then less
    // shared memory) wins.
    fn place(
        &self,
        _: RoutineKind,
        tiles: Vec<Operand<()>>,
        lifetimes: &BTreeMap<Tile, Lifetime>,
        budget: usize,
    ) -> (Vec<Operand<CudaPlace>>, Memory) {
        let life = |o: &Operand<()>| lifetimes.get(&o.tile).copied().unwrap_or(Lifetime::ALWAYS);
        let mut by_size = tiles.clone();
        by_size.sort_by_key(|o| (std::cmp::Reverse(o.cuda_footprint()), o.tile));
        let mut by_first_use = tiles;
        by_first_use
            .sort_by_key(|o| (life(o).first, std::cmp::Reverse(o.cuda_footprint()), o.tile));
        let (a, b) = (
            first_fit_all(by_size, lifetimes, budget),
            first_fit_all(by_first_use, lifetimes, budget),
        );
        if (b.1.far, b.1.near) < (a.1.far, a.1.near) {
            b
        } else {
            a
        }
    }

    // The scan splits its state into column blocks for parallelism. Phase (c) splits its value
    // tiles (fla's BV blocking) into at most 4 blocks, and only when that keeps every tile out of
    // scratch: each block recomputes the chunk's scores and reads q and k again.
    fn budgets(&self) -> Vec<usize> {
        self.class.budgets().map(|bytes| bytes / 4).to_vec()
    }

    fn value_cols(&self, kind: RoutineKind, dv: usize) -> Vec<usize> {
        match kind {
            // Halved once when the state's block and the chunk's tiles overflow shared memory
            // (Gated DeltaNet at d = 128).
            RoutineKind::Scan => {
                let cb = column_block(dv);
                let half = (cb / 2 >= 8 && dv.is_multiple_of(cb / 2)).then_some(cb / 2);
                std::iter::once(cb).chain(half).collect()
            }
            RoutineKind::Output => [1, 2, 4]
                .into_iter()
                .filter(|b| dv.is_multiple_of(*b) && (dv / b).is_multiple_of(8))
                .map(|b| dv / b)
                .collect(),
            _ => vec![dv],
        }
    }
}

/// CUDA places in the given order, each tile at the lowest address where it overlaps no tile
/// alive at the same time: in shared memory while within `budget` floats, else in the block's
/// scratch. Returned in name order.
fn first_fit_all(
    tiles: Vec<Operand<()>>,
    lifetimes: &BTreeMap<Tile, Lifetime>,
    budget: usize,
) -> (Vec<Operand<CudaPlace>>, Memory) {
    let mut memory = Memory::default();
    let mut shared: Vec<Span> = Vec::new();
    let mut scratch: Vec<Span> = Vec::new();
    let mut out: Vec<Operand<CudaPlace>> = tiles
        .into_iter()
        .map(|o| {
            let len = o.cuda_footprint().next_multiple_of(SLOT_ALIGN);
            let life = lifetimes.get(&o.tile).copied().unwrap_or(Lifetime::ALWAYS);
            let at = first_fit(&shared, len, life);
            let place = if at + len <= budget {
                shared.push(Span { at, len, life });
                memory.near = memory.near.max(at + len);
                CudaPlace::Shared(at)
            } else {
                let at = first_fit(&scratch, len, life);
                scratch.push(Span { at, len, life });
                memory.far = memory.far.max(at + len);
                CudaPlace::Scratch(at)
            };
            placed(o, place)
        })
        .collect();
    out.sort_by_key(|o| o.tile.name());
    (out, memory)
}

/// A placed tile: its addresses and its lifetime.
struct Span {
    at: usize,
    len: usize,
    life: Lifetime,
}

/// The lowest address (a multiple of [`SLOT_ALIGN`]) where `len` floats overlap no span alive
/// during `life`.
fn first_fit(spans: &[Span], len: usize, life: Lifetime) -> usize {
    let mut busy: Vec<(usize, usize)> = spans
        .iter()
        .filter(|s| s.life.overlaps(&life))
        .map(|s| (s.at, s.at + s.len))
        .collect();
    busy.sort_unstable();
    let mut at = 0;
    for (start, end) in busy {
        if at + len <= start {
            break;
        }
        at = at.max(end);
    }
    at
}

/// Columns of the state one CUDA `scan` block carries: value columns split so that several
/// blocks share a (batch, head).
pub fn column_block(dv: usize) -> usize {
    [32, 16, 8]
        .into_iter()
        .find(|cb| dv.is_multiple_of(*cb))
        .unwrap_or(dv)
}

/// A routine's frame on `target`: its tiles resolved and placed, under the first of the
/// target's (budget, value columns) choices that needs no far memory ([`Target::budgets`]).
///
/// `ops` are the routine's ops in program order; `loops` the ranges of them its kernel repeats.
pub fn frame<'a, T: Target>(
    target: &T,
    sig: &Signature,
    kind: RoutineKind,
    ops: impl Iterator<Item = &'a BuiltOp> + Clone,
    loops: &[Range<usize>],
) -> Frame<T::Place> {
    let chunk = if kind == RoutineKind::Step {
        1
    } else {
        sig.chunk
    };
    let flat: Vec<&BuiltOp> = ops.clone().collect();
    let mut lifetimes = lifetimes(kind, &flat, loops);
    let used = used_tiles(sig, kind, ops);
    // Tiles no op touches (a carried state the printer copies in and out) live throughout.
    for t in &used {
        lifetimes.entry(*t).or_insert(Lifetime::ALWAYS);
    }
    let place = |value_cols: usize, budget: usize| {
        let tiles: Vec<Operand<()>> = used
            .iter()
            .map(|t| unplaced(sig, kind, *t, chunk, value_cols))
            .collect();
        let (tiles, memory) = target.place(kind, tiles, &lifetimes, budget);
        Frame {
            kind,
            chunk,
            value_cols,
            tiles,
            memory,
            lifetimes: lifetimes.clone(),
        }
    };
    let widths = target.value_cols(kind, sig.dv);
    let budgets = target.budgets();
    let fits = budgets
        .iter()
        .flat_map(|b| widths.iter().map(move |w| (*w, *b)))
        .map(|(w, b)| place(w, b))
        .find(|f| f.memory.far == 0);
    fits.unwrap_or_else(|| {
        place(
            widths.first().copied().unwrap_or(sig.dv),
            budgets.last().copied().unwrap_or(0),
        )
    })
}

/// Resolves ops against a frame. The frame was made from the same ops, so every operand is
/// declared; a miss would be a planner bug, reported (not panicked on) for validation.
pub fn resolve_ops<P: Copy>(
    frame: &Frame<P>,
    ops: &[BuiltOp],
) -> Result<Vec<Op<Operand<P>>>, String> {
    let index: BTreeMap<Tile, Operand<P>> = frame.tiles.iter().map(|o| (o.tile, *o)).collect();
    ops.iter()
        .map(|op| {
            op.try_map(|t| {
                index.get(&t).copied().ok_or_else(|| {
                    format!(
                        "{:?} routine: tile `{}` is used but not declared",
                        frame.kind,
                        t.name()
                    )
                })
            })
        })
        .collect()
}
