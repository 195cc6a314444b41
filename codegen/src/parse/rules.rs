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
}
