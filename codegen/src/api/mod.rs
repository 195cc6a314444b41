//! The expansion of `#[attention(...)]`: validate, plan, print, then the glue users call.
//!
//! On any error the user's struct is still emitted unchanged next to the errors (thiserror's
//! fallback pattern), so one mistake in the attribute does not cascade into "cannot find type".

mod methods;
mod tokens;

use crate::cpu::{emit_kernel, lit};
use crate::cuda::CudaProgram;
use crate::parse::parse_spec;
use crate::plan::Plan;
use crate::spec::Spec;
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use syn::spanned::Spanned;

/// What `#[attention]` says when it is not on a unit struct.
const NOT_A_UNIT_STRUCT: &str =
    "#[attention] goes on a unit struct, e.g. `pub struct MyAttention;`: \
                                 the struct only names the attention variant and carries no data";

/// Expands `#[attention(attr)] item`.
pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item_struct = match syn::parse2::<syn::ItemStruct>(item.clone()) {
        Ok(s) if matches!(s.fields, syn::Fields::Unit) => s,
        Ok(s) => return fallback(item, syn::Error::new(s.fields.span(), NOT_A_UNIT_STRUCT)),
        Err(_) => {
            let span = item_name_span(&item);
            return fallback(item, syn::Error::new(span, NOT_A_UNIT_STRUCT));
        }
    };
    let parsed = match parse_spec(attr) {
        Ok(p) => p,
        Err(e) => return fallback(item, e),
    };
    let plan = Plan::new(&parsed.spec);
    // A plan that fails its own checks is attnc's bug, not the user's: say so, in debug builds
    // of the macro (release builds of the macro trust the tests, which validate every spec).
    if cfg!(debug_assertions) {
        if let Err(errors) = plan.validate() {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            let msg = format!(
                "attnc internal error: the kernel plan of this spec is invalid ({}); please report \
                 it with the spec",
                list.join("; ")
            );
            return fallback(item, syn::Error::new(item_struct.ident.span(), msg));
        }
    }
    expand_valid(&item_struct, &parsed.spec, &plan)
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

fn expand_valid(item: &syn::ItemStruct, spec: &Spec, plan: &Plan) -> TokenStream {
    let name = &item.ident;
    let kernel_ident = format_ident!("__AttncKernel{}", name);
    let kernel = emit_kernel(plan, &kernel_ident);
    let cuda = crate::cuda::emit(plan, &spec.to_string());
    let methods = methods::cpu_methods(plan, &kernel_ident);
    let cuda_methods = methods::cuda_methods(plan);
    let module = methods::module_impl(plan, name);
    let consts = consts(spec, plan, &cuda);
    quote! {
        #item

        const _: () = {
            #kernel

            impl #name {
                #consts
                #methods
                #cuda_methods
            }

            #module
        };
    }
}

/// `HEAD_DIM`, `VALUE_DIM`, `FEATURE_DIM`, `CHUNK`, `CUDA_SOURCE`, `CUDA_LAUNCH` and `spec()`.
fn consts(spec: &Spec, plan: &Plan, cuda: &CudaProgram) -> TokenStream {
    let sig = &plan.signature;
    let (dk, dv, f, c) = (lit(sig.dk), lit(sig.dv), lit(sig.f), lit(sig.chunk));
    let text = Literal::string(&spec.to_string());
    let launch = &cuda.launch;
    let backward = &plan.backward;
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
        /// How this spec's CPU backward pass runs and what it saves per (batch, head)
        /// (`BACKWARD.saved_floats(n)`), decided at build time.
        pub const BACKWARD: ::attnc::BackwardPlan = #backward;
        /// The spec, every key explicit, as attribute text.
        pub const SPEC_TEXT: &'static str = #text;

        /// The parsed spec, for introspection and printing.
        pub fn spec() -> &'static ::attnc::Spec {
            static SPEC: ::std::sync::OnceLock<::attnc::Spec> = ::std::sync::OnceLock::new();
            SPEC.get_or_init(|| #spec)
        }
    }
}
