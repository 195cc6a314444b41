//! attnc's compiler, in one direction:
//!
//! `syn` tokens → [`parse`] (a validated [`Spec`], spanned errors, accumulated) → [`plan`] (the
//! kernel IR: programs of tile ops with every operand resolved — shape, live rows, memory place,
//! slot — for each target, checked by [`plan::Plan::validate`]) → one printer per backend
//! ([`cpu`]: Rust tokens; [`cuda`]: CUDA C; what both share in [`back`]) → [`api`] (the glue users
//! call). [`abi`] is the data generated code and the runtime share; [`deriv`] differentiates the
//! expression language.
//!
//! Without the default `syn` feature only the plain data (the spec, the plan, the ABI, the CUDA
//! printer) is built: no syn in the runtime's dependency graph.

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
