//! attnc's compiler, in one direction:
//!
//! `syn` tokens → [`parse`] (a validated [`Spec`], spanned errors, accumulated) → [`plan`] (the
//! kernel plan: dims plus a straight-line chunk program and step program of tile ops) → one
//! emitter per backend ([`cpu`]: Rust tokens; [`cuda`]: CUDA C) → [`api`] (the glue users call).
//!
//! Without the default `syn` feature only the plain data types ([`Spec`], [`plan::Plan`]) are built;
//! that is what the runtime side needs.

#![warn(missing_docs)]

pub mod abi;
pub mod back;
pub mod cuda;
pub mod deriv;
pub mod plan;
pub mod spec;

pub use spec::*;

#[cfg(feature = "syn")]
pub mod api;
#[cfg(feature = "syn")]
pub mod cpu;
#[cfg(feature = "syn")]
pub mod parse;

#[cfg(feature = "syn")]
pub use api::expand;
