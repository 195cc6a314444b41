//! The entry points users call, from one description of the spec's arguments ([`Arg`]),
//! rendered for each device: dfdx tensors on the CPU, attnc's `CudaTensor`s on a GPU.
//!
//! The CPU `forward`s take their tensors by value, each with its own dfdx tape, as dfdx's ops
//! do (an inference caller passes clones: an `Arc` clone each); the output carries q's tape
//! merged with the others'. When that tape records, the call saves what its backward reads and
//! records one closure on it (the runtime's `train::backward`). `step`,
//! `decode_step` and the `_cuda` methods take references.

use super::examples::{example, Method};
use crate::abi::{Layout, Signature};
use crate::cpu::lit;
use proc_macro2::{Ident, Literal, TokenStream};
use quote::{format_ident, quote};

/// What an argument holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// q or k: one DK row per token.
    Keys,
    /// v: one DV row per token.
    Values,
    /// beta or g: one scalar per token.
    Scalars,
    /// FAVOR+'s projection w (F x DK), one for the whole call.
    Projection,
}

/// One argument of `forward` (and, renamed, of `step`).
pub(super) struct Arg {
    pub(super) name: &'static str,
    pub(super) step_name: &'static str,
    /// The type parameter of its dfdx tape in the by-value `forward`s.
    tape: &'static str,
    pub(super) role: Role,
    /// Whether the spec takes it (optional arguments are passed to the runtime as `Option`s).
    present: bool,
}

/// The arguments in the contract's order: q, k, v, then beta, g, the projection.
fn args(sig: &Signature) -> [Arg; 6] {
    let arg = |name, step_name, tape, role, present| Arg {
        name,
        step_name,
        tape,
        role,
        present,
    };
    [
        arg("q", "q_t", "T", Role::Keys, true),
        arg("k", "k_t", "Tk", Role::Keys, true),
        arg("v", "v_t", "Tv", Role::Values, true),
        arg("beta", "beta_t", "Tb", Role::Scalars, sig.uses_beta),
        arg("g", "g_t", "Tg", Role::Scalars, sig.uses_gates),
        arg("proj", "proj", "Tp", Role::Projection, sig.uses_projection),
    ]
}

/// The arguments the spec takes.
pub(super) fn present(sig: &Signature) -> impl Iterator<Item = Arg> {
    args(sig).into_iter().filter(|a| a.present)
}

/// Where the tensors live.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// dfdx's `Cpu`.
    Cpu,
    /// attnc's CUDA tensors.
    Cuda,
}

fn private() -> TokenStream {
    quote!(::attnc::__private)
}

/// The type of the head axis: `Const<H>` when the spec fixes it (`heads = H`), else the
/// methods' type parameter `H`.
fn heads_ty(sig: &Signature) -> TokenStream {
    let p = private();
    match sig.heads {
        Some(h) => {
            let h = lit(h);
            quote!(#p::Const<#h>)
        }
        None => quote!(H),
    }
}

/// The head axis' type parameter, `H: Dim,` (nothing when the spec fixes H).
fn heads_param(sig: &Signature) -> TokenStream {
    let p = private();
    match sig.heads {
        Some(_) => quote!(),
        None => quote!(H: #p::Dim,),
    }
}

impl Device {
    fn tensor(self, shape: TokenStream) -> TokenStream {
        let p = private();
        match self {
            Device::Cpu => quote!(#p::Tensor<#shape, f32, #p::Cpu>),
            Device::Cuda => quote!(#p::CudaTensor<#shape>),
        }
    }

    fn state(self, sig: &Signature) -> TokenStream {
        let (f, dv, h) = (lit(sig.f), lit(sig.dv), heads_ty(sig));
        match self {
            Device::Cpu => quote!(::attnc::State<B, #h, #f, #dv>),
            Device::Cuda => quote!(::attnc::CudaState<B, #h, #f, #dv>),
        }
    }
}

/// The shape of an argument (or of the output, `Role::Values`), whole sequence or one token.
fn shape(sig: &Signature, role: Role, step: bool) -> TokenStream {
    let p = private();
    let d = match role {
        Role::Keys => lit(sig.dk),
        _ => lit(sig.dv),
    };
    let tokens_first = sig.layout == Layout::Bnhd;
    let h = heads_ty(sig);
    match (role, step, tokens_first) {
        (Role::Projection, ..) => {
            let (f, dk) = (lit(sig.f), lit(sig.dk));
            quote!((#p::Const<#f>, #p::Const<#dk>))
        }
        (Role::Scalars, true, _) => quote!((B, #h)),
        (Role::Scalars, false, false) => quote!((B, #h, N)),
        (Role::Scalars, false, true) => quote!((B, N, #h)),
        (_, true, _) => quote!((B, #h, #p::Const<#d>)),
        (_, false, false) => quote!((B, #h, N, #p::Const<#d>)),
        (_, false, true) => quote!((B, N, #h, #p::Const<#d>)),
    }
}

/// How an entry point takes its tensors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// `name: &Tensor` (`step`, `decode_step`, the `_cuda` methods).
    Ref,
    /// `name: Tensor<.., Tape>`, a dfdx tape each (the CPU `forward`s).
    Owned,
}

/// The type of an argument: `&Tensor`, or (`Pass::Owned`, CPU only) a dfdx tensor with its tape.
fn arg_type(sig: &Signature, a: &Arg, device: Device, step: bool, pass: Pass) -> TokenStream {
    let p = private();
    let shape = shape(sig, a.role, step);
    match pass {
        Pass::Ref => {
            let ty = device.tensor(shape);
            quote!(&#ty)
        }
        Pass::Owned => {
            let tape = format_ident!("{}", a.tape);
            quote!(#p::Tensor<#shape, f32, #p::Cpu, #tape>)
        }
    }
}

/// Parameters (`name: type`) of the arguments the spec takes.
fn params(sig: &Signature, device: Device, step: bool, pass: Pass) -> Vec<TokenStream> {
    present(sig)
        .map(|a| {
            let name = format_ident!("{}", if step { a.step_name } else { a.name });
            let ty = arg_type(sig, &a, device, step, pass);
            quote!(#name: #ty)
        })
        .collect()
}

/// The runtime's optional arguments (beta, g, projection): `Some(name)` (`Some(&name)` for
/// owned tensors) or a typed `None`.
fn optional_args(sig: &Signature, device: Device, step: bool, pass: Pass) -> Vec<TokenStream> {
    args(sig)
        .iter()
        .filter(|a| !matches!(a.role, Role::Keys | Role::Values))
        .map(|a| {
            let name = format_ident!("{}", if step { a.step_name } else { a.name });
            let ty = device.tensor(shape(sig, a.role, step));
            match (a.present, pass) {
                (true, Pass::Ref) => quote!(Some(#name)),
                (true, Pass::Owned) => quote!(Some(&#name)),
                (false, _) => quote!(None::<&#ty>),
            }
        })
        .collect()
}

/// The tape type parameters of the by-value `forward`s: `T` (q's, the output's), `Tk`, `Tv`,
/// then `Tb`, `Tg`, `Tp` as the spec takes beta, g, the projection.
fn tapes(sig: &Signature) -> Vec<Ident> {
    present(sig).map(|a| format_ident!("{}", a.tape)).collect()
}

/// The where clause over the tapes: each is a dfdx `Tape`, and q's merges all the others.
fn tape_bounds(sig: &Signature) -> TokenStream {
    let p = private();
    let tapes = tapes(sig);
    let others = &tapes[1..];
    quote! {
        where
            T: #p::Tape<f32, #p::Cpu> #(+ #p::Merge<#others>)*,
            #(#others: #p::Tape<f32, #p::Cpu>,)*
    }
}

/// Splits each argument from its tape and merges the tapes into `tape`, q's first: the
/// arguments are then untaped tensors (the same `Arc`s, no copies) for the runtime. When the
/// tape records (`OwnedTape`), each input first goes through dfdx's traced `contiguous` (free
/// for standard layouts), so the backward reads and writes buffers in logical order and dfdx
/// routes the gradients of permuted or broadcast views back through its own op.
fn untape(sig: &Signature) -> TokenStream {
    let p = private();
    let names: Vec<Ident> = present(sig).map(|a| format_ident!("{}", a.name)).collect();
    let split: Vec<TokenStream> = present(sig)
        .skip(1)
        .map(|a| {
            let (name, tape) = (format_ident!("{}", a.name), format_ident!("{}", a.tape));
            quote! {
                let (#name, t) = #p::SplitTape::split_tape(#name);
                let tape = <T as #p::Merge<#tape>>::merge(tape, t);
            }
        })
        .collect();
    quote! {
        let traced = <T as #p::Tape<f32, #p::Cpu>>::OWNS_TAPE;
        #(
            let #names = if traced { #p::contiguous(#names)? } else { #names };
        )*
        let (q, tape) = #p::SplitTape::split_tape(q);
        #(#split)*
    }
}

/// `Saved { .. }` of the runtime's backward: the untaped inputs, the initial state, the output
/// `o` and (`state`: linear attention) the final state.
fn saved(sig: &Signature, state: bool) -> TokenStream {
    let p = private();
    let opt = |a: &Arg| {
        let name = format_ident!("{}", a.name);
        let ty = Device::Cpu.tensor(shape(sig, a.role, false));
        if a.present {
            quote!(#name: Some(#name))
        } else {
            quote!(#name: None::<#ty>)
        }
    };
    let opts: Vec<TokenStream> = args(sig)
        .iter()
        .filter(|a| !matches!(a.role, Role::Keys | Role::Values))
        .map(opt)
        .collect();
    let (initial, last) = if state {
        (quote!(initial.cloned()), quote!(Some(state.clone())))
    } else {
        (quote!(None), quote!(None))
    };
    quote! {
        #p::Saved {
            q,
            k,
            v,
            #(#opts,)*
            initial: #initial,
            out: o.clone(),
            last: #last,
        }
    }
}

/// Records the backward on the merged tape when it owns one.
fn record(sig: &Signature, kernel: &Ident, state: bool) -> TokenStream {
    let p = private();
    let saved = saved(sig, state);
    let (f, dv, h) = (lit(sig.f), lit(sig.dv), heads_ty(sig));
    quote! {
        let mut tape = tape;
        if traced {
            let saved = #saved;
            #p::Tape::<f32, #p::Cpu>::add_backward_op(&mut tape, move |grads| {
                #p::backward::<#kernel, B, #h, _, _, _, _, #f, #dv>(&#sig, Self::spec(), saved, grads)
            });
        }
    }
}

/// Names of the optional arguments the spec takes, to pass them on.
fn optional_names(sig: &Signature) -> Vec<Ident> {
    args(sig)
        .iter()
        .filter(|a| a.present && !matches!(a.role, Role::Keys | Role::Values))
        .map(|a| format_ident!("{}", a.name))
        .collect()
}

/// The extra arguments, for the docs.
fn extra_docs(sig: &Signature) -> String {
    let mut docs = String::new();
    if sig.uses_beta {
        docs.push_str(" `beta` (write strengths, in [0, 2]),");
    }
    if sig.uses_gates {
        docs.push_str(" `g` (log-decays, <= 0),");
    }
    if sig.uses_projection {
        docs.push_str(&format!(
            " `proj` (FAVOR+'s projection w, ({}, {}): see `attnc::favor`),",
            sig.f, sig.dk
        ));
    }
    docs
}

/// `forward`, `forward_with_state`, `step` and `decode_step` on the CPU.
pub fn cpu_methods(
    sig: &Signature,
    softmax: bool,
    kernel: &Ident,
    name: &Ident,
    runnable: bool,
) -> TokenStream {
    let p = private();
    let ex = |m| example(sig, name, m, runnable);
    let (ex_fwd, ex_fws) = (ex(Method::Forward), ex(Method::ForwardWithState));
    let out_shape_ty = shape(sig, Role::Values, false);
    let v_ty = quote!(#p::Tensor<#out_shape_ty, f32, #p::Cpu, T>);
    let state_ty = Device::Cpu.state(sig);
    let (params, opts, names) = (
        params(sig, Device::Cpu, false, Pass::Owned),
        optional_args(sig, Device::Cpu, false, Pass::Owned),
        optional_names(sig),
    );
    let (tapes, bounds, untape) = (tapes(sig), tape_bounds(sig), untape(sig));
    let hp = heads_param(sig);
    let (record_softmax, record_linear) = (record(sig, kernel, false), record(sig, kernel, true));
    let (f, dv) = (lit(sig.f), lit(sig.dv));
    let (destructure, out_shape) = if sig.layout == Layout::Bnhd {
        (
            quote!(let (b, n, h, _) = *#p::HasShape::shape(&q);),
            quote!((b, n, h, #p::Const::<#dv>)),
        )
    } else {
        (
            quote!(let (b, h, n, _) = *#p::HasShape::shape(&q);),
            quote!((b, h, n, #p::Const::<#dv>)),
        )
    };
    let axes = if sig.layout == Layout::Bnhd {
        "(B, N, H, D)"
    } else {
        "(B, H, N, D)"
    };
    let fwd_doc = Literal::string(&format!(
        " Whole sequence (prefill/training) with the chunkwise-parallel fused kernel: q, k {axes} \
         with D = {}, v {axes} with D = {},{} returns the output, shaped like v. The tensors are \
         taken by value, as dfdx's ops take them (pass `.clone()`s to keep them: an `Arc` \
         clone each); the output carries q's tape merged with the others'. With an `OwnedTape` \
         (`.leaky_trace()`, `.traced(grads)`, a traced dfdx op) the call records its backward: \
         `loss.backward()` then holds the gradients of every input by tensor id.",
        sig.dk,
        sig.dv,
        extra_docs(sig)
    ));
    if softmax {
        // Exact softmax attention has no recurrent state: `forward` only.
        return quote! {
            #[doc = #fwd_doc]
            ///
            #[doc = #ex_fwd]
            pub fn forward<B: #p::Dim, #hp N: #p::Dim, #(#tapes),*>(
                #(#params,)*
            ) -> ::core::result::Result<#v_ty, ::attnc::Error>
            #bounds
            {
                #untape
                #destructure
                let out = #p::forward_tiled::<#kernel, _, _>(&#sig, &q, &k, &v)?;
                let o = #p::output_tensor(&q, out, #out_shape)?;
                #record_softmax
                Ok(#p::PutTape::put_tape(o, tape))
            }
        };
    }
    let steps = cpu_steps(
        sig,
        kernel,
        [ex(Method::Step), ex(Method::DecodeStep), ex_fws.clone()],
    );
    quote! {
        #[doc = #fwd_doc]
        ///
        #[doc = #ex_fwd]
        pub fn forward<B: #p::Dim, #hp N: #p::Dim, #(#tapes),*>(
            #(#params,)*
        ) -> ::core::result::Result<#v_ty, ::attnc::Error>
        #bounds
        {
            let (o, _) = Self::forward_with_state(q, k, v, #(#names,)* None)?;
            Ok(o)
        }

        /// As `forward` (tensors by value, tapes alike), from an initial state (`None`: zeros),
        /// also returning the final state.
        ///
        #[doc = #ex_fws]
        pub fn forward_with_state<B: #p::Dim, #hp N: #p::Dim, #(#tapes),*>(
            #(#params,)*
            initial: Option<&#state_ty>,
        ) -> ::core::result::Result<(#v_ty, #state_ty), ::attnc::Error>
        #bounds
        {
            #untape
            #destructure
            let (out, state) = #p::forward::<#kernel, _, _, _, _, _, _, #f, #dv>(
                &#sig, (b, h), &q, &k, &v, #(#opts,)* initial,
            )?;
            let o = #p::output_tensor(&q, out, #out_shape)?;
            #record_linear
            Ok((#p::PutTape::put_tape(o, tape), state))
        }

        #steps
    }
}

/// `dfdx::nn::Module<(q, k, v[, beta][, g][, proj])>` for the spec, calling `forward`, so that
/// a spec composes with dfdx's layers: `MySpec.try_forward((q, k, v))`.
pub fn module_impl(sig: &Signature, name: &Ident) -> TokenStream {
    let p = private();
    let (tapes, bounds, hp) = (tapes(sig), tape_bounds(sig), heads_param(sig));
    let names: Vec<Ident> = present(sig).map(|a| format_ident!("{}", a.name)).collect();
    let types: Vec<TokenStream> = present(sig)
        .map(|a| arg_type(sig, &a, Device::Cpu, false, Pass::Owned))
        .collect();
    let out_shape = shape(sig, Role::Values, false);
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

/// `step` on the contract's `State`, and `decode_step` on a `DecodeState` (owned buffers,
/// updated in place): the same arguments and the same runtime function.
fn cpu_steps(sig: &Signature, kernel: &Ident, examples: [String; 3]) -> TokenStream {
    let p = private();
    let (f, dv) = (lit(sig.f), lit(sig.dv));
    let (params, opts) = (
        params(sig, Device::Cpu, true, Pass::Ref),
        optional_args(sig, Device::Cpu, true, Pass::Ref),
    );
    let out_ty = Device::Cpu.tensor(shape(sig, Role::Values, true));
    let (h, hp) = (heads_ty(sig), heads_param(sig));
    let one = |name: &str, doc: &str, example: &str, state_ty: TokenStream| {
        let name = format_ident!("{}", name);
        quote! {
            #[doc = #doc]
            ///
            #[doc = #example]
            pub fn #name<B: #p::Dim, #hp>(
                state: &mut #state_ty,
                #(#params,)*
            ) -> ::core::result::Result<#out_ty, ::attnc::Error> {
                let (b, h, _) = *#p::HasShape::shape(q_t);
                let out = #p::step::<#kernel, _, _, _, _, _>(
                    &#sig, state, q_t, k_t, v_t, #(#opts,)*
                )?;
                #p::output_tensor(q_t, out, (b, h, #p::Const::<#dv>))
            }
        }
    };
    let step = one(
        "step",
        " One token of autoregressive decoding (the recurrent form): q_t, k_t (B, H, DK), \
         v_t (B, H, DV), then the per-token scalars as (B, H) tensors (and FAVOR+'s \
         projection, the one `forward` took); updates `state` and returns o_t (B, H, DV).",
        &examples[0],
        quote!(::attnc::State<B, #h, #f, #dv>),
    );
    let decode = one(
        "decode_step",
        " `step` on an `attnc::DecodeState`, whose buffers the kernel updates in place: the \
         same numbers without the copies of `S` that a `State`'s dfdx tensors force (the \
         fast path for generating token by token).",
        &examples[1],
        quote!(::attnc::DecodeState<B, #h, #f, #dv>),
    );
    let normalized = sig.normalized;
    let (ex_decode, ex_fws) = (&examples[1], &examples[2]);
    quote! {
        /// An all-zero `State` for this spec (what `forward` starts from): `z` is present
        /// exactly when the spec normalises.
        ///
        #[doc = #ex_fws]
        pub fn zero_state<B: #p::Dim, #hp>(
            batch: B,
            heads: #h,
        ) -> ::core::result::Result<::attnc::State<B, #h, #f, #dv>, ::attnc::Error> {
            ::attnc::State::zeros(batch, heads, #normalized)
        }

        /// An all-zero `DecodeState` for this spec, for `decode_step`.
        ///
        #[doc = #ex_decode]
        pub fn zero_decode_state<B: #p::Dim, #hp>(
            batch: B,
            heads: #h,
        ) -> ::attnc::DecodeState<B, #h, #f, #dv> {
            ::attnc::DecodeState::zeros(batch, heads, #normalized)
        }

        #step
        #decode
    }
}

/// `forward_cuda`, `forward_with_state_cuda` and `step_cuda`: the CPU entry points' siblings on
/// attnc's device tensors, same argument order.
pub fn cuda_methods(sig: &Signature, softmax: bool, name: &Ident, runnable: bool) -> TokenStream {
    let p = private();
    let ex_cuda = example(sig, name, Method::Cuda, runnable);
    // Softmax has no state: its `forward_with_state_cuda` is private and has no example.
    let ex_state = match softmax {
        true => String::new(),
        false => example(sig, name, Method::CudaState, runnable),
    };
    let v_ty = Device::Cuda.tensor(shape(sig, Role::Values, false));
    let state_ty = Device::Cuda.state(sig);
    let (call_params, opts, names) = (
        params(sig, Device::Cuda, false, Pass::Ref),
        optional_args(sig, Device::Cuda, false, Pass::Ref),
        optional_names(sig),
    );
    let (f, dv) = (lit(sig.f), lit(sig.dv));
    let destructure = if sig.layout == Layout::Bnhd {
        quote!(let (b, _, h, _) = *q.shape();)
    } else {
        quote!(let (b, h, _, _) = *q.shape();)
    };
    let hp = heads_param(sig);
    let fws_vis = if softmax { quote!() } else { quote!(pub) };
    let step = if softmax {
        quote!()
    } else {
        let (step_params, step_opts) = (
            params(sig, Device::Cuda, true, Pass::Ref),
            optional_args(sig, Device::Cuda, true, Pass::Ref),
        );
        let out_ty = Device::Cuda.tensor(shape(sig, Role::Values, true));
        quote! {
            /// `step` on the GPU: one token of decoding, `state` updated on the device. Inputs as
            /// `step`'s, uploaded like `forward_cuda`'s.
            ///
            #[doc = #ex_state]
            pub fn step_cuda<B: #p::Dim, #hp>(
                state: &mut #state_ty,
                #(#step_params,)*
            ) -> ::core::result::Result<#out_ty, ::attnc::Error> {
                #p::step_cuda::<_, _, _, _, _, _, #f, #dv>(
                    &Self::CUDA_LAUNCH, Self::CUDA_SOURCE, state, q_t, k_t, v_t, #(#step_opts,)*
                )
            }
        }
    };
    quote! {
        /// `forward` on the GPU: the same computation on attnc's device tensors
        /// (`CudaDevice::upload` / `CudaTensor::download` convert from and to dfdx).
        ///
        #[doc = #ex_cuda]
        pub fn forward_cuda<B: #p::Dim, #hp N: #p::Dim>(
            #(#call_params,)*
        ) -> ::core::result::Result<#v_ty, ::attnc::Error> {
            let (o, _) = Self::forward_with_state_cuda(q, k, v, #(#names,)* None)?;
            Ok(o)
        }

        /// `forward_with_state` on the GPU: as `forward_cuda`, from an initial state (`None`:
        /// zeros), also returning the final state.
        ///
        #[doc = #ex_state]
        #fws_vis fn forward_with_state_cuda<B: #p::Dim, #hp N: #p::Dim>(
            #(#call_params,)*
            initial: Option<&#state_ty>,
        ) -> ::core::result::Result<(#v_ty, #state_ty), ::attnc::Error> {
            #destructure
            #p::forward_cuda::<_, _, _, _, _, _, #f, #dv>(
                &Self::CUDA_LAUNCH, Self::CUDA_SOURCE, (b, h), q, k, v, #(#opts,)* initial,
            )
        }

        #step
    }
}
