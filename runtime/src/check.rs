//! Argument checks shared by the CPU and CUDA entry points: the sizes of a call ([`Problem`]),
//! every input's shape against them, the optional check for NaN and infinity, and the rules of
//! the per-token scalars (log-decays `g`, write strengths `beta`), which are always checked
//! ([`Error::InvalidScalar`]).

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

/// The lowest log-decay the kernels read: every `g` below it, `-inf` included, is read as this.
///
/// Its decay e^-40 (about 4e-18) is 10^10 times below f32's resolution (6e-8), so the floor
/// changes no result unless the state before it outweighs the new writes by 10^10: `-inf` and
/// `-1e30` still forget the state. The chunked kernels need it: they subtract cumulative
/// log-decays within a chunk, where `-inf - -inf` is NaN and a g of -1e30 swamps the chunk's
/// other gates (their sum loses every digit). Not lower, as the sums lose digits in proportion:
/// with `-inf` every third token (tests/delta_stability.rs), chunks of 64 are off by 2e-5 at
/// -40 but by 1e-4 at -110, the first floor whose decay rounds to 0.
pub const LOG_DECAY_FLOOR: f32 = -40.0;

/// Which per-token scalar an input holds, and so which values it may take (always checked,
/// see [`Error::InvalidScalar`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScalarRule {
    /// `g`: log-decays, <= 0 and not NaN; clamped below to [`LOG_DECAY_FLOOR`].
    LogDecay,
    /// `beta`: write strengths, finite and within [0, 2].
    WriteStrength,
}

impl ScalarRule {
    /// The rule as [`Error::InvalidScalar`] states it.
    fn text(self) -> &'static str {
        match self {
            ScalarRule::LogDecay => Error::LOG_DECAY_RULE,
            ScalarRule::WriteStrength => Error::WRITE_STRENGTH_RULE,
        }
    }

    /// Checks `data` in one pass and clamps log-decays below [`LOG_DECAY_FLOOR`] in place.
    /// Returns the flat index of the first refused value, or whether any value was clamped.
    fn apply(self, data: &mut [f32]) -> std::result::Result<bool, usize> {
        let mut clamped = false;
        for (i, x) in data.iter_mut().enumerate() {
            match self {
                ScalarRule::LogDecay if x.is_nan() || *x > 0.0 => return Err(i),
                ScalarRule::LogDecay if *x < LOG_DECAY_FLOOR => {
                    *x = LOG_DECAY_FLOOR;
                    clamped = true;
                }
                ScalarRule::WriteStrength if !(0.0..=2.0).contains(x) => return Err(i),
                _ => {}
            }
        }
        Ok(clamped)
    }
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

    /// Checks per-token scalars against `rule`, `data` being a (B, H, N)-or-(B, N, H) tensor's
    /// values in logical order (clamping log-decays in place, see [`LOG_DECAY_FLOOR`]).
    /// Returns whether a value was clamped.
    pub(crate) fn check_scalar_values(
        &self,
        arg: &'static str,
        rule: ScalarRule,
        data: &mut [f32],
    ) -> Result<bool> {
        rule.apply(data).map_err(|index| {
            let (h, n) = (self.heads.max(1), self.tokens.max(1));
            let (head, token) = match self.layout {
                Layout::Bhnd => ((index / n) % h, index % n),
                Layout::Bnhd => (index % h, (index / h) % n),
            };
            self.invalid(arg, rule, data, index, head, Some(token))
        })
    }

    /// As [`Problem::check_scalar_values`] for a step's per-head (B, H) scalars.
    pub(crate) fn check_head_scalar_values(
        &self,
        arg: &'static str,
        rule: ScalarRule,
        data: &mut [f32],
    ) -> Result<bool> {
        rule.apply(data).map_err(|index| {
            let head = index % self.heads.max(1);
            self.invalid(arg, rule, data, index, head, None)
        })
    }

    /// The [`Error::InvalidScalar`] for `data[index]`.
    fn invalid(
        &self,
        arg: &'static str,
        rule: ScalarRule,
        data: &[f32],
        index: usize,
        head: usize,
        token: Option<usize>,
    ) -> Error {
        let per_batch = (self.heads * token.map_or(1, |_| self.tokens)).max(1);
        Error::InvalidScalar {
            arg,
            batch: index / per_batch,
            head,
            token,
            index,
            value: data.get(index).copied().unwrap_or(f32::NAN),
            rule: rule.text(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(p: &Problem, rule: ScalarRule, data: &[f32], per_token: bool) -> Error {
        let mut data = data.to_vec();
        let got = match per_token {
            true => p.check_scalar_values("x", rule, &mut data),
            false => p.check_head_scalar_values("x", rule, &mut data),
        };
        got.expect_err("refused")
    }

    #[test]
    fn the_floor_decays_below_f32_resolution() {
        assert!(LOG_DECAY_FLOOR.exp() < f32::EPSILON * 1e-10);
    }

    #[test]
    fn log_decays_are_checked_and_clamped() {
        let p = Problem::from_q(Layout::Bhnd, [1, 1, 5, 4]).unwrap();
        let mut ok = [0.0, -0.5, -200.0, f32::NEG_INFINITY, -0.0];
        assert_eq!(
            p.check_scalar_values("g", ScalarRule::LogDecay, &mut ok),
            Ok(true)
        );
        let floor = LOG_DECAY_FLOOR;
        assert_eq!(ok, [0.0, -0.5, floor, floor, -0.0]);
        let mut plain = [0.0, -0.5, -1.0, -2.0, -3.0];
        assert_eq!(
            p.check_scalar_values("g", ScalarRule::LogDecay, &mut plain),
            Ok(false)
        );
        for bad in [1.0, 1e-30, f32::NAN, f32::INFINITY] {
            let e = err(&p, ScalarRule::LogDecay, &[0.0, -1.0, bad, 2.0, 0.0], true);
            assert!(
                matches!(
                    e,
                    Error::InvalidScalar {
                        index: 2,
                        token: Some(2),
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }

    #[test]
    fn write_strengths_are_checked() {
        let p = Problem::from_q(Layout::Bhnd, [1, 1, 4, 4]).unwrap();
        let mut ok = [0.0, 2.0, 1.0, 0.5];
        let rule = ScalarRule::WriteStrength;
        assert_eq!(p.check_scalar_values("beta", rule, &mut ok), Ok(false));
        assert_eq!(ok, [0.0, 2.0, 1.0, 0.5]);
        for bad in [
            5.0,
            2.0001,
            -0.1,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            let e = err(&p, rule, &[0.0, 0.0, 0.0, bad], true);
            assert!(matches!(e, Error::InvalidScalar { index: 3, .. }), "{e:?}");
        }
    }

    #[test]
    fn errors_name_batch_head_and_token_in_either_layout() {
        let (b, h, n) = (2, 3, 5);
        let rule = ScalarRule::LogDecay;
        // (batch 1, head 2, token 4) in each layout.
        let heads_first = Problem::from_q(Layout::Bhnd, [b, h, n, 8]).unwrap();
        let mut x = vec![0.0; b * h * n];
        x[(h + 2) * n + 4] = 1.0;
        let e = err(&heads_first, rule, &x, true);
        let want = |index| Error::InvalidScalar {
            arg: "x",
            batch: 1,
            head: 2,
            token: Some(4),
            index,
            value: 1.0,
            rule: Error::LOG_DECAY_RULE,
        };
        assert_eq!(e, want((h + 2) * n + 4));
        let tokens_first = Problem::from_q(Layout::Bnhd, [b, n, h, 8]).unwrap();
        let mut x = vec![0.0; b * h * n];
        x[(n + 4) * h + 2] = 1.0;
        assert_eq!(err(&tokens_first, rule, &x, true), want((n + 4) * h + 2));
        // A step's (B, H): no token.
        let step = Problem::step(b, h);
        let mut x = vec![0.0; b * h];
        x[h + 2] = 1.0;
        let e = err(&step, rule, &x, false);
        assert!(
            matches!(
                e,
                Error::InvalidScalar {
                    batch: 1,
                    head: 2,
                    token: None,
                    index: 5,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("batch 1, head 2 (flat index 5)"),
            "{e}"
        );
    }

    #[test]
    fn messages_say_what_to_do() {
        let p = Problem::from_q(Layout::Bhnd, [1, 1, 1, 4]).unwrap();
        let msg = |rule, x: f32| err(&p, rule, &[x], true).to_string();
        let decay = msg(ScalarRule::LogDecay, 0.9);
        assert!(decay.contains("g = ln(0.9) = -0.105"), "{decay}");
        assert!(decay.contains("`g = decay.ln()`"), "{decay}");
        let one = msg(ScalarRule::LogDecay, 1.0);
        assert!(one.contains("g = ln(1) = 0;"), "{one}");
        let positive = msg(ScalarRule::LogDecay, 3.0);
        assert!(positive.contains("grows the state"), "{positive}");
        assert!(msg(ScalarRule::LogDecay, f32::NAN).contains("NaN"));
        let big = msg(ScalarRule::WriteStrength, 5.0);
        assert!(
            big.contains("within [0, 2]") && big.contains("sigmoid"),
            "{big}"
        );
        let negative = msg(ScalarRule::WriteStrength, -0.1);
        assert!(negative.contains("negative write"), "{negative}");
    }
}
