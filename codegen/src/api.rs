//! The expansion of `#[attention(...)]`: validate, plan, emit, then the glue users call.
//!
//! On any error the user's struct is still emitted unchanged next to the errors (thiserror's
//! fallback pattern), so one mistake in the attribute does not cascade into "cannot find type".

use crate::abi::Signature;
use crate::cpu::{emit_kernel, lit};
use crate::cuda::CudaProgram;
use crate::parse::{parse_spec, ParsedSpec};
use crate::plan::Plan;
use crate::spec::*;
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use syn::spanned::Spanned;

/// Expands `#[attention(attr)] item`.
pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_struct = match syn::parse2::<syn::ItemStruct>(item.clone()) {
        Ok(s) if matches!(s.fields, syn::Fields::Unit) => s,
        Ok(s) => {
            let err = syn::Error::new(
                s.fields.span(),
                "#[attention] goes on a unit struct, e.g. `pub struct MyAttention;`: \
                 the struct only names the attention variant and carries no data",
            );
            return fallback(item, err);
        }
        Err(_) => {
            let err = syn::Error::new(
                item_name_span(&item),
                "#[attention] goes on a unit struct, e.g. `pub struct MyAttention;`: \
                 the struct only names the attention variant and carries no data",
            );
            return fallback(item, err);
        }
    };
    let parsed = match parse_spec(attr) {
        Ok(p) => p,
        Err(e) => return fallback(item, e),
    };
    expand_valid(&item_struct, &parsed, &Plan::new(&parsed.spec))
}

/// The span of an item's name (enum, fn, ...), or of its first token.
fn item_name_span(item: &TokenStream) -> proc_macro2::Span {
    let ident = match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Enum(e)) => Some(e.ident),
        Ok(syn::Item::Fn(f)) => Some(f.sig.ident),
        Ok(syn::Item::Union(u)) => Some(u.ident),
        Ok(syn::Item::Trait(t)) => Some(t.ident),
        Ok(syn::Item::Type(t)) => Some(t.ident),
        _ => None,
    };
    ident.map_or_else(|| item.span(), |i| i.span())
}

/// The item as written plus the errors.
fn fallback(item: TokenStream, err: syn::Error) -> TokenStream {
    let errors = err.to_compile_error();
    quote! { #item #errors }
}

fn expand_valid(item: &syn::ItemStruct, parsed: &ParsedSpec, plan: &Plan) -> TokenStream {
    let spec = &parsed.spec;
    let name = &item.ident;
    let kernel_ident = format_ident!("__AttncKernel{}", name);
    let kernel = emit_kernel(plan, &kernel_ident);
    let cuda = crate::cuda::emit(plan, spec.layout == Layout::Bnhd, &spec.to_string());
    let methods = emit_methods(spec, plan, &kernel_ident);
    let cuda_methods = emit_cuda_methods(spec, plan);
    let consts = emit_consts(spec, plan, &cuda);
    quote! {
        #item

        const _: () = {
            #kernel

            impl #name {
                #consts
                #methods
                #cuda_methods
            }
        };
    }
}

/// `HEAD_DIM`, `VALUE_DIM`, `FEATURE_DIM`, `CHUNK`, `CUDA_SOURCE`, `CUDA_LAUNCH` and `spec()`.
fn emit_consts(spec: &Spec, plan: &Plan, cuda: &CudaProgram) -> TokenStream {
    let (dk, dv, f, c) = (lit(plan.dk), lit(plan.dv), lit(plan.f), lit(plan.chunk));
    let spec_value = spec_tokens(spec);
    let text = Literal::string(&spec.to_string());
    let launch = &cuda.launch;
    let cuda = Literal::string(&cuda.source);
    quote! {
        /// dk, the query/key head dimension.
        pub const HEAD_DIM: usize = #dk;
        /// dv, the value head dimension.
        pub const VALUE_DIM: usize = #dv;
        /// F, the feature dimension: rows of the state.
        pub const FEATURE_DIM: usize = #f;
        /// The chunk length of the chunkwise-parallel kernel.
        pub const CHUNK: usize = #c;
        /// The generated CUDA C for this spec (compiled with NVRTC on first use on a GPU).
        pub const CUDA_SOURCE: &'static str = #cuda;
        /// How `CUDA_SOURCE`'s kernels are launched (computed at build time).
        pub const CUDA_LAUNCH: ::attnc::__private::CudaLaunch = #launch;
        /// The spec, every key explicit, as attribute text.
        pub const SPEC_TEXT: &'static str = #text;

        /// The parsed spec, for introspection and printing.
        pub fn spec() -> &'static ::attnc::Spec {
            static SPEC: ::std::sync::OnceLock<::attnc::Spec> = ::std::sync::OnceLock::new();
            SPEC.get_or_init(|| #spec_value)
        }
    }
}

/// The public entry points, with argument lists that follow the spec (DESIGN §4).
fn emit_methods(spec: &Spec, plan: &Plan, kernel: &syn::Ident) -> TokenStream {
    let p = quote!(::attnc::__private);
    let (dk, dv, f) = (lit(plan.dk), lit(plan.dv), lit(plan.f));
    let bnhd = spec.layout == Layout::Bnhd;
    let (tok, per_tok, destructure) = if bnhd {
        (
            quote!((B, N, H, #p::Const<#dk>)),
            quote!((B, N, H)),
            quote!(let (b, n, h, _) = *#p::HasShape::shape(q);),
        )
    } else {
        (
            quote!((B, H, N, #p::Const<#dk>)),
            quote!((B, H, N)),
            quote!(let (b, h, n, _) = *#p::HasShape::shape(q);),
        )
    };
    // The spec's kernel signature, as `forward` and `step` pass it to the runtime.
    let signature = Signature::of(plan, spec.layout);
    let tok_v = if bnhd {
        quote!((B, N, H, #p::Const<#dv>))
    } else {
        quote!((B, H, N, #p::Const<#dv>))
    };
    let out_shape = if bnhd {
        quote!((b, n, h, #p::Const::<#dv>))
    } else {
        quote!((b, h, n, #p::Const::<#dv>))
    };
    let tensor = |shape: TokenStream| quote!(#p::Tensor<#shape, f32, #p::Cpu>);
    let (q_ty, v_ty, s_ty) = (tensor(tok), tensor(tok_v), tensor(per_tok.clone()));
    let state_ty = quote!(::attnc::State<B, H, #f, #dv>);
    let decode_ty = quote!(::attnc::DecodeState<B, H, #f, #dv>);
    let proj_ty = tensor(quote!((#p::Const<#f>, #p::Const<#dk>)));

    // Extra per-token arguments, in the contract's order: beta, then g.
    let mut extra_params = Vec::new();
    let mut extra_names = Vec::new();
    let mut extra_args = Vec::new();
    let mut step_params = Vec::new();
    let mut step_args = Vec::new();
    let mut extra_docs = String::new();
    for (used, name, step_name, doc) in [
        (plan.uses_beta, "beta", "beta_t", "`beta` (write strengths)"),
        (plan.uses_gates, "g", "g_t", "`g` (log-decays, <= 0)"),
    ] {
        let (id, sid) = (format_ident!("{}", name), format_ident!("{}", step_name));
        let head_ty = tensor(quote!((B, H)));
        if used {
            extra_params.push(quote!(#id: &#s_ty));
            extra_args.push(quote!(Some(#id)));
            extra_names.push(quote!(#id));
            step_params.push(quote!(#sid: &#head_ty));
            step_args.push(quote!(Some(#sid)));
            extra_docs.push_str(&format!(" {doc},"));
        } else {
            extra_args.push(quote!(None::<&#s_ty>));
            step_args.push(quote!(None::<&#head_ty>));
        }
    }
    // FAVOR+'s projection w (F x DK): last, after the per-token inputs, in `step` too.
    if plan.uses_projection {
        extra_params.push(quote!(proj: &#proj_ty));
        extra_args.push(quote!(Some(proj)));
        extra_names.push(quote!(proj));
        step_params.push(quote!(proj: &#proj_ty));
        step_args.push(quote!(Some(proj)));
        extra_docs.push_str(&format!(
            " `proj` (FAVOR+'s projection w, ({}, {}): see `attnc::favor`),",
            plan.f, plan.dk
        ));
    } else {
        extra_args.push(quote!(None::<&#proj_ty>));
        step_args.push(quote!(None::<&#proj_ty>));
    }
    let axes = if bnhd { "(B, N, H, D)" } else { "(B, H, N, D)" };
    let fwd_doc = Literal::string(&format!(
        " Whole sequence (prefill/training) with the chunkwise-parallel fused kernel: q, k {axes} \
         with D = {}, v {axes} with D = {},{extra_docs} returns the output, shaped like v.",
        plan.dk, plan.dv
    ));
    // Softmax attention has no recurrent state: `forward` only (DESIGN §4).
    let softmax = plan.softmax.is_some();
    let fws_vis = if softmax { quote!() } else { quote!(pub) };
    let fws_doc = if softmax {
        quote!(#[doc = " The tiled softmax kernel (the state it returns is unused)."])
    } else {
        quote!(#[doc = " As `forward`, from an initial state (`None`: zeros), also returning the final state."])
    };
    // `step` on the contract's `State`, and `decode_step` on a `DecodeState` (owned buffers,
    // updated in place): the same arguments and the same runtime function.
    let step_fn = |name: &str, doc: &str, state_ty: &TokenStream| {
        let name = format_ident!("{}", name);
        quote! {
            #[doc = #doc]
            pub fn #name<B: #p::Dim, H: #p::Dim>(
                state: &mut #state_ty,
                q_t: &#p::Tensor<(B, H, #p::Const<#dk>), f32, #p::Cpu>,
                k_t: &#p::Tensor<(B, H, #p::Const<#dk>), f32, #p::Cpu>,
                v_t: &#p::Tensor<(B, H, #p::Const<#dv>), f32, #p::Cpu>,
                #(#step_params,)*
            ) -> ::core::result::Result<#p::Tensor<(B, H, #p::Const<#dv>), f32, #p::Cpu>, ::attnc::Error> {
                let (b, h, _) = *#p::HasShape::shape(q_t);
                let out = #p::step::<#kernel, _, _, _, _, _>(
                    &#signature, state, q_t, k_t, v_t, #(#step_args,)*
                )?;
                #p::output_tensor(q_t, out, (b, h, #p::Const::<#dv>))
            }
        }
    };
    let step = if softmax {
        quote!()
    } else {
        let step = step_fn(
            "step",
            " One token of autoregressive decoding (the recurrent form): q_t, k_t (B, H, DK), \
             v_t (B, H, DV), then the per-token scalars as (B, H) tensors (and FAVOR+'s \
             projection, the one `forward` took); updates `state` and returns o_t (B, H, DV).",
            &state_ty,
        );
        let decode = step_fn(
            "decode_step",
            " `step` on an `attnc::DecodeState`, whose buffers the kernel updates in place: the \
             same numbers without the copies of `S` that a `State`'s dfdx tensors force (the \
             fast path for generating token by token).",
            &decode_ty,
        );
        quote!(#step #decode)
    };
    quote! {
        #[doc = #fwd_doc]
        pub fn forward<B: #p::Dim, H: #p::Dim, N: #p::Dim>(
            q: &#q_ty,
            k: &#q_ty,
            v: &#v_ty,
            #(#extra_params,)*
        ) -> ::core::result::Result<#v_ty, ::attnc::Error> {
            let (o, _) = Self::forward_with_state(q, k, v, #(#extra_names,)* None)?;
            Ok(o)
        }

        #fws_doc
        #fws_vis fn forward_with_state<B: #p::Dim, H: #p::Dim, N: #p::Dim>(
            q: &#q_ty,
            k: &#q_ty,
            v: &#v_ty,
            #(#extra_params,)*
            initial: Option<&#state_ty>,
        ) -> ::core::result::Result<(#v_ty, #state_ty), ::attnc::Error> {
            #destructure
            let (out, state) = #p::forward::<#kernel, _, _, _, _, _, _, #f, #dv>(
                &#signature, (b, h), q, k, v, #(#extra_args,)* initial,
            )?;
            let o = #p::output_tensor(q, out, #out_shape)?;
            Ok((o, state))
        }

        #step
    }
}

/// The spec as a Rust expression building an `attnc::Spec`.
fn spec_tokens(spec: &Spec) -> TokenStream {
    let s = quote!(::attnc::spec);
    let (dk, dv, chunk) = (lit(spec.head_dim), lit(spec.value_dim), lit(spec.chunk));
    let fm = match &spec.feature_map {
        FeatureMap::Identity => quote!(#s::FeatureMap::Identity),
        FeatureMap::EluPlusOne => quote!(#s::FeatureMap::EluPlusOne),
        FeatureMap::Relu => quote!(#s::FeatureMap::Relu),
        FeatureMap::SquaredRelu => quote!(#s::FeatureMap::SquaredRelu),
        FeatureMap::Sigmoid => quote!(#s::FeatureMap::Sigmoid),
        FeatureMap::Taylor2 => quote!(#s::FeatureMap::Taylor2),
        FeatureMap::Softmax => quote!(#s::FeatureMap::Softmax),
        FeatureMap::Dpfp { nu } => {
            let nu = lit(*nu);
            quote!(#s::FeatureMap::Dpfp { nu: #nu })
        }
        FeatureMap::Favor { features } => {
            let m = lit(*features);
            quote!(#s::FeatureMap::Favor { features: #m })
        }
        FeatureMap::Closure(c) => {
            let param = Literal::string(&c.param);
            let body = expr_tokens(&c.body);
            quote!(#s::FeatureMap::Closure(#s::Closure { param: ::std::string::String::from(#param), body: #body }))
        }
    };
    let mask = match spec.mask {
        Mask::Causal => quote!(#s::Mask::Causal),
        Mask::None => quote!(#s::Mask::None),
    };
    let update = match spec.update {
        Update::Additive => quote!(#s::Update::Additive),
        Update::Gated => quote!(#s::Update::Gated),
        Update::Delta => quote!(#s::Update::Delta),
        Update::GatedDelta => quote!(#s::Update::GatedDelta),
    };
    let normalize = match spec.normalize {
        Normalize::None => quote!(#s::Normalize::None),
        Normalize::Sum => quote!(#s::Normalize::Sum),
    };
    let qk_norm = match spec.qk_norm {
        QkNorm::None => quote!(#s::QkNorm::None),
        QkNorm::L2 => quote!(#s::QkNorm::L2),
    };
    let scale = match spec.scale {
        Scale::Auto => quote!(#s::Scale::Auto),
        Scale::Value(v) => {
            let v = Literal::f32_suffixed(v);
            quote!(#s::Scale::Value(#v))
        }
    };
    let layout = match spec.layout {
        Layout::Bhnd => quote!(#s::Layout::Bhnd),
        Layout::Bnhd => quote!(#s::Layout::Bnhd),
    };
    quote! {
        #s::Spec {
            head_dim: #dk,
            value_dim: #dv,
            feature_map: #fm,
            mask: #mask,
            update: #update,
            normalize: #normalize,
            qk_norm: #qk_norm,
            scale: #scale,
            chunk: #chunk,
            layout: #layout,
        }
    }
}

fn expr_tokens(e: &Expr) -> TokenStream {
    let s = quote!(::attnc::spec);
    let boxed = |e: &Expr| {
        let t = expr_tokens(e);
        quote!(::std::boxed::Box::new(#t))
    };
    match e {
        Expr::Var => quote!(#s::Expr::Var),
        Expr::Lit(v) => {
            let v = Literal::f32_suffixed(*v);
            quote!(#s::Expr::Lit(#v))
        }
        Expr::Neg(a) => {
            let a = boxed(a);
            quote!(#s::Expr::Neg(#a))
        }
        Expr::Binary(op, a, b) => {
            let op = match op {
                BinOp::Add => quote!(#s::BinOp::Add),
                BinOp::Sub => quote!(#s::BinOp::Sub),
                BinOp::Mul => quote!(#s::BinOp::Mul),
                BinOp::Div => quote!(#s::BinOp::Div),
            };
            let (a, b) = (boxed(a), boxed(b));
            quote!(#s::Expr::Binary(#op, #a, #b))
        }
        Expr::Unary(f, a) => {
            let f = match f {
                UnaryFn::Exp => quote!(#s::UnaryFn::Exp),
                UnaryFn::Ln => quote!(#s::UnaryFn::Ln),
                UnaryFn::Sqrt => quote!(#s::UnaryFn::Sqrt),
                UnaryFn::Abs => quote!(#s::UnaryFn::Abs),
                UnaryFn::Tanh => quote!(#s::UnaryFn::Tanh),
            };
            let a = boxed(a);
            quote!(#s::Expr::Unary(#f, #a))
        }
        Expr::Binary2(f, a, b) => {
            let f = match f {
                BinaryFn::Max => quote!(#s::BinaryFn::Max),
                BinaryFn::Min => quote!(#s::BinaryFn::Min),
                BinaryFn::Powf => quote!(#s::BinaryFn::Powf),
            };
            let (a, b) = (boxed(a), boxed(b));
            quote!(#s::Expr::Binary2(#f, #a, #b))
        }
        Expr::Powi(a, n) => {
            let a = boxed(a);
            let n = Literal::i32_suffixed(*n);
            quote!(#s::Expr::Powi(#a, #n))
        }
        Expr::If {
            cond,
            then,
            otherwise,
        } => {
            let op = match cond.op {
                CmpOp::Lt => quote!(#s::CmpOp::Lt),
                CmpOp::Le => quote!(#s::CmpOp::Le),
                CmpOp::Gt => quote!(#s::CmpOp::Gt),
                CmpOp::Ge => quote!(#s::CmpOp::Ge),
                CmpOp::Eq => quote!(#s::CmpOp::Eq),
                CmpOp::Ne => quote!(#s::CmpOp::Ne),
            };
            let (l, r) = (expr_tokens(&cond.lhs), expr_tokens(&cond.rhs));
            let (t, o) = (boxed(then), boxed(otherwise));
            quote!(#s::Expr::If {
                cond: ::std::boxed::Box::new(#s::Cond { op: #op, lhs: #l, rhs: #r }),
                then: #t,
                otherwise: #o,
            })
        }
    }
}

/// `forward_cuda`, `forward_with_state_cuda` and `step_cuda`: the CPU entry points' siblings on
/// attnc's device tensors, same argument order.
fn emit_cuda_methods(spec: &Spec, plan: &Plan) -> TokenStream {
    let p = quote!(::attnc::__private);
    let (dk, dv, f) = (lit(plan.dk), lit(plan.dv), lit(plan.f));
    let bnhd = spec.layout == Layout::Bnhd;
    let (tok_k, tok_v, per_tok, destructure) = if bnhd {
        (
            quote!((B, N, H, #p::Const<#dk>)),
            quote!((B, N, H, #p::Const<#dv>)),
            quote!((B, N, H)),
            quote!(let (b, _, h, _) = *q.shape();),
        )
    } else {
        (
            quote!((B, H, N, #p::Const<#dk>)),
            quote!((B, H, N, #p::Const<#dv>)),
            quote!((B, H, N)),
            quote!(let (b, h, _, _) = *q.shape();),
        )
    };
    let dev = |shape: TokenStream| quote!(#p::CudaTensor<#shape>);
    let (q_ty, v_ty, s_ty) = (dev(tok_k), dev(tok_v), dev(per_tok.clone()));
    let head_ty = dev(quote!((B, H)));
    let state_ty = quote!(::attnc::CudaState<B, H, #f, #dv>);
    let mut params = Vec::new();
    let mut names = Vec::new();
    let mut args = Vec::new();
    let mut step_params = Vec::new();
    let mut step_args = Vec::new();
    for (used, name, step_name) in [
        (plan.uses_beta, "beta", "beta_t"),
        (plan.uses_gates, "g", "g_t"),
    ] {
        let (id, sid) = (format_ident!("{}", name), format_ident!("{}", step_name));
        if used {
            params.push(quote!(#id: &#s_ty));
            names.push(quote!(#id));
            args.push(quote!(Some(#id)));
            step_params.push(quote!(#sid: &#head_ty));
            step_args.push(quote!(Some(#sid)));
        } else {
            args.push(quote!(None::<&#s_ty>));
            step_args.push(quote!(None::<&#head_ty>));
        }
    }
    let proj_ty = dev(quote!((#p::Const<#f>, #p::Const<#dk>)));
    if plan.uses_projection {
        params.push(quote!(proj: &#proj_ty));
        names.push(quote!(proj));
        args.push(quote!(Some(proj)));
        step_params.push(quote!(proj: &#proj_ty));
        step_args.push(quote!(Some(proj)));
    } else {
        args.push(quote!(None::<&#proj_ty>));
        step_args.push(quote!(None::<&#proj_ty>));
    }
    let softmax = plan.softmax.is_some();
    let fws_vis = if softmax { quote!() } else { quote!(pub) };
    let step = if softmax {
        quote!()
    } else {
        quote! {
            /// `step` on the GPU: one token of decoding, `state` updated on the device.
            pub fn step_cuda<B: #p::Dim, H: #p::Dim>(
                state: &mut #state_ty,
                q_t: &#p::CudaTensor<(B, H, #p::Const<#dk>)>,
                k_t: &#p::CudaTensor<(B, H, #p::Const<#dk>)>,
                v_t: &#p::CudaTensor<(B, H, #p::Const<#dv>)>,
                #(#step_params,)*
            ) -> ::core::result::Result<#p::CudaTensor<(B, H, #p::Const<#dv>)>, ::attnc::Error> {
                #p::step_cuda::<_, _, _, _, _, _, #f, #dv>(
                    &Self::CUDA_LAUNCH, Self::CUDA_SOURCE, state, q_t, k_t, v_t, #(#step_args,)*
                )
            }
        }
    };
    quote! {
        /// `forward` on the GPU: the same computation on attnc's device tensors
        /// (`CudaDevice::upload` / `CudaTensor::download` convert from and to dfdx).
        pub fn forward_cuda<B: #p::Dim, H: #p::Dim, N: #p::Dim>(
            q: &#q_ty,
            k: &#q_ty,
            v: &#v_ty,
            #(#params,)*
        ) -> ::core::result::Result<#v_ty, ::attnc::Error> {
            let (o, _) = Self::forward_with_state_cuda(q, k, v, #(#names,)* None)?;
            Ok(o)
        }

        /// `forward_with_state` on the GPU.
        #fws_vis fn forward_with_state_cuda<B: #p::Dim, H: #p::Dim, N: #p::Dim>(
            q: &#q_ty,
            k: &#q_ty,
            v: &#v_ty,
            #(#params,)*
            initial: Option<&#state_ty>,
        ) -> ::core::result::Result<(#v_ty, #state_ty), ::attnc::Error> {
            #destructure
            #p::forward_cuda::<_, _, _, _, _, _, #f, #dv>(
                &Self::CUDA_LAUNCH, Self::CUDA_SOURCE, (b, h), q, k, v, #(#args,)* initial,
            )
        }

        #step
    }
}
