//! The expansion of `#[attention(...)]`: validate, plan, print, then the glue users call.
//!
//! On any error the user's struct is still emitted unchanged next to the errors (thiserror's
//! fallback pattern), so one mistake in the attribute does not cascade into "cannot find type".

mod examples;
mod methods;
mod systems;
mod tokens;

use crate::cpu::{emit_kernel, lit};
use crate::cuda::CudaProgram;
use crate::parse::parse_spec_recovering;
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
    let parsed = match parse_spec_recovering(attr) {
        (p, None) => p,
        (p, Some(e)) => return fallback_with_stubs(&item_struct, e, &p.spec),
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

/// The struct, the errors, and (when `head_dim` is known) the entry points of the best-effort
/// spec with `unreachable!()` bodies: the build fails on the errors anyway, and each use of
/// `X::forward` and friends type-checks instead of adding "no function `forward`" (or a
/// mismatched `Const<DK>`) to the real error.
fn fallback_with_stubs(item: &syn::ItemStruct, err: syn::Error, spec: &Spec) -> TokenStream {
    let errors = err.to_compile_error();
    if spec.head_dim == 0 {
        return quote! { #item #errors };
    }
    let name = &item.ident;
    let sig = crate::plan::signature(spec);
    let softmax = spec.feature_map == crate::spec::FeatureMap::Softmax;
    let kernel = format_ident!("__AttncKernel{}", name);
    let methods = methods::cpu_methods(&sig, softmax, &kernel, name, false);
    let cuda_methods = methods::cuda_methods(&sig, softmax, name, false);
    let module = methods::module_impl(&sig, name);
    let stubs = quote! {
        impl #name { #methods #cuda_methods }
        #module
    };
    let stubs = stub_bodies(stubs);
    quote! {
        #item
        #errors
        const _: () = { #stubs };
    }
}

/// Replaces every function body in `items` (impl blocks) with `unreachable!()`, dropping docs.
fn stub_bodies(items: TokenStream) -> TokenStream {
    let Ok(file) = syn::parse2::<syn::File>(items) else {
        return TokenStream::new();
    };
    let impls = file.items.into_iter().filter_map(|item| match item {
        syn::Item::Impl(mut imp) => {
            for it in &mut imp.items {
                if let syn::ImplItem::Fn(f) = it {
                    f.attrs.retain(|a| !a.path().is_ident("doc"));
                    f.attrs.push(syn::parse_quote!(#[allow(unused_variables)]));
                    f.block = syn::parse_quote!({ ::core::unreachable!() });
                }
            }
            Some(imp)
        }
        _ => None,
    });
    quote!(#(#impls)*)
}

/// Where `ATTNC_EXPAND_DIR` asks for each spec's expansion to be written.
const EXPAND_DIR: &str = "ATTNC_EXPAND_DIR";

/// With `ATTNC_EXPAND_DIR=dir` set, writes `dir/<Name>.rs` (the Rust this macro generates,
/// formatted) and `dir/<Name>.cu` (the CUDA C). A failure is a compile error saying why: the
/// user asked for the files.
fn write_expansion(name: &syn::Ident, rust: &TokenStream, cuda: &str) -> Option<syn::Error> {
    let dir = std::path::PathBuf::from(std::env::var_os(EXPAND_DIR)?);
    let text = match syn::parse2::<syn::File>(rust.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(_) => rust.to_string(),
    };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{name}.rs")), text)?;
        std::fs::write(dir.join(format!("{name}.cu")), cuda)
    };
    write().err().map(|e| {
        let msg = format!(
            "{EXPAND_DIR}={}: could not write this spec's expansion there ({e}); unset it or \
             point it at a writable folder",
            dir.display()
        );
        syn::Error::new(name.span(), msg)
    })
}

fn expand_valid(item: &syn::ItemStruct, spec: &Spec, plan: &Plan) -> TokenStream {
    if spec.has_systems() {
        return expand_systems(item, spec);
    }
    let name = &item.ident;
    let kernel_ident = format_ident!("__AttncKernel{}", name);
    let kernel = emit_kernel(plan, &kernel_ident);
    let cuda = crate::cuda::emit(plan, &spec.to_string());
    let runnable = examples::runnable();
    let (sig, softmax) = (&plan.signature, plan.is_softmax());
    let methods = methods::cpu_methods(sig, softmax, &kernel_ident, name, runnable);
    let cuda_methods = methods::cuda_methods(sig, softmax, name, runnable);
    let module = module_for(name, methods::module_impl(sig, &self_alias()));
    let ex_spec = examples::example(&plan.signature, name, examples::Method::Spec, runnable);
    let consts = consts(spec, plan, &cuda, &ex_spec);
    let expansion = quote! {
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
    };
    with_expansion_written(name, expansion, &cuda.source)
}

/// The name the `Module` impl gives the spec's struct: the impl's own type parameters (`B`,
/// `H`, `N`, `T`, ...) would shadow a struct named like one of them.
fn self_alias() -> syn::Ident {
    format_ident!("__AttncSelf")
}

/// `module` (an impl for [`self_alias`]) after the alias, declared outside the impl's generics.
fn module_for(name: &syn::Ident, module: TokenStream) -> TokenStream {
    let alias = self_alias();
    quote! {
        type #alias = #name;
        #module
    }
}

/// `expansion`, plus the error of writing it out when `ATTNC_EXPAND_DIR` asks for it and fails.
fn with_expansion_written(name: &syn::Ident, expansion: TokenStream, cuda: &str) -> TokenStream {
    match write_expansion(name, &expansion, cuda) {
        Some(err) => {
            let err = err.to_compile_error();
            quote!(#expansion #err)
        }
        None => expansion,
    }
}

/// The expansion of a spec with systems (momentum, short_conv, rpe): its base's chunk program
/// and entry points behind a private struct, and the spec's own entry points calling the
/// runtime's `systems` (see `systems`).
fn expand_systems(item: &syn::ItemStruct, spec: &Spec) -> TokenStream {
    let name = &item.ident;
    let base_spec = spec.base();
    let plan = Plan::new(&base_spec);
    let kernel_ident = format_ident!("__AttncKernel{}", name);
    let base = format_ident!("__AttncBase{}", name);
    let kernel = emit_kernel(&plan, &kernel_ident);
    // The systems are planned with the spec for CUDA (the convolution in the loads, momentum's
    // step program, rpe's features and FFT kernels); the CPU runs the base's chunk program.
    let cuda = crate::cuda::emit(&Plan::new(spec), &spec.to_string());
    let sig = &plan.signature;
    let base_methods = methods::cpu_methods(sig, false, &kernel_ident, &base, false);
    let base_consts = consts(&base_spec, &plan, &cuda, "");
    let methods = systems::cpu_methods(spec, sig, &base, &kernel_ident);
    let cuda_methods = systems::cuda_methods(spec, sig);
    let module = module_for(name, systems::module_impl(spec, sig, &self_alias()));
    let ex_spec = examples::example(sig, name, examples::Method::Spec, false);
    let consts = consts(spec, &plan, &cuda, &ex_spec);
    let expansion = quote! {
        #item

        const _: () = {
            #kernel

            struct #base;

            #[allow(dead_code)]
            impl #base {
                #base_consts
                #base_methods
            }

            // The systems' inputs come on top of beta, g and the projection.
            #[allow(clippy::too_many_arguments)]
            impl #name {
                #consts
                #methods
                #cuda_methods
            }

            #module
        };
    };
    with_expansion_written(name, expansion, &cuda.source)
}

/// `HEAD_DIM`, `VALUE_DIM`, `FEATURE_DIM`, `CHUNK`, `CUDA_SOURCE`, `CUDA_LAUNCH` and `spec()`.
fn consts(spec: &Spec, plan: &Plan, cuda: &CudaProgram, example: &str) -> TokenStream {
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
        /// The generated CUDA C for this spec, always present (GPU or not) so that what runs can
        /// be read: `println!("{}", X::CUDA_SOURCE)`. Compiled with NVRTC for the device's
        /// compute capability on first use on a GPU, and cached on disk.
        // Through a const fn call, so that rustdoc does not print the whole source as the value.
        pub const CUDA_SOURCE: &'static str = ::core::convert::identity(#cuda);
        /// How `CUDA_SOURCE`'s kernels are launched (computed at build time).
        pub const CUDA_LAUNCH: ::attnc::__private::CudaLaunch = #launch;
        /// How this spec's CPU backward pass runs and what it saves per (batch, head)
        /// (`BACKWARD.saved_floats(n)`), decided at build time.
        pub const BACKWARD: ::attnc::BackwardPlan = #backward;
        /// The spec, every key explicit, as attribute text.
        pub const SPEC_TEXT: &'static str = #text;

        /// The parsed spec, for introspection and printing.
        ///
        #[doc = #example]
        pub fn spec() -> &'static ::attnc::Spec {
            static SPEC: ::std::sync::OnceLock<::attnc::Spec> = ::std::sync::OnceLock::new();
            SPEC.get_or_init(|| #spec)
        }
    }
}
