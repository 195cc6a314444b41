//! The entry points of a spec with systems (`update = momentum(..)`, `short_conv = w`,
//! `rpe = toeplitz`): thin calls of the runtime's `systems` module. The spec's chunk program
//! without its systems (its *base*) is generated as usual, behind a private struct whose
//! entry points these call (`short_conv` alone) or whose feature map they apply.
//!
//! Arguments, in order: q, k, v, then `beta`, `g` (as the base update takes them), the
//! convolution weights `conv_q`, `conv_k` (H, DK, w) and `conv_v` (H, DV, w) for `short_conv`,
//! FAVOR+'s projection, and the log-weights `bias` (H, 2N - 1) for `rpe`.

use crate::abi::{Layout, Signature};
use crate::cpu::lit;
use crate::spec::{Rpe, Spec};
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};

fn private() -> TokenStream {
    quote!(::attnc::__private)
}

/// One argument: its name in `forward`, in `step`, its tape, its types.
struct Arg {
    name: Ident,
    step_name: Ident,
    tape: Ident,
    /// Shape in `forward`.
    shape: TokenStream,
    /// Shape in `step` (`None`: not a `step` argument).
    step_shape: Option<TokenStream>,
    /// Where the runtime takes it.
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Q,
    K,
    V,
    Beta,
    Gate,
    Conv(usize),
    Proj,
    Bias,
}

/// The arguments the spec takes, in order.
fn args(spec: &Spec, sig: &Signature) -> Vec<Arg> {
    let p = private();
    let h = match sig.heads {
        Some(h) => {
            let h = lit(h);
            quote!(#p::Const<#h>)
        }
        None => quote!(H),
    };
    let (dk, dv, f) = (lit(sig.dk), lit(sig.dv), lit(sig.f));
    let bnhd = sig.layout == Layout::Bnhd;
    let tokens = |d: &TokenStream| match bnhd {
        true => quote!((B, N, #h, #p::Const<#d>)),
        false => quote!((B, #h, N, #p::Const<#d>)),
    };
    let scalars = match bnhd {
        true => quote!((B, N, #h)),
        false => quote!((B, #h, N)),
    };
    let mut out = Vec::new();
    let mut push = |name: &str, step: &str, tape: &str, shape, step_shape, kind| {
        out.push(Arg {
            name: format_ident!("{}", name),
            step_name: format_ident!("{}", step),
            tape: format_ident!("{}", tape),
            shape,
            step_shape,
            kind,
        })
    };
    push(
        "q",
        "q_t",
        "T",
        tokens(&dk),
        Some(quote!((B, #h, #p::Const<#dk>))),
        Kind::Q,
    );
    push(
        "k",
        "k_t",
        "Tk",
        tokens(&dk),
        Some(quote!((B, #h, #p::Const<#dk>))),
        Kind::K,
    );
    push(
        "v",
        "v_t",
        "Tv",
        tokens(&dv),
        Some(quote!((B, #h, #p::Const<#dv>))),
        Kind::V,
    );
    if sig.uses_beta {
        push(
            "beta",
            "beta_t",
            "Tb",
            scalars.clone(),
            Some(quote!((B, #h))),
            Kind::Beta,
        );
    }
    if sig.uses_gates {
        push(
            "g",
            "g_t",
            "Tg",
            scalars.clone(),
            Some(quote!((B, #h))),
            Kind::Gate,
        );
    }
    if let Some(w) = spec.short_conv {
        let w = lit(w);
        let wk = quote!((#h, #p::Const<#dk>, #p::Const<#w>));
        let wv = quote!((#h, #p::Const<#dv>, #p::Const<#w>));
        push(
            "conv_q",
            "conv_q",
            "Tcq",
            wk.clone(),
            Some(wk.clone()),
            Kind::Conv(0),
        );
        push(
            "conv_k",
            "conv_k",
            "Tck",
            wk.clone(),
            Some(wk),
            Kind::Conv(1),
        );
        push(
            "conv_v",
            "conv_v",
            "Tcv",
            wv.clone(),
            Some(wv),
            Kind::Conv(2),
        );
    }
    if sig.uses_projection {
        let pr = quote!((#p::Const<#f>, #p::Const<#dk>));
        push("proj", "proj", "Tp", pr.clone(), Some(pr), Kind::Proj);
    }
    if spec.rpe == Rpe::Toeplitz {
        push("bias", "bias", "Tr", quote!((#h, usize)), None, Kind::Bias);
    }
    out
}

/// `name: Tensor<shape, f32, Cpu, Tape>` for every argument.
fn owned_params(args: &[Arg]) -> Vec<TokenStream> {
    let p = private();
    args.iter()
        .map(|a| {
            let (n, s, t) = (&a.name, &a.shape, &a.tape);
            quote!(#n: #p::Tensor<#s, f32, #p::Cpu, #t>)
        })
        .collect()
}

/// The where clause: q's tape merges q's group (k, v, per-token scalars, projection, bias);
/// k's and v's merge their convolution weights' (the convolution output carries them).
fn bounds(args: &[Arg]) -> TokenStream {
    let p = private();
    let tape = |k: Kind| args.iter().find(|a| a.kind == k).map(|a| a.tape.clone());
    let merged_into_q: Vec<Ident> = args
        .iter()
        .filter(|a| !matches!(a.kind, Kind::Q | Kind::Conv(1) | Kind::Conv(2)))
        .map(|a| a.tape.clone())
        .collect();
    let conv_k = tape(Kind::Conv(1)).map(|t| quote!(+ #p::Merge<#t>));
    let conv_v = tape(Kind::Conv(2)).map(|t| quote!(+ #p::Merge<#t>));
    let others: Vec<&Ident> = args
        .iter()
        .filter(|a| !matches!(a.kind, Kind::Q | Kind::K | Kind::V))
        .map(|a| &a.tape)
        .collect();
    quote! {
        where
            T: #p::Tape<f32, #p::Cpu> #(+ #p::Merge<#merged_into_q>)*,
            Tk: #p::Tape<f32, #p::Cpu> #conv_k,
            Tv: #p::Tape<f32, #p::Cpu> #conv_v,
            #(#others: #p::Tape<f32, #p::Cpu>,)*
    }
}

/// The generated entry points of a spec with systems. `base` is the private struct of the
/// spec's chunk program, `kernel` its generated kernel.
pub fn cpu_methods(spec: &Spec, sig: &Signature, base: &Ident, kernel: &Ident) -> TokenStream {
    let p = private();
    let args = args(spec, sig);
    let params = owned_params(&args);
    let tapes: Vec<&Ident> = args.iter().map(|a| &a.tape).collect();
    let bounds = bounds(&args);
    let hp = match sig.heads {
        Some(_) => quote!(),
        None => quote!(H: #p::Dim,),
    };
    let h_ty = match sig.heads {
        Some(h) => {
            let h = lit(h);
            quote!(#p::Const<#h>)
        }
        None => quote!(H),
    };
    let (f, dk, dv) = (lit(sig.f), lit(sig.dk), lit(sig.dv));
    let out_shape = args
        .iter()
        .find(|a| a.kind == Kind::V)
        .map(|a| a.shape.clone());
    let out_ty = quote!(#p::Tensor<#out_shape, f32, #p::Cpu, T>);
    let state_ty = quote!(::attnc::ExtState<B, #h_ty, #f, #dk, #dv>);
    let names = |keep: &dyn Fn(Kind) -> bool| -> Vec<Ident> {
        args.iter()
            .filter(|a| keep(a.kind))
            .map(|a| a.name.clone())
            .collect()
    };
    let conv = spec.short_conv.is_some();
    let convolve = if conv {
        quote! {
            let ((q, k, v), tails) = #p::systems::conv3::<_, _, _, _, _, _, _, _, _, _, _, _, #f, #dk, #dv>(
                spec, (q, k, v), (conv_q, conv_k, conv_v), initial,
            )?;
        }
    } else {
        quote!(let tails: [::std::vec::Vec<f32>; 3] = ::core::default::Default::default();)
    };
    let destructure = if sig.layout == Layout::Bnhd {
        quote!(let (b, _, h, _) = *#p::HasShape::shape(&q);)
    } else {
        quote!(let (b, h, _, _) = *#p::HasShape::shape(&q);)
    };
    let all: Vec<Ident> = names(&|_| true);
    let sig_tokens = quote!(#sig);
    if spec.rpe == Rpe::Toeplitz {
        let step_err = quote! {
            /// Not available: a spec with `rpe = toeplitz` has no recurrent step (decoding with a
            /// general Toeplitz weight needs every past key). Calling it is a compile error that
            /// says so; call `forward` on the whole prefix instead.
            pub fn step<St, Q, K, V>(
                _state: &mut St, _q_t: Q, _k_t: K, _v_t: V,
            ) -> ::core::result::Result<(), ::attnc::Error>
            where
                St: #p::systems::ToeplitzHasNoStep,
            {
                ::core::result::Result::Err(#p::systems::rpe_has_no_step())
            }
        };
        // rpe has no state: its convolution starts from zero tails.
        let convolve = match conv {
            true => quote! {
                let initial: Option<&#state_ty> = None;
                let ((q, k, v), _) = #p::systems::conv3::<_, _, _, _, _, _, _, _, _, _, _, _, #f, #dk, #dv>(
                    spec, (q, k, v), (conv_q, conv_k, conv_v), initial,
                )?;
            },
            false => quote!(),
        };
        return quote! {
            /// Whole sequence with the FFT kernel: q, k, v, then the convolution weights
            /// (`short_conv`) and `bias`, the per-offset log-weights (H, 2N - 1) with
            /// `bias[h, (s - t) + N - 1]` weighting the score of query t and key s by
            /// `exp(bias)`. Tensors by value with their tapes, as every `forward`; the
            /// output carries q's tape merged with the others'.
            pub fn forward<B: #p::Dim, #hp N: #p::Dim, #(#tapes),*>(
                #(#params,)*
            ) -> ::core::result::Result<#out_ty, ::attnc::Error>
            #bounds
            {
                let spec = Self::spec();
                #convolve
                #p::systems::rpe_forward::<#kernel, _, _, _, _, _, _, _>(spec, q, k, v, bias)
            }

            #step_err
        };
    }
    let run = if spec.momentum.is_some() {
        quote! {
            #destructure
            #p::systems::momentum_forward::<#kernel, _, _, _, _, _, _, _, #f, #dk, #dv>(
                spec, &#sig_tokens, (b, h), q, k, v, initial, tails,
            )
        }
    } else {
        let base_args = names(&|k| {
            matches!(
                k,
                Kind::Q | Kind::K | Kind::V | Kind::Beta | Kind::Gate | Kind::Proj
            )
        });
        quote! {
            let base_initial = initial.map(|s| s.base());
            let (o, state) = #base::forward_with_state(#(#base_args,)* base_initial.as_ref())?;
            Ok((o, #p::systems::with_tails::<_, _, #f, #dk, #dv>(spec, state, tails)?))
        }
    };
    // `short_conv` without momentum, when no tape records: the convolution runs on the copies
    // the chunk program reads anyway (`systems::conv_forward`), no tensor in between.
    let fused = if conv && spec.momentum.is_none() {
        let untaped: Vec<&Ident> = args.iter().skip(1).map(|a| &a.name).collect();
        // `Some(&name)` for an argument the spec takes, else a typed `None`.
        let opt = |k: Kind, none: TokenStream| match args.iter().find(|a| a.kind == k) {
            Some(a) => {
                let n = &a.name;
                quote!(Some(&#n))
            }
            None => quote!(None::<&#p::Tensor<#none, f32, #p::Cpu>>),
        };
        let (beta, g, proj) = (
            opt(Kind::Beta, quote!((usize, usize, usize))),
            opt(Kind::Gate, quote!((usize, usize, usize))),
            opt(Kind::Proj, quote!((usize, usize))),
        );
        quote! {
            let traced = #(<#tapes as #p::Tape<f32, #p::Cpu>>::OWNS_TAPE)||*;
            if !traced {
                let (q, tape) = #p::SplitTape::split_tape(q);
                #(let (#untaped, _) = #p::SplitTape::split_tape(#untaped);)*
                let (out, state) = #p::systems::conv_forward::<#kernel, _, _, _, _, _, _, _, _, #f, #dk, #dv>(
                    spec, &#sig_tokens, (&q, &k, &v), (#beta, #g), (&conv_q, &conv_k, &conv_v), #proj, initial,
                )?;
                let o = #p::output_tensor(&q, out, *#p::HasShape::shape(&v))?;
                return Ok((#p::PutTape::put_tape(o, tape), state));
            }
        }
    } else {
        quote!()
    };
    let step = step_method(spec, sig, &args, kernel, &state_ty, &hp);
    quote! {
        /// Whole sequence (prefill/training): q, k, v, then the spec's extra inputs in order
        /// (see the struct's docs). Tensors by value with their tapes; the output carries q's
        /// tape merged with the others'.
        pub fn forward<B: #p::Dim, #hp N: #p::Dim, #(#tapes),*>(
            #(#params,)*
        ) -> ::core::result::Result<#out_ty, ::attnc::Error>
        #bounds
        {
            let (o, _) = Self::forward_with_state(#(#all,)* None)?;
            Ok(o)
        }

        /// As `forward`, from an initial `ExtState` (`None`: zeros), also returning the final
        /// one (S, z, and what the spec's systems carry: the momentum, the convolution tails).
        pub fn forward_with_state<B: #p::Dim, #hp N: #p::Dim, #(#tapes),*>(
            #(#params,)*
            initial: Option<&#state_ty>,
        ) -> ::core::result::Result<(#out_ty, #state_ty), ::attnc::Error>
        #bounds
        {
            let spec = Self::spec();
            #fused
            #convolve
            #run
        }

        /// An all-zero `ExtState` for this spec (what `forward` starts from).
        pub fn zero_state<B: #p::Dim, #hp>(
            batch: B,
            heads: #h_ty,
        ) -> ::core::result::Result<#state_ty, ::attnc::Error> {
            ::attnc::ExtState::zeros(batch, heads, Self::spec())
        }

        #step
    }
}

/// `step` on an `ExtState`: q_t, k_t, v_t, then the per-token scalars, the convolution
/// weights and the projection, by reference.
fn step_method(
    spec: &Spec,
    sig: &Signature,
    args: &[Arg],
    kernel: &Ident,
    state_ty: &TokenStream,
    hp: &TokenStream,
) -> TokenStream {
    let p = private();
    let step_args: Vec<&Arg> = args.iter().filter(|a| a.step_shape.is_some()).collect();
    let params: Vec<TokenStream> = step_args
        .iter()
        .map(|a| {
            let (n, s) = (&a.step_name, a.step_shape.clone());
            quote!(#n: &#p::Tensor<#s, f32, #p::Cpu>)
        })
        .collect();
    let find = |k: Kind| {
        step_args
            .iter()
            .find(|a| a.kind == k)
            .map(|a| a.step_name.clone())
    };
    let opt = |k: Kind| match find(k) {
        Some(n) => quote!(Some(#n)),
        None => quote!(None),
    };
    let (beta, g, proj) = (opt(Kind::Beta), opt(Kind::Gate), opt(Kind::Proj));
    let conv = if spec.short_conv.is_some() {
        quote!(Some((conv_q, conv_k, conv_v)))
    } else {
        quote!(None)
    };
    let (f, dk, dv) = (lit(sig.f), lit(sig.dk), lit(sig.dv));
    let h_ty = match sig.heads {
        Some(h) => {
            let h = lit(h);
            quote!(#p::Const<#h>)
        }
        None => quote!(H),
    };
    let none3 = quote!(#p::Tensor<(usize, usize, usize), f32, #p::Cpu>);
    let none2 = quote!(#p::Tensor<(usize, usize), f32, #p::Cpu>);
    let beta = if find(Kind::Beta).is_some() {
        beta
    } else {
        quote!(None::<&#none2>)
    };
    let g = if find(Kind::Gate).is_some() {
        g
    } else {
        quote!(None::<&#none2>)
    };
    let proj = if find(Kind::Proj).is_some() {
        proj
    } else {
        quote!(None::<&#none2>)
    };
    let conv = if spec.short_conv.is_some() {
        conv
    } else {
        quote!(None::<(&#none3, &#none3, &#none3)>)
    };
    let decode_ty = quote!(::attnc::ExtDecodeState<B, #h_ty, #f, #dk, #dv>);
    let one = |name: &str, doc: &str, st: &TokenStream| {
        let name = format_ident!("{}", name);
        quote! {
            #[doc = #doc]
            pub fn #name<B: #p::Dim, #hp>(
                state: &mut #st,
                #(#params,)*
            ) -> ::core::result::Result<#p::Tensor<(B, #h_ty, #p::Const<#dv>), f32, #p::Cpu>, ::attnc::Error> {
                let (b, h, _) = *#p::HasShape::shape(q_t);
                let extras = #p::systems::StepExtras { beta: #beta, g: #g, conv: #conv, proj: #proj };
                let out = #p::systems::systems_step::<#kernel, _, _, _, _, _, _, _>(
                    Self::spec(), &#sig, state, (q_t, k_t, v_t), extras,
                )?;
                #p::output_tensor(q_t, out, (b, h, #p::Const::<#dv>))
            }
        }
    };
    let step = one(
        "step",
        " One token of decoding (the recurrent form) on an `ExtState`: q_t, k_t (B, H, DK), \
         v_t (B, H, DV), then the per-token scalars (B, H), the convolution weights and the \
         projection; updates `state` (with the convolution's tail) and returns o_t.",
        state_ty,
    );
    let decode = one(
        "decode_step",
        " `step` on an `ExtDecodeState`, whose buffers are updated in place (no copies of the \
         state out of dfdx tensors and back per token).",
        &decode_ty,
    );
    quote! {
        #step
        #decode

        /// An all-zero `ExtDecodeState` for this spec, for `decode_step`
        /// (`ExtDecodeState::from_state` continues from `forward_with_state`'s).
        pub fn zero_decode_state<B: #p::Dim, #hp>(
            batch: B,
            heads: #h_ty,
        ) -> ::core::result::Result<#decode_ty, ::attnc::Error> {
            ::attnc::ExtDecodeState::zeros(batch, heads, Self::spec())
        }
    }
}

/// `forward_cuda` for a spec with systems, with the CPU `forward`'s arguments as attnc's device
/// tensors: it returns `Error::Unsupported` (the CUDA emitter does not lower the systems yet),
/// so code written for both devices compiles and fails cleanly at run time.
pub fn cuda_methods(spec: &Spec, sig: &Signature) -> TokenStream {
    let p = private();
    let args = args(spec, sig);
    let hp = match sig.heads {
        Some(_) => quote!(),
        None => quote!(H: #p::Dim,),
    };
    let out_shape = args
        .iter()
        .find(|a| a.kind == Kind::V)
        .map(|a| a.shape.clone());
    if spec.rpe == Rpe::Toeplitz {
        let params: Vec<TokenStream> = args
            .iter()
            .map(|a| {
                let (n, s) = (&a.name, &a.shape);
                quote!(#n: &#p::CudaTensor<#s>)
            })
            .collect();
        let conv = match spec.short_conv {
            Some(_) => quote!(Some((conv_q, conv_k, conv_v))),
            None => {
                let t = quote!(&#p::CudaTensor<(usize, usize, usize)>);
                quote!(None::<(#t, #t, #t)>)
            }
        };
        return quote! {
            /// `forward` on the GPU: the FFT kernel on attnc's device tensors, arguments in
            /// `forward`'s order (`CudaDevice::upload` / `CudaTensor::download` convert from
            /// and to dfdx).
            pub fn forward_cuda<B: #p::Dim, #hp N: #p::Dim>(
                #(#params,)*
            ) -> ::core::result::Result<#p::CudaTensor<#out_shape>, ::attnc::Error> {
                #p::rpe_forward_cuda(
                    &Self::CUDA_LAUNCH, Self::CUDA_SOURCE, (q, k, v), #conv, bias,
                )
            }
        };
    }
    let h_ty = match sig.heads {
        Some(h) => {
            let h = lit(h);
            quote!(#p::Const<#h>)
        }
        None => quote!(H),
    };
    let (f, dk, dv) = (lit(sig.f), lit(sig.dk), lit(sig.dv));
    let state_ty = quote!(#p::CudaExtState<B, #h_ty, #f, #dk, #dv>);
    let params = |step: bool| -> Vec<TokenStream> {
        args.iter()
            .filter_map(|a| {
                let (n, s) = match step {
                    true => (&a.step_name, a.step_shape.as_ref()?),
                    false => (&a.name, &a.shape),
                };
                Some(quote!(#n: &#p::CudaTensor<#s>))
            })
            .collect()
    };
    let name_of = |k: Kind, step: bool| {
        args.iter().find(|a| a.kind == k).map(|a| {
            if step {
                a.step_name.clone()
            } else {
                a.name.clone()
            }
        })
    };
    // `Some(name)` for an argument the spec takes, else a typed `None`.
    let opt = |k: Kind, step: bool, none: TokenStream| match name_of(k, step) {
        Some(n) => quote!(Some(#n)),
        None => quote!(None::<&#p::CudaTensor<#none>>),
    };
    let extras = |step: bool| {
        let scalars = match step {
            true => quote!((usize, usize)),
            false => quote!((usize, usize, usize)),
        };
        let (beta, g, proj) = (
            opt(Kind::Beta, step, scalars.clone()),
            opt(Kind::Gate, step, scalars),
            opt(Kind::Proj, step, quote!((usize, usize))),
        );
        quote!((#beta, #g, #proj))
    };
    let conv = match spec.short_conv {
        Some(_) => quote!(Some((conv_q, conv_k, conv_v))),
        None => {
            let t = quote!(&#p::CudaTensor<(usize, usize, usize)>);
            quote!(None::<(#t, #t, #t)>)
        }
    };
    let (fwd_params, step_params) = (params(false), params(true));
    let (fwd_extras, step_extras) = (extras(false), extras(true));
    let names: Vec<&Ident> = args.iter().map(|a| &a.name).collect();
    let destructure = if sig.layout == Layout::Bnhd {
        quote!(let (b, _, h, _) = *q.shape();)
    } else {
        quote!(let (b, h, _, _) = *q.shape();)
    };
    let step_out = quote!(#p::CudaTensor<(B, #h_ty, #p::Const<#dv>)>);
    quote! {
        /// `forward` on the GPU: the same computation on attnc's device tensors, arguments in
        /// `forward`'s order (`CudaDevice::upload` / `CudaTensor::download` convert from and to
        /// dfdx).
        pub fn forward_cuda<B: #p::Dim, #hp N: #p::Dim>(
            #(#fwd_params,)*
        ) -> ::core::result::Result<#p::CudaTensor<#out_shape>, ::attnc::Error> {
            let (o, _) = Self::forward_with_state_cuda(#(#names,)* None)?;
            Ok(o)
        }

        /// `forward_with_state` on the GPU: as `forward_cuda`, from an initial state (`None`:
        /// zeros; upload one with `CudaDevice::upload_ext_state`), also returning the final
        /// state.
        pub fn forward_with_state_cuda<B: #p::Dim, #hp N: #p::Dim>(
            #(#fwd_params,)*
            initial: Option<&#state_ty>,
        ) -> ::core::result::Result<(#p::CudaTensor<#out_shape>, #state_ty), ::attnc::Error> {
            #destructure
            #p::systems_forward_cuda::<_, _, _, _, _, _, _, _, #f, #dk, #dv>(
                &Self::CUDA_LAUNCH, Self::CUDA_SOURCE, (b, h), (q, k, v), #fwd_extras, #conv,
                initial,
            )
        }

        /// `step` on the GPU: one token of decoding, `state` updated on the device.
        pub fn step_cuda<B: #p::Dim, #hp>(
            state: &mut #state_ty,
            #(#step_params,)*
        ) -> ::core::result::Result<#step_out, ::attnc::Error> {
            #p::systems_step_cuda::<_, _, _, _, _, _, _, _, #f, #dk, #dv>(
                &Self::CUDA_LAUNCH, Self::CUDA_SOURCE, state, (q_t, k_t, v_t), #step_extras, #conv,
            )
        }
    }
}

/// `dfdx::nn::Module<(q, k, v, ..)>` calling `forward`.
pub fn module_impl(spec: &Spec, sig: &Signature, name: &Ident) -> TokenStream {
    let p = private();
    let args = args(spec, sig);
    let tapes: Vec<&Ident> = args.iter().map(|a| &a.tape).collect();
    let bounds = bounds(&args);
    let hp = match sig.heads {
        Some(_) => quote!(),
        None => quote!(H: #p::Dim,),
    };
    let names: Vec<&Ident> = args.iter().map(|a| &a.name).collect();
    let types: Vec<TokenStream> = args
        .iter()
        .map(|a| {
            let (s, t) = (&a.shape, &a.tape);
            quote!(#p::Tensor<#s, f32, #p::Cpu, #t>)
        })
        .collect();
    let out_shape = args
        .iter()
        .find(|a| a.kind == Kind::V)
        .map(|a| a.shape.clone());
    quote! {
        impl<B: #p::Dim, #hp N: #p::Dim, #(#tapes),*> #p::Module<(#(#types,)*)> for #name
        #bounds
        {
            type Output = #p::Tensor<#out_shape, f32, #p::Cpu, T>;
            type Error = ::attnc::Error;

            fn try_forward(
                &self,
                (#(#names,)*): (#(#types,)*),
            ) -> ::core::result::Result<Self::Output, Self::Error> {
                Self::forward(#(#names),*)
            }
        }
    }
}
