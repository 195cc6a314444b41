//! The one error type of attnc. Every message says what went wrong and what to do.

/// Errors returned by generated kernels and the runtime. Library code never panics on user input.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// Two arguments disagree on a runtime dimension (batch, heads or tokens).
    #[error(
        "`{arg}` has shape {got:?} but {expected:?} was expected from `q` (axes {axes}); \
         pass tensors with the same batch, head and token counts"
    )]
    ShapeMismatch {
        /// The argument at fault.
        arg: &'static str,
        /// Its expected shape.
        expected: Vec<usize>,
        /// Its actual shape.
        got: Vec<usize>,
        /// The axis names, in the spec's layout.
        axes: &'static str,
    },
    /// The sequence has no tokens.
    #[error("the sequence is empty (N = 0): pass at least one token")]
    EmptySequence,
    /// A state does not fit the inputs.
    #[error(
        "the state has {got_batch} batch x {got_heads} heads but the inputs have {batch} x {heads}; \
         use the state returned for inputs of this batch and head count"
    )]
    StateMismatch {
        /// Batch size of the inputs.
        batch: usize,
        /// Head count of the inputs.
        heads: usize,
        /// Batch size of the state.
        got_batch: usize,
        /// Head count of the state.
        got_heads: usize,
    },
    /// The state has (or lacks) the normaliser `z` contrary to the spec.
    #[error("{0}")]
    StateNormalizer(&'static str),
    /// An input holds NaN or infinity (only checked when finite checking is on).
    #[error(
        "`{arg}` holds a non-finite value (NaN or infinity) at flat index {index}; \
         clean the input or turn off checking with attnc::set_finite_check(false)"
    )]
    NonFinite {
        /// The argument at fault.
        arg: &'static str,
        /// Flat index (logical order) of the first bad value.
        index: usize,
    },
    /// `ATTNC_CPU_ISA` names an unknown or unavailable instruction set.
    #[error("{0}")]
    Isa(String),
    /// `ATTNC_DEVICE` names an unknown or unavailable device.
    #[error("{0}")]
    Device(String),
    /// A CUDA driver call failed (allocation, copy, module load, launch, synchronisation).
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// NVRTC could not compile a spec's CUDA C.
    #[error(
        "NVRTC could not compile attnc's CUDA kernels for {arch}; this is a bug in attnc's CUDA \
         emitter or an NVRTC too old for {arch} (update NVRTC, or report it with this log):\n{log}"
    )]
    Nvrtc {
        /// The GPU architecture compiled for (`sm_80`, ...).
        arch: String,
        /// NVRTC's log (or what went wrong before NVRTC ran).
        log: String,
    },
    /// The dfdx CPU device refused to build a tensor.
    #[error("dfdx could not build the output tensor: {0}")]
    Tensor(String),
    /// A broken internal invariant: a bug in attnc, please report it.
    #[error("internal error in attnc (please report): {0}")]
    Internal(&'static str),
}

/// Shorthand for results of attnc.
pub type Result<T, E = Error> = std::result::Result<T, E>;
