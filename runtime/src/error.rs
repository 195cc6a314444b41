//! The one error type of attnc. Every message says what went wrong and what to do.

/// Errors returned by generated kernels and the runtime. Library code never panics on user input.
///
/// `Debug` prints the message too (not the variant's fields), so that
/// `fn main() -> Result<(), attnc::Error>` and `.unwrap()` say what went wrong and what to do;
/// match on the variants to tell them apart in code.
#[derive(thiserror::Error, Clone, PartialEq)]
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
    /// A per-token log-decay `g` or write strength `beta` is outside what its update rule
    /// allows. Always checked (finite checking on or off), by every entry point that takes
    /// them, CPU and CUDA: a violation would otherwise return `Ok` with infinities.
    ///
    /// The rules ([`Error::LOG_DECAY_RULE`], [`Error::WRITE_STRENGTH_RULE`]):
    /// - `g` (`g_t`) holds log-decays ln(decay): <= 0 and not NaN. `-inf`, a decay of exactly 0
    ///   (forget the state), is allowed: every g below [`crate::check::LOG_DECAY_FLOOR`] (-40)
    ///   is read as the floor, whose decay e^-40 is far below f32's resolution (the chunked
    ///   kernels subtract cumulative log-decays, which turns `-inf` into NaN and a huge finite g
    ///   into lost digits).
    /// - `beta` (`beta_t`) holds write strengths: finite and within [0, 2], where the delta
    ///   rule is contractive for unit keys (`qk_norm = l2`).
    #[error(
        "`{arg}` is {value} at {}, but {rule}; {}",
        place(*batch, *head, *token, *index),
        advice(rule, *value)
    )]
    InvalidScalar {
        /// The argument at fault: `g`, `beta` (forward) or `g_t`, `beta_t` (step).
        arg: &'static str,
        /// Batch of the first refused value.
        batch: usize,
        /// Head of the first refused value.
        head: usize,
        /// Token of the first refused value; `None` for a step's (B, H) inputs.
        token: Option<usize>,
        /// Its flat index in the argument's logical order (its own layout).
        index: usize,
        /// The refused value (a NaN makes the error unequal to itself: match on the others).
        value: f32,
        /// The rule it breaks: [`Error::LOG_DECAY_RULE`] or [`Error::WRITE_STRENGTH_RULE`].
        rule: &'static str,
    },
    /// `ATTNC_CPU_ISA` names an unknown or unavailable instruction set.
    #[error("{0}")]
    Isa(String),
    /// A device cannot be used as asked: `ATTNC_DEVICE` names an unknown or unavailable one,
    /// there is no usable GPU, or `CudaDevice::targeting` names an architecture the GPU
    /// cannot run.
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
    /// The spec uses a system (momentum, short_conv, rpe) that this device does not run yet.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A broken internal invariant: a bug in attnc, please report it.
    #[error("internal error in attnc (please report): {0}")]
    Internal(&'static str),
}

impl Error {
    /// The rule of log-decays `g`, as [`Error::InvalidScalar`] states it.
    pub const LOG_DECAY_RULE: &'static str =
        "g holds log-decays ln(decay), which must be <= 0 and not NaN";
    /// The rule of write strengths `beta`, as [`Error::InvalidScalar`] states it.
    pub const WRITE_STRENGTH_RULE: &'static str = "beta holds write strengths, which must be \
         finite and within [0, 2] (where the delta rule is contractive for unit keys)";
}

/// Where an [`Error::InvalidScalar`] value sits, in the user's terms.
fn place(batch: usize, head: usize, token: Option<usize>, index: usize) -> String {
    match token {
        Some(t) => format!("batch {batch}, head {head}, token {t} (flat index {index})"),
        None => format!("batch {batch}, head {head} (flat index {index})"),
    }
}

/// What to do about an [`Error::InvalidScalar`] value.
fn advice(rule: &str, value: f32) -> String {
    const CLEAN: &str = "find where the NaN comes from (a log of a negative number, 0/0) and \
                         clean the input";
    if value.is_nan() {
        return CLEAN.to_string();
    }
    if rule == Error::LOG_DECAY_RULE {
        const HOW: &str = "pass ln(decay), e.g. `g = decay.ln()` (a decay of 0.9 is \
                           g = -0.105), or a log-sigmoid of gate logits";
        if value > 0.0 && value <= 1.0 {
            // The likeliest mistake: the decay itself instead of its log.
            // Three decimals, without trailing zeros or a negative zero: ln(1) prints as 0.
            let log = (value.ln() * 1000.0).round() / 1000.0 + 0.0;
            format!(
                "if {value} is a decay, pass its log, g = ln({value}) = {log}; in general {HOW}"
            )
        } else {
            format!("{HOW}: a positive g grows the state by e^g per token until it overflows")
        }
    } else if value > 2.0 {
        "a write over 2 overshoots the value it stores, so the state grows without bound; \
         squash it, e.g. `beta = sigmoid(x)` in (0, 1) (or 2 * sigmoid(x) in (0, 2))"
            .to_string()
    } else {
        "a negative write amplifies what the state holds along the key, so the state grows \
         without bound; squash it, e.g. `beta = sigmoid(x)` in (0, 1)"
            .to_string()
    }
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Shorthand for results of attnc.
pub type Result<T, E = Error> = std::result::Result<T, E>;
