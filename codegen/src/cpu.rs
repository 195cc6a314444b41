//! The CPU printer: spells a plan's resolved CPU programs as Rust. Each op becomes one call of a
//! primitive in `attnc_runtime::cpu::tile`, on statically shaped tiles, inside a loop over chunks.
//! The result is an `impl Kernel` whose programs are generic over the ISA marker, so the
//! runtime compiles each under `#[target_feature]` and picks one at run time.
//!
//! Every fact printed here (shapes, live rows, places, slots, constants) comes from the plan.

use crate::back::{self, binary_symbol, ExprSyntax};
use crate::plan::{
    CpuPlace, Dim, DimOf, Expansion, Extent, Linear, Op, Operand, Plan, Program, ResolvedOp,
    Routine, Softmax,
};
use crate::spec::{BinOp, BinaryFn, CmpOp, UnaryFn};
use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote};

type CpuOp = ResolvedOp<CpuPlace>;
type CpuOperand = Operand<CpuPlace>;

/// The kernel type and its `impl Kernel` (and, for linear attention, `impl Recurrent`).
/// `kernel` names the (private) type to emit.
pub fn emit_kernel(plan: &Plan, kernel: &Ident) -> TokenStream {
    let p = quote!(::attnc::__private);
    let phi = back::lower(&Rust, &plan.phi);
    let (dphi_doc, dphi) = derivative(plan);
    let backward = &plan.backward;
    let chunk = lit(plan.signature.chunk);
    let (forward, recurrent, run_all) = match &plan.cpu {
        Program::Linear(l) => (
            sequential(plan, &l.forward),
            recurrent(plan, l, kernel),
            format_ident!("run_recurrent"),
        ),
        Program::Softmax(s) => (tiled(plan, s), quote!(), format_ident!("run_forward")),
    };
    quote! {
        /// The generated kernel of this spec.
        struct #kernel;

        /// The feature map phi, elementwise.
        #[inline(always)]
        #[allow(clippy::excessive_precision, clippy::neg_multiply, unused_parens)]
        fn __phi(x: f32) -> f32 {
            #phi
        }

        impl #p::Differentiable for #kernel {
            const BACKWARD: ::attnc::BackwardPlan = #backward;

            #[inline(always)]
            fn phi(x: f32) -> f32 {
                __phi(x)
            }

            #[doc = #dphi_doc]
            #[inline(always)]
            #[allow(clippy::excessive_precision, clippy::neg_multiply, unused_parens, unused_variables)]
            fn dphi(x: f32) -> f32 {
                #dphi
            }

            fn phi_rows(x: &[f32], out: &mut [f32]) {
                #p::phi_rows::<Self>(x, out)
            }

            fn dphi_rows(x: &[f32], g: &[f32], dx: &mut [f32]) {
                #p::dphi_rows::<Self>(x, g, dx)
            }
        }

        impl #p::Kernel for #kernel {
            const CHUNK: usize = #chunk;

            #[inline(always)]
            fn forward<I: #p::Isa>(isa: I, task: #p::Task<'_>) -> #p::Result<()> {
                #forward
            }

            fn run_all(
                p: &#p::Problem,
                dims: [usize; 3],
                bufs: &mut #p::Buffers,
            ) -> #p::Result<::std::vec::Vec<f32>> {
                #p::#run_all::<Self>(p, dims, bufs)
            }
        }

        #recurrent
    }
}

/// phi'(x) for `impl Differentiable`, with its doc line: the build-time symbolic derivative; dual
/// numbers over phi at run time when that would be too large to print; nothing for maps that
/// change the width, whose vector-Jacobian products are runtime primitives.
fn derivative(plan: &Plan) -> (&'static str, TokenStream) {
    let p = quote!(::attnc::__private);
    match &plan.dphi {
        Some(d) => (
            " phi'(x), differentiated symbolically at build time.",
            back::lower(&Rust, d),
        ),
        None if plan.dphi_by_dual_numbers => {
            let body = &plan.phi;
            let eval = quote! {
                static BODY: ::std::sync::OnceLock<::attnc::spec::Expr> =
                    ::std::sync::OnceLock::new();
                #p::eval_derivative(BODY.get_or_init(|| #body), x).1
            };
            (
                " phi'(x) by dual numbers over phi (its printed derivative would be too large).",
                eval,
            )
        }
        None => (
            " Not called: this feature map's vector-Jacobian product is a runtime primitive.",
            quote!(1.0),
        ),
    }
}

/// `impl Recurrent`: the step program and the chunk-parallel phases of a linear spec.
fn recurrent(plan: &Plan, l: &Linear<CpuPlace>, kernel: &Ident) -> TokenStream {
    let p = quote!(::attnc::__private);
    let (step, phase) = (sequential(plan, &l.step), phases(plan, l));
    let (work, light_scan) = (lit(l.phases.spills.work_per_chunk), l.phases.light_scan);
    quote! {
        impl #p::Recurrent for #kernel {
            const WORK: usize = #work;
            const LIGHT_SCAN: bool = #light_scan;

            #[inline(always)]
            fn step<I: #p::Isa>(isa: I, task: #p::Task<'_>) -> #p::Result<()> {
                #step
            }

            fn run_step_all(
                p: &#p::Problem,
                dims: [usize; 3],
                bufs: &mut #p::Buffers,
            ) -> #p::Result<::std::vec::Vec<f32>> {
                #p::run_step::<Self>(p, dims, bufs)
            }

            #[inline(always)]
            fn phase<I: #p::Isa>(
                isa: I,
                phase: #p::Phase,
                task: #p::PhaseTask<'_>,
            ) -> #p::Result<()> {
                #phase
            }
        }
    }
}

/// A sequential routine (the chunk program or the step program): declarations, then each pass
/// as a loop over chunks.
fn sequential(plan: &Plan, r: &Routine<CpuPlace>) -> TokenStream {
    let c = lit(r.frame.chunk);
    let decls = declarations(plan, &r.frame.tiles);
    let loops = r.passes.iter().map(|ops| {
        let body = ops.iter().map(op);
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
        use ::attnc::__private::tile;
        const C: usize = #c;
        let ::attnc::__private::Task { q, k, v, beta, g, proj, n, out, s, z } = task;
        let _ = (&q, &k, &v, &beta, &g, &proj, &out, &s, &z);
        let out_first = 0;
        #(#decls)*
        #(#loops)*
        Ok(())
    }
}

/// The chunk-parallel schedule's three routines, one per arm of a match on the phase. Each runs
/// its ops over the task's run of chunks; spilled tiles and per-chunk states live in the task's
/// slots, indexed by the chunk's place in the run.
fn phases(plan: &Plan, l: &Linear<CpuPlace>) -> TokenStream {
    let work = lit(l.phases.spills.work_per_chunk);
    let arm = |r: &Routine<CpuPlace>| {
        let c = lit(r.frame.chunk);
        let decls = declarations(plan, &r.frame.tiles);
        let body = r.passes.iter().flatten().map(op);
        quote! {{
            use ::attnc::__private::tile;
            const C: usize = #c;
            const WORK: usize = #work;
            let ::attnc::__private::PhaseTask {
                q, k, v, beta, g, proj, n, first, chunks, out, s, z, final_s, final_z, slot_s, slot_z, work,
            } = task;
            let _ = (&q, &k, &v, &beta, &g, &proj, &out, &s, &z, &final_s, &final_z, &slot_z, &work);
            let out_first = first * C;
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
    let p = &l.phases;
    let (intra, scan, output) = (arm(&p.intra), arm(&p.scan), arm(&p.output));
    quote! {
        match phase {
            ::attnc::__private::Phase::Intra => #intra,
            ::attnc::__private::Phase::Scan => #scan,
            ::attnc::__private::Phase::Output => #output,
        }
    }
}

/// The tiled softmax program: query tiles (`c0`, `rows`) x key tiles (`k0`, `krows`).
fn tiled(plan: &Plan, t: &Softmax<CpuPlace>) -> TokenStream {
    let c = lit(t.frame.chunk);
    let decls = declarations(plan, &t.frame.tiles);
    let lower = |ops: &[CpuOp]| ops.iter().map(op).collect::<Vec<_>>();
    let (prologue, body, diagonal) = (lower(&t.prologue), lower(&t.body), lower(&t.diagonal));
    let (update, epilogue) = (lower(&t.update), lower(&t.epilogue));
    let (key_end, on_diagonal) = if t.causal {
        (
            quote!((c0 + rows).min(n)),
            quote! { if k0 == c0 { #(#diagonal)* } },
        )
    } else {
        (quote!(n), quote! {})
    };
    quote! {
        use ::attnc::__private::tile;
        const C: usize = #c;
        let ::attnc::__private::Task { q, k, v, beta, g, proj, n, out, s, z } = task;
        let _ = (&q, &k, &v, &beta, &g, &proj, &out, &s, &z);
        let out_first = 0;
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

/// `let` bindings of a frame's tiles, each by its place, and FAVOR+'s projection.
fn declarations(plan: &Plan, tiles: &[CpuOperand]) -> Vec<TokenStream> {
    let mut decls: Vec<TokenStream> = Vec::new();
    let (state, rest): (Vec<_>, Vec<_>) = tiles
        .iter()
        .partition(|o| matches!(o.tile, crate::plan::Tile::S | crate::plan::Tile::Z));
    decls.extend(state.into_iter().map(declaration));
    if plan.signature.uses_projection {
        // FAVOR+'s projection, transposed (DK x F) by the runtime once per call.
        let (dk, f) = (lit(plan.signature.dk), lit(plan.signature.f));
        decls.push(quote! { let proj = tile::as_tile::<#dk, #f>(proj)?; });
    }
    decls.extend(rest.into_iter().map(declaration));
    decls
}

/// One tile's binding: a view of the task's state, a stack or heap tile, or a local vector.
fn declaration(o: &CpuOperand) -> TokenStream {
    let name = ident(o);
    let store = format_ident!("{}_store", name);
    let (r, c) = (dim(o.rows), dim(o.cols));
    let vector = o.tile.is_vector();
    match (o.place, vector) {
        (CpuPlace::Task, false) => quote! { let #name = tile::as_tile_mut::<#r, #c>(#name)?; },
        (CpuPlace::Task, true) => quote! { let #name = tile::as_vec_mut::<#c>(#name)?; },
        (CpuPlace::Stack, false) => quote! {
            let mut #store = [[0.0f32; #c]; #r];
            let #name = &mut #store;
        },
        (CpuPlace::Stack, true) => quote! {
            let mut #store = [0.0f32; #c];
            let #name = &mut #store;
        },
        (CpuPlace::Heap, _) => quote! {
            let mut #store = tile::boxed_tile::<#r, #c>()?;
            let #name = &mut *#store;
        },
        (CpuPlace::Local, _) => quote! { let mut #name = [0.0f32; #c]; },
    }
}

/// A tile's identifier: the state keeps the task's names `s` and `z`.
fn ident(o: &CpuOperand) -> Ident {
    match o.tile {
        crate::plan::Tile::S | crate::plan::Tile::Z => format_ident!("{}", o.tile.name()),
        t => format_ident!("t_{}", t.name()),
    }
}

/// A declared dimension: the chunk length is the routine's constant `C`.
fn dim(d: Dim) -> TokenStream {
    match d.of {
        // Braced: a const argument, so that a user type named `C` cannot shadow the constant.
        DimOf::Chunk => quote!({ C }),
        _ => lit(d.n),
    }
}

/// How many rows or columns hold data.
fn extent(e: Extent) -> TokenStream {
    match e {
        Extent::Rows => quote!(rows),
        Extent::KeyRows => quote!(krows),
        Extent::Full(d) => lit(d.n),
    }
}

/// A tile as a shared reference argument.
fn by_ref(o: &CpuOperand) -> TokenStream {
    let name = ident(o);
    match o.place {
        CpuPlace::Local => quote!(&#name),
        _ => quote!(&*#name),
    }
}

/// A tile as a mutable reference argument.
fn by_mut(o: &CpuOperand) -> TokenStream {
    let name = ident(o);
    match o.place {
        CpuPlace::Local => quote!(&mut #name),
        _ => quote!(&mut *#name),
    }
}

/// A tile's data as one flat slice, for whole-tile copies and slot traffic.
fn flat(o: &CpuOperand, mutable: bool) -> TokenStream {
    let name = ident(o);
    match (o.tile.is_vector(), mutable) {
        (true, true) => quote!((&mut #name[..])),
        (true, false) => quote!((&#name[..])),
        (false, true) => quote!(#name.as_flattened_mut()),
        (false, false) => quote!(#name.as_flattened()),
    }
}

/// One resolved op as one statement.
fn op(op: &CpuOp) -> TokenStream {
    match op {
        Op::Load { dst, src, in_place } => {
            let input = format_ident!("{}", src.name());
            let d = by_mut(dst);
            let name = ident(dst);
            let at = match dst.live_rows {
                Extent::KeyRows => quote!(k0),
                _ => quote!(c0),
            };
            let rows = extent(dst.live_rows);
            if src.is_scalar() {
                quote! { tile::load_vec(#input, #at, #rows, #d)?; }
            } else if *in_place {
                // Shadows the tile with a view of the input until the end of the chunk.
                quote! { let #name = tile::view_rows(#input, #at, #rows, #d)?; }
            } else {
                quote! { tile::load_rows(#input, #at, #rows, #d)?; }
            }
        }
        Op::L2Norm { t, eps } => {
            let (rows, eps) = (extent(t.live_rows), Literal::f32_suffixed(*eps));
            let t = by_mut(t);
            quote! { tile::l2_normalize_rows(isa, #t, #rows, #eps); }
        }
        Op::FeatureMap(t) => {
            let rows = extent(t.live_rows);
            let t = by_mut(t);
            quote! { tile::map_rows(#t, #rows, __phi); }
        }
        Op::Expand { src, dst, map } => {
            let (s, d) = (by_ref(src), by_mut(dst));
            match map {
                Expansion::Dpfp { nu } => {
                    let nu = lit(*nu);
                    quote! { tile::dpfp_rows(#s, rows, #d, #nu); }
                }
                Expansion::Favor => quote! { tile::favor_rows(isa, #s, rows, proj, #d); },
                Expansion::Taylor2 => quote! { tile::taylor2_rows(#s, rows, #d); },
            }
        }
        Op::Scale { t, factor } => {
            let t = by_mut(t);
            let factor = Literal::f32_suffixed(*factor);
            quote! { tile::scale_rows(#t, rows, #factor); }
        }
        Op::CumSum(t) => {
            let t = by_mut(t);
            quote! { tile::cumsum(#t, rows); }
        }
        Op::Transpose { src, dst } => {
            let rows = extent(src.live_rows);
            let (s, d) = (by_ref(src), by_mut(dst));
            quote! { tile::transpose(isa, #s, #rows, #d); }
        }
        Op::MatMul {
            dst,
            a,
            b,
            tri,
            accumulate,
        } => {
            let (rows, depth) = (extent(a.live_rows), extent(a.live_cols));
            let (a, b, d) = (by_ref(a), by_ref(b), by_mut(dst));
            quote! {
                tile::gemm(isa, #a, #b, #d, tile::Product { rows: #rows, depth: #depth, tri: #tri, accumulate: #accumulate });
            }
        }
        // Never in a CPU plan (the validator reports one): the CPU keeps `Kt` and transposes.
        Op::MatMulBt { .. } => {
            quote! { ::core::compile_error!("attnc: planner bug: a transposed product on the CPU"); }
        }
        Op::RowSums { dst, src } => reduce("row_sums", src, dst),
        Op::DotRows {
            dst,
            rows: r,
            vec,
            accumulate,
        } => {
            let (r, v, d) = (by_ref(r), by_ref(vec), by_mut(dst));
            quote! { tile::dot_rows(isa, #r, #v, rows, #d, #accumulate); }
        }
        Op::AddColSums { dst, src } => reduce("add_col_sums", src, dst),
        Op::DivideRows { dst, den, eps } => {
            let (den, d) = (by_ref(den), by_mut(dst));
            let eps = Literal::f32_suffixed(*eps);
            quote! { tile::divide_rows(#d, #den, rows, #eps); }
        }
        Op::DecayScores { dst, gates } => in_place("decay_scores", dst, gates),
        Op::DecayRows { dst, gates } => in_place("decay_rows", dst, gates),
        Op::DecayColsToEnd { dst, gates } => in_place("decay_cols_to_end", dst, gates),
        Op::DecayAll { dst, gates } => in_place("decay_tile", dst, gates),
        Op::SubFrom { dst, src } => in_place("sub_from", dst, src),
        Op::Solve { dst, lower, beta } => {
            let (l, b, d) = (by_ref(lower), by_ref(beta), by_mut(dst));
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
            let (k, v, q) = (by_ref(k), by_ref(v), by_ref(q));
            let (s, o) = (by_mut(s), by_mut(o));
            let gates = match gates {
                Some(g) => {
                    let g = by_ref(g);
                    quote!(Some(#g))
                }
                None => quote!(None),
            };
            quote! { tile::step_update(isa, #s, #k, #v, #q, #o, #gates); }
        }
        // The CPU's kernels are printed from a spec's base (`Spec::base`): momentum runs in
        // `attnc_runtime::systems` there.
        Op::MomentumStep { .. } | Op::MomentumKeySum { .. } => quote! {
            ::core::compile_error!("attnc internal error: momentum's step ops have no CPU printer");
        },
        Op::SoftmaxInit { max, sum, acc } => {
            let (m, l, o) = (by_mut(max), by_mut(sum), by_mut(acc));
            quote! { tile::softmax_init(#m, #l, #o); }
        }
        Op::MaskAboveDiagonal(t) => {
            let t = by_mut(t);
            quote! { tile::mask_above_diagonal(#t, rows); }
        }
        Op::OnlineSoftmax {
            scores,
            max,
            sum,
            acc,
        } => {
            let (a, m, l, o) = (by_mut(scores), by_mut(max), by_mut(sum), by_mut(acc));
            quote! { tile::online_softmax(#a, rows, krows, #m, #l, #o); }
        }
        Op::Store(t) => {
            let t = by_ref(t);
            quote! { tile::store_rows(isa, #t, rows, out, c0 - out_first)?; }
        }
        Op::Copy { dst, src } => {
            let (d, s) = (ident(dst), ident(src));
            quote! { *#d = *#s; }
        }
        Op::Zero(t) => {
            let t = flat(t, true);
            quote! { #t.fill(0.0); }
        }
        Op::AddTo { dst, src } => {
            let (d, s) = (flat(dst, true), flat(src, false));
            quote! { tile::add_assign(#d, #s); }
        }
        Op::Spill { t, slot } => {
            let (t, at) = (flat(t, false), lit(slot.offset));
            quote! { tile::save(#t, work, slot * WORK + #at)?; }
        }
        Op::Fill { t, slot } => {
            let (t, at) = (flat(t, true), lit(slot.offset));
            quote! { tile::restore(#t, work, slot * WORK + #at)?; }
        }
        Op::SaveChunkState { s, z } => slot_traffic("save", s, z.as_ref(), false),
        Op::LoadChunkState { s, z } => slot_traffic("restore", s, z.as_ref(), true),
        Op::ReadState { s, z } => {
            let st = flat(s, true);
            let z = z.iter().map(|z| {
                let zt = flat(z, true);
                quote! { tile::restore(#zt, final_z, 0)?; }
            });
            quote! {
                tile::restore(#st, final_s, 0)?;
                #(#z)*
            }
        }
    }
}

/// `tile::f(dst, src, rows)`: `dst` updated in place from `src` over the live rows.
fn in_place(f: &str, dst: &CpuOperand, src: &CpuOperand) -> TokenStream {
    let (f, d, s) = (format_ident!("{}", f), by_mut(dst), by_ref(src));
    quote! { tile::#f(#d, #s, rows); }
}

/// `tile::f(src, rows, dst)`: a reduction of `src`'s live rows into the vector `dst`.
fn reduce(f: &str, src: &CpuOperand, dst: &CpuOperand) -> TokenStream {
    let (f, s, d) = (format_ident!("{}", f), by_ref(src), by_mut(dst));
    quote! { tile::#f(#s, rows, #d); }
}

/// `tile::save` or `tile::restore` of `s` (and `z`) at this chunk's slot of the per-chunk
/// states.
fn slot_traffic(call: &str, s: &CpuOperand, z: Option<&CpuOperand>, mutable: bool) -> TokenStream {
    let call = format_ident!("{}", call);
    let one = |o: &CpuOperand, buf: TokenStream| {
        let (stride, t) = (lit(o.len()), flat(o, mutable));
        quote! { tile::#call(#t, #buf, slot * #stride)?; }
    };
    let (s, z) = (one(s, quote!(slot_s)), z.map(|z| one(z, quote!(slot_z))));
    quote! { #s #z }
}

/// Rust's spelling of the expression language, over the variable `x`.
struct Rust;

impl ExprSyntax for Rust {
    type Out = TokenStream;

    fn var(&self) -> TokenStream {
        quote!(x)
    }

    fn lit(&self, v: f32) -> TokenStream {
        let v = Literal::f32_suffixed(v);
        quote!(#v)
    }

    fn neg(&self, a: TokenStream) -> TokenStream {
        quote!((-#a))
    }

    fn binary(&self, op: BinOp, a: TokenStream, b: TokenStream) -> TokenStream {
        let op = symbol(binary_symbol(op));
        quote!((#a #op #b))
    }

    fn unary(&self, f: UnaryFn, a: TokenStream) -> TokenStream {
        if f == UnaryFn::Exp {
            // Inlined arithmetic exp: vectorises, where libm's call does not.
            return quote!(::attnc::__private::tile::exp(#a));
        }
        let m = format_ident!("{}", f.name());
        quote!(#a.#m())
    }

    fn binary_fn(&self, f: BinaryFn, a: TokenStream, b: TokenStream) -> TokenStream {
        let m = format_ident!("{}", f.name());
        quote!(#a.#m(#b))
    }

    fn powi(&self, a: TokenStream, n: i32) -> TokenStream {
        let n = Literal::i32_suffixed(n);
        quote!(#a.powi(#n))
    }

    fn select(
        &self,
        op: CmpOp,
        lhs: TokenStream,
        rhs: TokenStream,
        then: TokenStream,
        otherwise: TokenStream,
    ) -> TokenStream {
        let op = symbol(op.symbol());
        quote!((if #lhs #op #rhs { #then } else { #otherwise }))
    }
}

/// An operator symbol as tokens (the symbols are fixed strings that always tokenize).
fn symbol(s: &str) -> TokenStream {
    s.parse().unwrap_or_default()
}

/// An unsuffixed integer literal.
pub(crate) fn lit(n: usize) -> TokenStream {
    let mut l = Literal::usize_unsuffixed(n);
    l.set_span(Span::call_site());
    quote!(#l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Expr;

    #[test]
    fn closures_print_fully_parenthesised() {
        let e = Expr::Binary(
            BinOp::Mul,
            Box::new(Expr::Neg(Box::new(Expr::Var))),
            Box::new(Expr::Unary(UnaryFn::Exp, Box::new(Expr::Lit(2.0)))),
        );
        let got = back::lower(&Rust, &e).to_string();
        assert_eq!(got, "((- x) * :: attnc :: __private :: tile :: exp (2f32))");
    }
}
