//! Argument checks shared by the CPU and CUDA entry points: the sizes of a call ([`Problem`]),
//! every input's shape against them, and the optional check for NaN and infinity.

use crate::error::{Error, Result};
use attnc_codegen::abi::Layout;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

fn finite_check_flag() -> &'static AtomicBool {
    static FLAG: OnceLock<AtomicBool> = OnceLock::new();
    FLAG.get_or_init(|| {
        let on = std::env::var("ATTNC_CHECK_FINITE").is_ok_and(|v| v == "1" || v == "true");
        AtomicBool::new(on)
    })
}

/// Turns checking of inputs for NaN and infinity on or off for the whole process (default off,
/// or on when `ATTNC_CHECK_FINITE=1`). With it on, a non-finite input returns
/// [`Error::NonFinite`] instead of propagating into the outputs.
pub fn set_finite_check(on: bool) {
    finite_check_flag().store(on, Ordering::Relaxed);
}

/// Whether inputs are checked for NaN and infinity.
pub fn finite_check() -> bool {
    finite_check_flag().load(Ordering::Relaxed)
}

/// `data`, or [`Error::NonFinite`] when finite checking is on and it holds NaN or infinity.
pub(crate) fn checked(arg: &'static str, data: Vec<f32>) -> Result<Vec<f32>> {
    if finite_check() {
        if let Some(index) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::NonFinite { arg, index });
        }
    }
    Ok(data)
}

/// The sizes of one call, taken from `q`, against which every other argument is checked.
#[derive(Clone, Copy, Debug)]
pub struct Problem {
    /// Batch size.
    pub batch: usize,
    /// Head count.
    pub heads: usize,
    /// Token count.
    pub tokens: usize,
    /// Axis order of q, k, v, o, beta, g.
    pub layout: Layout,
}

impl Problem {
    /// Reads the sizes from `q`'s shape, in the given layout.
    pub fn from_q(layout: Layout, q_dims: [usize; 4]) -> Result<Problem> {
        let [b, x, y, _] = q_dims;
        let (heads, tokens) = match layout {
            Layout::Bhnd => (x, y),
            Layout::Bnhd => (y, x),
        };
        if tokens == 0 {
            return Err(Error::EmptySequence);
        }
        Ok(Problem {
            batch: b,
            heads,
            tokens,
            layout,
        })
    }

    /// A one-token problem (decoding).
    pub fn step(batch: usize, heads: usize) -> Problem {
        Problem {
            batch,
            heads,
            tokens: 1,
            layout: Layout::Bhnd,
        }
    }

    fn axes(&self) -> (&'static str, &'static str) {
        match self.layout {
            Layout::Bhnd => ("(B, H, N, D)", "(B, H, N)"),
            Layout::Bnhd => ("(B, N, H, D)", "(B, N, H)"),
        }
    }

    fn bhn(&self) -> [usize; 3] {
        match self.layout {
            Layout::Bhnd => [self.batch, self.heads, self.tokens],
            Layout::Bnhd => [self.batch, self.tokens, self.heads],
        }
    }

    /// Checks the shape of a (B, H, N, D)-or-(B, N, H, D) token tensor against the problem.
    pub fn check_tokens(&self, arg: &'static str, got: [usize; 4], d: usize) -> Result<()> {
        let [x, y, z] = self.bhn();
        mismatch(arg, vec![x, y, z, d], &got, self.axes().0)
    }

    /// Checks the shape of a per-token (B, H, N)-or-(B, N, H) tensor against the problem.
    pub fn check_scalars(&self, arg: &'static str, got: [usize; 3]) -> Result<()> {
        mismatch(arg, self.bhn().to_vec(), &got, self.axes().1)
    }

    /// Checks the shape of a per-head (B, H, D) decoding input against the problem.
    pub fn check_heads(&self, arg: &'static str, got: [usize; 3], d: usize) -> Result<()> {
        mismatch(arg, vec![self.batch, self.heads, d], &got, "(B, H, D)")
    }

    /// Checks the shape of a per-head (B, H) decoding input (beta_t, g_t) against the problem.
    pub fn check_head_scalars(&self, arg: &'static str, got: [usize; 2]) -> Result<()> {
        mismatch(arg, vec![self.batch, self.heads], &got, "(B, H)")
    }
}

/// `Err(ShapeMismatch)` unless `got == expected`.
fn mismatch(
    arg: &'static str,
    expected: Vec<usize>,
    got: &[usize],
    axes: &'static str,
) -> Result<()> {
    if got == expected.as_slice() {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            arg,
            expected,
            got: got.to_vec(),
            axes,
        })
    }
}
