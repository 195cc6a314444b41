//! The CPU emitter: lowers a [`Plan`] to Rust. Each tile op becomes one call of a primitive in
//! `attnc_runtime::cpu::tile`, on statically shaped tiles, inside a loop over chunks. The result
//! is an `impl Kernel` whose two programs are generic over the ISA marker, so the runtime
//! compiles each under `#[target_feature]` and picks one at run time.

use crate::abi;
use crate::plan::{Input, Op, Plan, Tile, Tiled, Tri};
use crate::spec::{BinOp, BinaryFn, CmpOp, Expr, FeatureMap, UnaryFn};
use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote};

/// The kernel type and its `impl Kernel`. `kernel` names the (private) type to emit.
pub fn emit_kernel(plan: &Plan, kernel: &Ident) -> TokenStream {
    let phi = emit_feature_map(&plan.feature_map);
    let (forward, step) = match &plan.softmax {
        Some(tiled) => (
            emit_tiled(plan, tiled),
            quote! {
                let _ = (isa, task);
                Err(::attnc::__private::Error::Internal("softmax attention has no step program"))
            },
        ),
        None => (
            emit_program(plan, &plan.passes, plan.chunk),
            emit_program(plan, std::slice::from_ref(&plan.step), 1),
        ),
    };
    let phase = emit_phases(plan);
    let (chunk, work) = (lit(plan.chunk), lit(work_len(plan)));
    let phased = plan.phased.is_some();
    // Delta rules carry two products per chunk through the scan, which runs one thread per
    // (batch, head): chunk parallelism then gains little (issue #5's measurements).
    let light_scan = plan
        .phased
        .as_ref()
        .is_some_and(|p| !p.scan.iter().any(|op| matches!(op, Op::MatMul { .. })));
    quote! {
        /// The generated kernel: chunk program and step program of this spec.
        struct #kernel;

        /// The feature map phi, elementwise.
        #[inline(always)]
        #[allow(clippy::excessive_precision, clippy::neg_multiply, unused_parens)]
        fn __phi(x: f32) -> f32 {
            #phi
        }

        impl ::attnc::__private::Kernel for #kernel {
            const CHUNK: usize = #chunk;
            const WORK: usize = #work;
            const PHASED: bool = #phased;
            const LIGHT_SCAN: bool = #light_scan;

            #[inline(always)]
            fn forward<I: ::attnc::__private::Isa>(
                isa: I,
                task: ::attnc::__private::Task<'_>,
            ) -> ::attnc::__private::Result<()> {
                #forward
            }

            #[inline(always)]
            fn step<I: ::attnc::__private::Isa>(
                isa: I,
                task: ::attnc::__private::Task<'_>,
            ) -> ::attnc::__private::Result<()> {
                #step
            }

            #[inline(always)]
            fn phase<I: ::attnc::__private::Isa>(
                isa: I,
                phase: ::attnc::__private::Phase,
                task: ::attnc::__private::PhaseTask<'_>,
            ) -> ::attnc::__private::Result<()> {
                #phase
            }
        }
    }
}

/// The chunk-parallel schedule's three programs (see [`crate::plan::Phased`]), one per arm of a
/// match on the phase. Each runs the phase's ops over the task's run of chunks; spilled tiles
/// and per-chunk states live in the task's slots, indexed by the chunk's place in the run.
fn emit_phases(plan: &Plan) -> TokenStream {
    let Some(phased) = &plan.phased else {
        return quote! {
            let _ = (isa, phase, task);
            Err(::attnc::__private::Error::Internal("softmax attention has no chunk phases"))
        };
    };
    let arm = |ops: &[Op], scan: bool| {
        let decls = phase_declarations(plan, ops, scan);
        let body = ops.iter().map(|op| emit_op(plan, op));
        quote! {{
            #(#decls)*
            let end = ((first + chunks) * C).min(n);
            let mut c0 = first * C;
            while c0 < end {
                let rows = (n - c0).min(C);
                let slot = c0 / C - first;
                #(#body)*
                c0 += C;
            }
            Ok(())
        }}
    };
    let (intra, scan, output) = (
        arm(&phased.intra, false),
        arm(&phased.scan, true),
        arm(&phased.output, false),
    );
    quote! {
        match phase {
            ::attnc::__private::Phase::Intra => #intra,
            ::attnc::__private::Phase::Scan => #scan,
            ::attnc::__private::Phase::Output => #output,
        }
    }
}

/// Bindings of a phase program: the task's buffers, the state (the task's in the scan, a local
/// tile elsewhere, filled from a chunk slot) and every tile the ops use.
fn phase_declarations(plan: &Plan, ops: &[Op], scan: bool) -> Vec<TokenStream> {
    let (c, work) = (lit(plan.chunk), lit(work_len(plan)));
    let (f, dv) = (lit(plan.f), lit(plan.dv));
    let mut decls = vec![quote! {
        use ::attnc::__private::tile;
        const C: usize = #c;
        const WORK: usize = #work;
        let ::attnc::__private::PhaseTask {
            q, k, v, beta, g, proj, n, first, chunks, out, s, z, final_s, final_z, slot_s, slot_z, work,
        } = task;
        let _ = (&q, &k, &v, &beta, &g, &proj, &out, &s, &z, &final_s, &final_z, &slot_z, &work);
        let out_first = first * C;
    }];
    let used = |t: Tile| ops.iter().any(|op| op.tiles().contains(&t));
    if scan {
        decls.push(quote! { let s = tile::as_tile_mut::<#f, #dv>(s)?; });
        if plan.normalized {
            decls.push(quote! { let z = tile::as_vec_mut::<#f>(z)?; });
        }
    } else {
        if used(Tile::S) {
            decls.push(quote! {
                let mut s_store = tile::boxed_tile::<#f, #dv>()?;
                let s = &mut *s_store;
            });
        }
        if used(Tile::Z) {
            decls.push(quote! {
                let mut z_store = [0.0f32; #f];
                let z = &mut z_store;
            });
        }
    }
    decls.extend(tile_declarations(plan, ops.iter(), plan.chunk));
    decls
}

/// The body of one program: tile declarations, then each pass as a loop over chunks.
fn emit_program(plan: &Plan, passes: &[Vec<Op>], chunk: usize) -> TokenStream {
    let decls = declarations(plan, passes.iter().flatten(), chunk);
    let loops = passes.iter().map(|ops| {
        let body = ops.iter().map(|op| emit_op(plan, op));
        quote! {
            let mut c0 = 0;
            while c0 < n {
                let rows = (n - c0).min(C);
                #(#body)*
                c0 += C;
            }
        }
    });
    quote! {
        #(#decls)*
        #(#loops)*
        Ok(())
    }
}

/// The tiled softmax program: query tiles (`c0`, `rows`) x key tiles (`k0`, `krows`).
fn emit_tiled(plan: &Plan, t: &Tiled) -> TokenStream {
    let all = [&t.prologue, &t.body, &t.diagonal, &t.update, &t.epilogue];
    let decls = declarations(plan, all.into_iter().flatten(), plan.chunk);
    let lower = |ops: &[Op]| ops.iter().map(|op| emit_op(plan, op)).collect::<Vec<_>>();
    let (prologue, body, diagonal) = (lower(&t.prologue), lower(&t.body), lower(&t.diagonal));
    let (update, epilogue) = (lower(&t.update), lower(&t.epilogue));
    let key_end = if t.causal {
        quote!((c0 + rows).min(n))
    } else {
        quote!(n)
    };
    let on_diagonal = if t.causal {
        quote! { if k0 == c0 { #(#diagonal)* } }
    } else {
        quote! {}
    };
    quote! {
        #(#decls)*
        let mut c0 = 0;
        while c0 < n {
            let rows = (n - c0).min(C);
            #(#prologue)*
            let key_end = #key_end;
            let mut k0 = 0;
            while k0 < key_end {
                let krows = (key_end - k0).min(C);
                #(#body)*
                #on_diagonal
                #(#update)*
                k0 += C;
            }
            #(#epilogue)*
            c0 += C;
        }
        Ok(())
    }
}

/// `let` bindings for the task's buffers and every tile the ops use.
fn declarations<'a>(
    plan: &Plan,
    ops: impl Iterator<Item = &'a Op> + Clone,
    chunk: usize,
) -> Vec<TokenStream> {
    let c = lit(chunk);
    let (f, dv) = (lit(plan.f), lit(plan.dv));
    let mut decls = vec![quote! {
        use ::attnc::__private::tile;
        const C: usize = #c;
        let ::attnc::__private::Task { q, k, v, beta, g, proj, n, out, s, z } = task;
        let _ = (&q, &k, &v, &beta, &g, &proj, &out, &z);
        let s = tile::as_tile_mut::<#f, #dv>(s)?;
        let out_first = 0;
    }];
    if plan.normalized {
        decls.push(quote! { let z = tile::as_vec_mut::<#f>(z)?; });
    }
    decls.extend(tile_declarations(plan, ops, chunk));
    decls
}

/// `let` bindings for FAVOR+'s projection and every tile the ops use (not the state).
fn tile_declarations<'a>(
    plan: &Plan,
    ops: impl Iterator<Item = &'a Op> + Clone,
    chunk: usize,
) -> Vec<TokenStream> {
    let mut decls = Vec::new();
    let f = lit(plan.f);
    if plan.uses_projection {
        // FAVOR+'s projection, transposed (DK x F) by the runtime once per call.
        let dk = lit(plan.dk);
        decls.push(quote! { let proj = tile::as_tile::<#dk, #f>(proj)?; });
    }
    let used = |t: Tile| ops.clone().any(|op| op.tiles().contains(&t));
    for t in [
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
    ] {
        if used(t) {
            let name = tile_ident(t);
            let store = format_ident!("{}_store", name);
            let (r, cols) = tile_shape(plan, t);
            // Small tiles (the step program's) live on the stack; chunk tiles on the heap, once
            // per call, so no thread stack overflows at chunk 256.
            if tile_len(plan, t, chunk) <= STACK_TILE_MAX {
                decls.push(quote! {
                    let mut #store = [[0.0f32; #cols]; #r];
                    let #name = &mut #store;
                });
            } else {
                decls.push(quote! {
                    let mut #store = tile::boxed_tile::<#r, #cols>()?;
                    let #name = &mut *#store;
                });
            }
        }
    }
    for t in [Tile::G, Tile::Den, Tile::Beta, Tile::Max] {
        if used(t) {
            let name = tile_ident(t);
            decls.push(quote! { let mut #name = [0.0f32; C]; });
        }
    }
    if used(Tile::Dz) {
        decls.push(quote! { let mut t_dz = [0.0f32; #f]; });
    }
    decls
}

/// The spilled tiles of the phased program, each with its offset (floats) in a chunk's `work`
/// slot, in the order of their first spill.
fn spill_layout(plan: &Plan) -> Vec<(Tile, usize)> {
    let mut layout: Vec<(Tile, usize)> = Vec::new();
    let mut at = 0;
    let phased = plan
        .phased
        .iter()
        .flat_map(|p| p.intra.iter().chain(&p.scan));
    for op in phased {
        if let Op::Spill(t) = op {
            if layout.iter().all(|(seen, _)| seen != t) {
                layout.push((*t, at));
                at += tile_len(plan, *t, plan.chunk);
            }
        }
    }
    layout
}

/// Floats of one chunk's `work` slot.
fn work_len(plan: &Plan) -> usize {
    spill_layout(plan)
        .iter()
        .map(|(t, at)| at + tile_len(plan, *t, plan.chunk))
        .max()
        .unwrap_or(0)
}

/// A tile's data as one flat slice (`mutable` or shared), for copies to and from slots.
fn flat(t: Tile, mutable: bool) -> TokenStream {
    let name = tile_ident(t);
    match (is_vector(t), mutable) {
        (true, true) => quote!((&mut #name[..])),
        (true, false) => quote!((&#name[..])),
        (false, true) => quote!(#name.as_flattened_mut()),
        (false, false) => quote!(#name.as_flattened()),
    }
}

/// Tiles held as `[f32; LEN]` rather than as rows.
fn is_vector(t: Tile) -> bool {
    is_local_vector(t) || matches!(t, Tile::Z | Tile::Dz)
}

/// Tiles of at most this many floats are stack arrays.
const STACK_TILE_MAX: usize = 2048;

/// Number of floats in a tile for a chunk length.
fn tile_len(plan: &Plan, t: Tile, chunk: usize) -> usize {
    match t {
        Tile::Q | Tile::K | Tile::Kt => chunk * plan.f,
        Tile::Qx | Tile::Kx => chunk * plan.dk,
        Tile::V | Tile::O | Tile::U | Tile::X => chunk * plan.dv,
        Tile::W => chunk * plan.f,
        Tile::A | Tile::Kk => chunk * chunk,
        Tile::S | Tile::Ds => plan.f * plan.dv,
        Tile::Z | Tile::Dz => plan.f,
        Tile::G | Tile::Den | Tile::Beta | Tile::Max => chunk,
    }
}

/// Rows x columns of a tile, as tokens (`C` is the program's chunk constant).
fn tile_shape(plan: &Plan, t: Tile) -> (TokenStream, TokenStream) {
    let (f, dv) = (lit(plan.f), lit(plan.dv));
    let c = quote!(C);
    match t {
        Tile::Q | Tile::K | Tile::W => (c, f),
        Tile::Qx | Tile::Kx => (c, lit(plan.dk)),
        Tile::V | Tile::O | Tile::U | Tile::X => (c, dv),
        Tile::Kt => (f, c),
        Tile::A | Tile::Kk => (c.clone(), c),
        Tile::S | Tile::Ds => (f, dv),
        Tile::Z | Tile::Dz => (quote!(1), f),
        Tile::G | Tile::Den | Tile::Beta | Tile::Max => (quote!(1), c),
    }
}

/// How many rows of a tile hold data: `rows` for token-indexed tiles, all for the others.
fn live_rows(plan: &Plan, t: Tile) -> TokenStream {
    if is_key_tile(plan, t) {
        return quote!(krows);
    }
    match t {
        Tile::Q
        | Tile::K
        | Tile::Qx
        | Tile::Kx
        | Tile::V
        | Tile::O
        | Tile::A
        | Tile::Kk
        | Tile::U
        | Tile::W
        | Tile::X
        | Tile::G
        | Tile::Den
        | Tile::Beta
        | Tile::Max => quote!(rows),
        Tile::Kt | Tile::S | Tile::Z | Tile::Ds | Tile::Dz => lit(plan.f),
    }
}

/// How many columns of a tile hold data.
fn live_cols(plan: &Plan, t: Tile) -> TokenStream {
    if plan.softmax.is_some() && matches!(t, Tile::Kt | Tile::A) {
        return quote!(krows);
    }
    match t {
        Tile::Kt | Tile::A | Tile::Kk => quote!(rows),
        Tile::Q | Tile::K | Tile::S | Tile::Z | Tile::W | Tile::Ds | Tile::Dz => lit(plan.f),
        Tile::Qx | Tile::Kx => lit(plan.dk),
        Tile::V | Tile::O | Tile::U | Tile::X => lit(plan.dv),
        Tile::G | Tile::Den | Tile::Beta | Tile::Max => quote!(rows),
    }
}

/// In the tiled softmax program, key and value tiles hold `krows` rows of key tile `k0`.
fn is_key_tile(plan: &Plan, t: Tile) -> bool {
    plan.softmax.is_some() && matches!(t, Tile::K | Tile::V)
}

fn tile_ident(t: Tile) -> Ident {
    match t {
        Tile::S => format_ident!("s"),
        Tile::Z => format_ident!("z"),
        other => format_ident!("t_{}", format!("{other:?}").to_lowercase()),
    }
}

/// A tile as a shared or mutable reference argument.
/// Per-token vectors are local arrays; every other tile is bound to a `&mut` tile.
fn is_local_vector(t: Tile) -> bool {
    matches!(t, Tile::G | Tile::Den | Tile::Beta | Tile::Max | Tile::Dz)
}

fn by_ref(t: Tile) -> TokenStream {
    let name = tile_ident(t);
    if is_local_vector(t) {
        quote!(&#name)
    } else {
        quote!(&*#name)
    }
}

fn by_mut(t: Tile) -> TokenStream {
    let name = tile_ident(t);
    if is_local_vector(t) {
        quote!(&mut #name)
    } else {
        quote!(&mut *#name)
    }
}

/// Lowers one op to one statement.
fn emit_op(plan: &Plan, op: &Op) -> TokenStream {
    match op {
        Op::Load { dst, src } => {
            let input = match src {
                Input::Q => quote!(q),
                Input::K => quote!(k),
                Input::V => quote!(v),
                Input::G => quote!(g),
                Input::Beta => quote!(beta),
            };
            let d = by_mut(*dst);
            let (at, rows) = if is_key_tile(plan, *dst) {
                (quote!(k0), quote!(krows))
            } else {
                (quote!(c0), quote!(rows))
            };
            match dst {
                Tile::G | Tile::Den | Tile::Beta => {
                    quote! { tile::load_vec(#input, #at, #rows, #d)?; }
                }
                _ => quote! { tile::load_rows(#input, #at, #rows, #d)?; },
            }
        }
        Op::L2Norm(t) => {
            let rows = live_rows(plan, *t);
            let t = by_mut(*t);
            quote! { tile::l2_normalize_rows(isa, #t, #rows); }
        }
        Op::FeatureMap(t) => {
            let t = by_mut(*t);
            quote! { tile::map_rows(#t, rows, __phi); }
        }
        Op::Expand { src, dst } => {
            let (s, d) = (by_ref(*src), by_mut(*dst));
            match &plan.feature_map {
                FeatureMap::Dpfp { nu } => {
                    let nu = lit(*nu);
                    quote! { tile::dpfp_rows(#s, rows, #d, #nu); }
                }
                FeatureMap::Favor { .. } => quote! { tile::favor_rows(isa, #s, rows, proj, #d); },
                _ => quote! { tile::taylor2_rows(#s, rows, #d); },
            }
        }
        Op::Scale(t) => {
            let t = by_mut(*t);
            let scale = Literal::f32_suffixed(plan.scale);
            quote! { tile::scale_rows(#t, rows, #scale); }
        }
        Op::CumSum(t) => {
            let t = by_mut(*t);
            quote! { tile::cumsum(#t, rows); }
        }
        Op::Transpose { src, dst } => {
            let rows = live_rows(plan, *src);
            let (s, d) = (by_ref(*src), by_mut(*dst));
            quote! { tile::transpose(isa, #s, #rows, #d); }
        }
        Op::MatMul {
            dst,
            a,
            b,
            tri,
            accumulate,
        } => {
            let rows = live_rows(plan, *a);
            let depth = live_cols(plan, *a);
            let tri = match tri {
                Tri::Full => abi::Tri::Full,
                Tri::LowerOut => abi::Tri::LowerOut,
                Tri::LowerA => abi::Tri::LowerA,
            };
            let (a, b, d) = (by_ref(*a), by_ref(*b), by_mut(*dst));
            quote! { tile::gemm(isa, #a, #b, #d, tile::Product { rows: #rows, depth: #depth, tri: #tri, accumulate: #accumulate }); }
        }
        Op::RowSums { dst, src } => {
            let (s, d) = (by_ref(*src), by_mut(*dst));
            quote! { tile::row_sums(#s, rows, #d); }
        }
        Op::DotRows {
            dst,
            rows: r,
            vec,
            accumulate,
        } => {
            let (r, v, d) = (by_ref(*r), by_ref(*vec), by_mut(*dst));
            quote! { tile::dot_rows(isa, #r, #v, rows, #d, #accumulate); }
        }
        Op::AddColSums { dst, src } => {
            let (s, d) = (by_ref(*src), by_mut(*dst));
            quote! { tile::add_col_sums(#s, rows, #d); }
        }
        Op::DivideRows { dst, den } => {
            let (den, d) = (by_ref(*den), by_mut(*dst));
            // Linear attention adds DESIGN §3.5's 1e-6; softmax's sum is >= 1, no epsilon.
            let eps = if plan.softmax.is_some() {
                quote!(0.0)
            } else {
                quote!(1e-6)
            };
            quote! { tile::divide_rows(#d, #den, rows, #eps); }
        }
        Op::DecayScores { dst, gates } => {
            let (g, d) = (by_ref(*gates), by_mut(*dst));
            quote! { tile::decay_scores(#d, #g, rows); }
        }
        Op::DecayRows { dst, gates } => {
            let (g, d) = (by_ref(*gates), by_mut(*dst));
            quote! { tile::decay_rows(#d, #g, rows); }
        }
        Op::DecayColsToEnd { dst, gates } => {
            let (g, d) = (by_ref(*gates), by_mut(*dst));
            quote! { tile::decay_cols_to_end(#d, #g, rows); }
        }
        Op::DecayAll { dst, gates } => {
            let (g, d) = (by_ref(*gates), by_mut(*dst));
            quote! { tile::decay_tile(#d, #g, rows); }
        }
        Op::SubFrom { dst, src } => {
            let (s, d) = (by_ref(*src), by_mut(*dst));
            quote! { tile::sub_from(#d, #s, rows); }
        }
        Op::Solve { dst, lower, beta } => {
            let (l, b, d) = (by_ref(*lower), by_ref(*beta), by_mut(*dst));
            quote! { tile::forward_substitute(isa, #d, #l, #b, rows); }
        }
        Op::StepUpdate {
            s,
            k,
            v,
            q,
            o,
            gates,
        } => {
            let (k, v, q) = (by_ref(*k), by_ref(*v), by_ref(*q));
            let (s, o) = (by_mut(*s), by_mut(*o));
            let gates = match gates {
                Some(g) => {
                    let g = by_ref(*g);
                    quote!(Some(#g))
                }
                None => quote!(None),
            };
            quote! { tile::step_update(isa, #s, #k, #v, #q, #o, #gates); }
        }
        Op::SoftmaxInit { max, sum, acc } => {
            let (m, l, o) = (by_mut(*max), by_mut(*sum), by_mut(*acc));
            quote! { tile::softmax_init(#m, #l, #o); }
        }
        Op::MaskAboveDiagonal(t) => {
            let t = by_mut(*t);
            quote! { tile::mask_above_diagonal(#t, rows); }
        }
        Op::OnlineSoftmax {
            scores,
            max,
            sum,
            acc,
        } => {
            let (a, m, l, o) = (by_mut(*scores), by_mut(*max), by_mut(*sum), by_mut(*acc));
            quote! { tile::online_softmax(#a, rows, krows, #m, #l, #o); }
        }
        Op::Store(t) => {
            let t = by_ref(*t);
            quote! { tile::store_rows(#t, rows, out, c0 - out_first)?; }
        }
        // The phased program's ops (`emit_phases`): whole-tile copies and slot traffic.
        Op::Copy { dst, src } => {
            let (d, s) = (tile_ident(*dst), tile_ident(*src));
            quote! { *#d = *#s; }
        }
        Op::Zero(t) => {
            let t = flat(*t, true);
            quote! { #t.fill(0.0); }
        }
        Op::AddTo { dst, src } => {
            let (d, s) = (flat(*dst, true), flat(*src, false));
            quote! { tile::add_assign(#d, #s); }
        }
        Op::Spill(t) => {
            let (t, at) = (flat(*t, false), spill_offset(plan, *t));
            quote! { tile::save(#t, work, slot * WORK + #at)?; }
        }
        Op::Fill(t) => {
            let (t, at) = (flat(*t, true), spill_offset(plan, *t));
            quote! { tile::restore(#t, work, slot * WORK + #at)?; }
        }
        Op::SaveChunkState { s, z } => {
            let (fs, fz) = slot_strides(plan);
            let st = flat(*s, false);
            let zs = z.map(|z| flat(z, false)).into_iter();
            quote! {
                tile::save(#st, slot_s, slot * #fs)?;
                #(tile::save(#zs, slot_z, slot * #fz)?;)*
            }
        }
        Op::LoadChunkState { s, z } => {
            let (fs, fz) = slot_strides(plan);
            let st = flat(*s, true);
            let zs = z.map(|z| flat(z, true)).into_iter();
            quote! {
                tile::restore(#st, slot_s, slot * #fs)?;
                #(tile::restore(#zs, slot_z, slot * #fz)?;)*
            }
        }
        Op::ReadState { s, z } => {
            let st = flat(*s, true);
            let zs = z.map(|z| flat(z, true)).into_iter();
            quote! {
                tile::restore(#st, final_s, 0)?;
                #(tile::restore(#zs, final_z, 0)?;)*
            }
        }
    }
}

/// A spilled tile's offset in a chunk's `work` slot (`WORK` is the kernel's constant).
fn spill_offset(plan: &Plan, t: Tile) -> TokenStream {
    let at = spill_layout(plan)
        .into_iter()
        .find(|(seen, _)| *seen == t)
        .map_or(0, |(_, at)| at);
    let at = lit(at);
    quote!(#at)
}

/// Floats per chunk of the per-chunk state slots: `S` (F x DV) and `z` (F).
fn slot_strides(plan: &Plan) -> (TokenStream, TokenStream) {
    (lit(plan.f * plan.dv), lit(plan.f))
}

/// The body of `fn __phi(x: f32) -> f32`.
pub fn emit_feature_map(map: &FeatureMap) -> TokenStream {
    match map {
        FeatureMap::EluPlusOne => {
            quote! { if x > 0.0 { x + 1.0 } else { ::attnc::__private::tile::exp(x) } }
        }
        FeatureMap::Relu => quote! { x.max(0.0) },
        FeatureMap::SquaredRelu => quote! { let r = x.max(0.0); r * r },
        FeatureMap::Sigmoid => quote! { 1.0 / (1.0 + ::attnc::__private::tile::exp(-x)) },
        FeatureMap::Closure(c) => emit_expr(&c.body),
        _ => quote! { x },
    }
}

/// A closure body as Rust over the variable `x`, fully parenthesised.
fn emit_expr(e: &Expr) -> TokenStream {
    match e {
        Expr::Var => quote!(x),
        Expr::Lit(v) => {
            let v = Literal::f32_suffixed(*v);
            quote!(#v)
        }
        Expr::Neg(a) => {
            let a = emit_expr(a);
            quote!((-#a))
        }
        Expr::Binary(op, a, b) => {
            let (a, b) = (emit_expr(a), emit_expr(b));
            match op {
                BinOp::Add => quote!((#a + #b)),
                BinOp::Sub => quote!((#a - #b)),
                BinOp::Mul => quote!((#a * #b)),
                BinOp::Div => quote!((#a / #b)),
            }
        }
        Expr::Unary(f, a) => {
            let a = emit_expr(a);
            if *f == UnaryFn::Exp {
                // Inlined arithmetic exp: vectorises, where libm's call does not.
                return quote!(::attnc::__private::tile::exp(#a));
            }
            let m = match f {
                UnaryFn::Exp => quote!(exp),
                UnaryFn::Ln => quote!(ln),
                UnaryFn::Sqrt => quote!(sqrt),
                UnaryFn::Abs => quote!(abs),
                UnaryFn::Tanh => quote!(tanh),
            };
            quote!(#a.#m())
        }
        Expr::Binary2(f, a, b) => {
            let (a, b) = (emit_expr(a), emit_expr(b));
            let m = match f {
                BinaryFn::Max => quote!(max),
                BinaryFn::Min => quote!(min),
                BinaryFn::Powf => quote!(powf),
            };
            quote!(#a.#m(#b))
        }
        Expr::Powi(a, n) => {
            let a = emit_expr(a);
            let n = Literal::i32_suffixed(*n);
            quote!(#a.powi(#n))
        }
        Expr::If {
            cond,
            then,
            otherwise,
        } => {
            let (l, r) = (emit_expr(&cond.lhs), emit_expr(&cond.rhs));
            let op = match cond.op {
                CmpOp::Lt => quote!(<),
                CmpOp::Le => quote!(<=),
                CmpOp::Gt => quote!(>),
                CmpOp::Ge => quote!(>=),
                CmpOp::Eq => quote!(==),
                CmpOp::Ne => quote!(!=),
            };
            let (t, o) = (emit_expr(then), emit_expr(otherwise));
            quote!((if #l #op #r { #t } else { #o }))
        }
    }
}

/// An unsuffixed integer literal.
pub(crate) fn lit(n: usize) -> TokenStream {
    let l = Literal::usize_unsuffixed(n);
    let mut l = l;
    l.set_span(Span::call_site());
    quote!(#l)
}
