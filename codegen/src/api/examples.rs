//! The examples in the generated methods' rustdoc, written for the spec at hand: its name, its
//! head and value dims, its layout and the extra arguments it takes.
//!
//! Where they run: a doctest must name the struct by its path, which a macro does not know.
//! Inside the `attnc` crate (its `showcase` module) the path is known, so there the examples are
//! doctests that run in CI. In a user's crate they are shown but not compiled (```` ```ignore ````):
//! the same code, with the user's struct name, tested once in `attnc::showcase`.

use super::methods::{present, Role};
use crate::abi::{Layout, Signature};
use proc_macro2::Ident;

/// Where the showcase specs live, whose examples run as doctests.
const SHOWCASE: &str = "attnc::showcase";

/// The entry point an example is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `forward`.
    Forward,
    /// `forward_with_state` (and `zero_state`).
    ForwardWithState,
    /// `step`.
    Step,
    /// `decode_step` (and `zero_decode_state`).
    DecodeStep,
    /// `forward_cuda`: runs only where a GPU is usable.
    Cuda,
    /// `forward_with_state_cuda` then `step_cuda`.
    CudaState,
    /// `spec()`.
    Spec,
}

/// Heads and tokens of the examples' inputs.
const EXAMPLE_HEADS: usize = 2;
const EXAMPLE_TOKENS: usize = 10;

/// Whether the examples being generated run as doctests: only for the showcase specs, which the
/// `attnc` crate itself declares (cargo names the crate being compiled in `CARGO_CRATE_NAME`).
pub fn runnable() -> bool {
    std::env::var("CARGO_CRATE_NAME").is_ok_and(|c| c == "attnc")
}

/// The `# Example` section of `method`'s docs for the spec `name`.
pub fn example(sig: &Signature, name: &Ident, method: Method, runnable: bool) -> String {
    let mut lines = Vec::new();
    lines.push("use attnc::prelude::*;".to_string());
    if runnable {
        lines.push(format!("use {SHOWCASE}::{name};"));
    }
    if method != Method::Spec {
        lines.push("let dev = Cpu::default();".to_string());
    }
    match method {
        Method::Spec => {
            lines.push(format!(
                "println!(\"{{}}\", {name}::spec()); // every key explicit"
            ));
            lines.push(format!(
                "assert_eq!({name}::spec().to_string(), {name}::SPEC_TEXT);"
            ));
            lines.push(format!(
                "assert_eq!({name}::spec().head_dim, {name}::HEAD_DIM);"
            ));
        }
        Method::Forward => {
            lines.extend(inputs(sig, false));
            lines.push(format!("let o = {name}::forward({})?;", args(sig, false)));
            lines.push(format!("assert_eq!(o.shape(), &{});", out_shape(sig)));
        }
        Method::ForwardWithState => {
            lines.extend(inputs(sig, false));
            lines.push(format!(
                "let initial = {name}::zero_state({})?;",
                batch_heads(sig)
            ));
            lines.push(format!(
                "let (o, last) = {name}::forward_with_state({}, Some(&initial))?;",
                args(sig, false)
            ));
            lines.push(
                "// `last` continues the sequence: the next call's `initial`, or `step`'s.".into(),
            );
            lines.push(format!("assert_eq!(o.shape(), &{});", out_shape(sig)));
            lines.push(format!("assert_eq!(last.z.is_some(), {});", sig.normalized));
        }
        Method::Step | Method::DecodeStep => {
            let (make, call) = match method {
                Method::Step => ("zero_state", "step"),
                _ => ("zero_decode_state", "decode_step"),
            };
            let q = if method == Method::Step { "?" } else { "" };
            lines.push(format!(
                "let mut state = {name}::{make}({}){q};",
                batch_heads(sig)
            ));
            lines.extend(inputs(sig, true));
            lines.push(format!(
                "let o_t = {name}::{call}(&mut state, {})?;",
                args(sig, true)
            ));
            lines.push(format!(
                "assert_eq!(o_t.shape(), &{});",
                step_out_shape(sig)
            ));
        }
        Method::Cuda | Method::CudaState => {
            lines.extend(inputs(sig, false));
            if method == Method::CudaState {
                // Per-token inputs; the projection is the sequence's.
                let w = "let proj ";
                lines.extend(inputs(sig, true).into_iter().filter(|l| !l.starts_with(w)));
            }
            lines.push("// Runs where a GPU, its driver and NVRTC are usable.".into());
            lines.push(
                "if let attnc::Device::Cuda { device, .. } = attnc::Device::auto()? {".into(),
            );
            lines.extend(uploads(sig, false));
            if method == Method::Cuda {
                lines.push(format!(
                    "    let o = {name}::forward_cuda({})?.download()?;",
                    refs(sig, false)
                ));
                lines.push(format!("    assert_eq!(o.shape(), &{});", out_shape(sig)));
            } else {
                lines.extend(uploads(sig, true));
                lines.push(format!(
                    "    let (_, mut state) = {name}::forward_with_state_cuda({}, None)?;",
                    refs(sig, false)
                ));
                lines.push(format!(
                    "    let o_t = {name}::step_cuda(&mut state, {})?.download()?;",
                    refs(sig, true)
                ));
                lines.push(format!(
                    "    assert_eq!(o_t.shape(), &{});",
                    step_out_shape(sig)
                ));
            }
            lines.push("}".into());
        }
    }
    lines.push("# Ok::<(), attnc::Error>(())".into());
    let fence = if runnable { "```" } else { "```ignore" };
    format!(" # Example\n\n {fence}\n{}\n ```", indent(&lines))
}

fn indent(lines: &[String]) -> String {
    let lines: Vec<String> = lines.iter().map(|l| format!(" {l}")).collect();
    lines.join("\n")
}

fn heads(sig: &Signature) -> usize {
    sig.heads.unwrap_or(EXAMPLE_HEADS)
}

fn batch_heads(sig: &Signature) -> String {
    format!("Const::<1>, Const::<{}>", heads(sig))
}

/// The dims of a whole-sequence tensor with last dim `d` (none for the per-token scalars).
fn dims(sig: &Signature, d: Option<usize>) -> String {
    let (h, n) = (heads(sig), EXAMPLE_TOKENS);
    let axes = match sig.layout {
        Layout::Bhnd => format!("1, {h}, {n}"),
        Layout::Bnhd => format!("1, {n}, {h}"),
    };
    match d {
        Some(d) => format!("{axes}, {d}"),
        None => axes,
    }
}

fn out_shape(sig: &Signature) -> String {
    let consts: Vec<String> = dims(sig, Some(sig.dv))
        .split(", ")
        .map(|d| format!("Const::<{d}>"))
        .collect();
    format!("({})", consts.join(", "))
}

fn step_out_shape(sig: &Signature) -> String {
    format!("(Const::<1>, Const::<{}>, Const::<{}>)", heads(sig), sig.dv)
}

/// `let` lines building the inputs the spec takes (per token with `step`).
fn inputs(sig: &Signature, step: bool) -> Vec<String> {
    present(sig)
        .map(|a| {
            let name = if step { a.step_name } else { a.name };
            let ty = |rank: usize, dims: String| format!("Tensor<Rank{rank}<{dims}>, f32, _>");
            let (h, dk, dv) = (heads(sig), sig.dk, sig.dv);
            match (a.role, step) {
                (Role::Keys, false) => {
                    format!("let {name}: {} = dev.sample_normal();", ty(4, dims(sig, Some(dk))))
                }
                (Role::Values, false) => {
                    format!("let {name}: {} = dev.sample_normal();", ty(4, dims(sig, Some(dv))))
                }
                (Role::Keys, true) => {
                    format!("let {name}: {} = dev.sample_normal();", ty(3, format!("1, {h}, {dk}")))
                }
                (Role::Values, true) => {
                    format!("let {name}: {} = dev.sample_normal();", ty(3, format!("1, {h}, {dv}")))
                }
                (Role::Scalars, _) => {
                    let (rank, d) = if step {
                        (2, format!("1, {h}"))
                    } else {
                        (3, dims(sig, None))
                    };
                    if a.name == "g" {
                        format!(
                            "let {name} = -dev.sample_uniform::<Rank{rank}<{d}>>(); // log-decays, <= 0"
                        )
                    } else {
                        format!(
                            "let {name}: {} = dev.sample_uniform(); // write strengths in [0, 2]",
                            ty(rank, d)
                        )
                    }
                }
                (Role::Projection, _) => {
                    format!("let {name} = attnc::favor::orthogonal_gaussian(0)?; // FAVOR+'s w")
                }
            }
        })
        .collect()
}

/// `let` lines uploading the inputs to the GPU (the projection once, with the sequence's).
fn uploads(sig: &Signature, step: bool) -> Vec<String> {
    present(sig)
        .filter(|a| !(step && a.role == Role::Projection))
        .map(|a| {
            let name = if step { a.step_name } else { a.name };
            format!("    let {name} = device.upload(&{name})?;")
        })
        .collect()
}

/// The arguments of a `_cuda` call, by reference.
fn refs(sig: &Signature, step: bool) -> String {
    let names: Vec<String> = present(sig)
        .map(|a| format!("&{}", if step { a.step_name } else { a.name }))
        .collect();
    names.join(", ")
}

/// The arguments of the call: by value for the whole sequence, by reference per token.
fn args(sig: &Signature, step: bool) -> String {
    let names: Vec<String> = present(sig)
        .map(|a| match step {
            true => format!("&{}", a.step_name),
            false => a.name.to_string(),
        })
        .collect();
    names.join(", ")
}
