//! Forbidden combinations across keys, checked once every value is parsed.

use super::keys::{Builder, Key};
use super::{at, Errors};
use crate::spec::*;

/// Reports each broken rule at the value of the key it blames. A rule fires only when that key
/// was written and every key it involves holds an accepted value (written and valid, or left at
/// its default), so one bad value does not cascade into rule errors.
pub(super) fn check(b: &Builder, errors: &mut Errors) {
    let spec = &b.spec;
    let mut rule = |cond: bool, blame: Key, involves: &[Key], msg: &str| {
        let valid = |k: &Key| !b.failed.contains(k);
        if cond && b.spans.contains(blame) && valid(&blame) && involves.iter().all(valid) {
            errors.push(at(b.spans.value(blame), msg));
        }
    };
    rule(
        spec.mask == Mask::None && spec.update != Update::Additive,
        Key::Mask,
        &[Key::Update],
        "`mask = none` works only with `update = additive`: gates and the delta rule are \
         defined in token order, so they are causal; use `mask = causal`",
    );
    rule(
        spec.normalize == Normalize::Sum && spec.has_beta(),
        Key::Normalize,
        &[Key::Update],
        "`normalize = sum` cannot be used with delta updates (the delta rule's state is not a \
         sum of keys); use `normalize = none`",
    );
    let default_identity = if b.spans.contains(Key::FeatureMap) {
        "`identity` is not one"
    } else {
        "the default, `identity`, is not one"
    };
    rule(
        spec.normalize == Normalize::Sum && spec.feature_map == FeatureMap::Identity,
        Key::Normalize,
        &[Key::FeatureMap],
        &format!(
            "`normalize = sum` needs a non-negative feature map and {default_identity}; choose \
             e.g. `feature_map = elu_plus_one`, `relu` or `sigmoid` (closures are trusted to \
             be non-negative)"
        ),
    );
    rule(
        spec.normalize == Normalize::Sum && spec.feature_map == FeatureMap::Softmax,
        Key::Normalize,
        &[Key::FeatureMap],
        "`normalize = sum` does not apply to `feature_map = softmax`, which normalises \
         itself; remove it",
    );
    rule(
        spec.feature_map == FeatureMap::Softmax && spec.update != Update::Additive,
        Key::Update,
        &[Key::FeatureMap],
        "`feature_map = softmax` is exact softmax attention, which has no recurrent update; \
         remove `update` (or use a linear feature map)",
    );
    systems(spec, &mut rule);
}

/// The rules of `update = momentum(..)`, `short_conv` and `rpe`.
fn systems(spec: &Spec, rule: &mut impl FnMut(bool, Key, &[Key], &str)) {
    let momentum = spec.momentum.is_some();
    let softmax = spec.feature_map == FeatureMap::Softmax;
    let favor = matches!(spec.feature_map, FeatureMap::Favor { .. });
    rule(
        momentum && spec.mask == Mask::None,
        Key::Mask,
        &[Key::Update],
        "`mask = none` cannot be used with `update = momentum(..)`: the momentum accumulates in \
         token order, so it is causal; use `mask = causal`",
    );
    rule(
        momentum && softmax,
        Key::Update,
        &[Key::FeatureMap],
        "`feature_map = softmax` is exact softmax attention, which has no recurrent update to \
         add momentum to; remove `update` (or use a linear feature map)",
    );
    rule(
        momentum && favor,
        Key::Update,
        &[Key::FeatureMap],
        "`update = momentum(..)` takes every feature map but `favor` in this version (its \
         projection is not an input of the momentum kernel); use e.g. `elu_plus_one`",
    );
    rule(
        spec.short_conv.is_some() && softmax,
        Key::ShortConv,
        &[Key::FeatureMap],
        "`short_conv` applies to linear attention in this version (its state carries the \
         convolution's tail); with `feature_map = softmax` convolve q, k and v before the call",
    );
    let rpe = spec.rpe == Rpe::Toeplitz;
    rule(
        rpe && spec.update != Update::Additive,
        Key::Rpe,
        &[Key::Update],
        "`rpe = toeplitz` needs `update = additive` (the default): a Toeplitz weight exp(b[s - \
         t]) replaces the decay of gated updates and has no delta form",
    );
    rule(
        rpe && momentum,
        Key::Rpe,
        &[Key::Update],
        "`rpe = toeplitz` cannot be used with `update = momentum(..)`: momentum already weights \
         the scores by a fixed Toeplitz matrix (c[t - s]); use one or the other",
    );
    rule(
        rpe && softmax,
        Key::Rpe,
        &[Key::FeatureMap],
        "`rpe = toeplitz` is kernelized (linear) attention with positional weights; with \
         `feature_map = softmax` there is no feature map to factor the scores by",
    );
    rule(
        rpe && favor,
        Key::Rpe,
        &[Key::FeatureMap],
        "`rpe = toeplitz` takes every feature map but `favor` in this version (its projection \
         is not an input of the FFT kernel); use e.g. `elu_plus_one`",
    );
}
