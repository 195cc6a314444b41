//! The `#[attention(...)]` attribute. All the work happens in `attnc-codegen`; this crate only
//! bridges `proc_macro` tokens to it (so the compiler is testable without a proc-macro context).

use proc_macro::TokenStream;

/// Declares an attention variant on a unit struct and generates its kernels and API.
///
/// See the `attnc` crate docs and the README's key table for the keys. Errors are reported at the key or
/// value at fault, all at once, and the struct itself is still emitted.
#[proc_macro_attribute]
pub fn attention(attr: TokenStream, item: TokenStream) -> TokenStream {
    attnc_codegen::expand(attr.into(), item.into()).into()
}
