//! "Did you mean" hints for misspelt keys and values.

use super::at;
use super::keys::{ident_of, str_of, Key};

/// The error for a key that is not one: every key, and the one it most likely meant.
pub(super) fn unknown_key(key: &syn::Ident) -> syn::Error {
    let name = key.to_string();
    let all: Vec<&str> = Key::ALL.iter().map(|k| k.name()).collect();
    let hint = suggest_key(&name).map_or(String::new(), |k| format!("; did you mean `{k}`?"));
    at(
        key.span(),
        format!(
            "unknown key `{name}`: the keys are {}{hint}",
            all.join(", ")
        ),
    )
}

/// The key a misspelt or foreign-named key most likely meant.
pub(super) fn suggest_key(name: &str) -> Option<&'static str> {
    const ALIASES: [(&str, Key); 14] = [
        ("dk", Key::HeadDim),
        ("d_k", Key::HeadDim),
        ("dim", Key::HeadDim),
        ("head_size", Key::HeadDim),
        ("dv", Key::ValueDim),
        ("d_v", Key::ValueDim),
        ("phi", Key::FeatureMap),
        ("kernel", Key::FeatureMap),
        ("activation", Key::FeatureMap),
        ("causal", Key::Mask),
        ("chunk_size", Key::Chunk),
        ("block_size", Key::Chunk),
        ("norm", Key::Normalize),
        ("normalise", Key::Normalize),
    ];
    let lower = name.to_ascii_lowercase();
    if let Some((_, k)) = ALIASES.iter().find(|(a, _)| *a == lower) {
        return Some(k.name());
    }
    suggest(&lower, Key::ALL.iter().map(|k| k.name()))
}

/// The candidate `name` most likely meant: one it begins (`elu` → `elu_plus_one`), else the
/// nearest within a small edit distance that starts the same way (`bhdn` → `bhnd`, `hbnd` →
/// `bhnd`), else one it extends (`masking` → `mask`). Names of one or two letters get no hint
/// (`l1` is a different norm, not a typo of `l2`).
fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    if name.chars().count() < 2 {
        return None;
    }
    let candidates: Vec<&str> = candidates.into_iter().collect();
    prefix_of(&name, &candidates)
        .or_else(|| nearest(&name, &candidates))
        .or_else(|| extended(&name, &candidates))
}

/// The shortest candidate that `name` (3+ letters) begins: `elu` → `elu_plus_one`.
fn prefix_of<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let n = name.chars().count();
    candidates
        .iter()
        .filter(|c| n >= 3 && c.starts_with(name))
        .min_by_key(|c| c.len())
        .copied()
}

/// The candidate nearest to `name` (3+ letters) within one edit (two from five letters up),
/// among those that start the same way: typos keep the first letter or swap the first two, so
/// `gelu` is not a typo of `relu`.
fn nearest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let n = name.chars().count();
    let limit = if n <= 4 { 1 } else { 2 };
    let first_two = |s: &str| -> Vec<char> { s.chars().take(2).collect() };
    let same_start = |c: &str| {
        let (a, b) = (first_two(c), first_two(name));
        a.first() == b.first() || (a.len() == 2 && b.len() == 2 && a[0] == b[1] && a[1] == b[0])
    };
    candidates
        .iter()
        .filter(|c| n >= 3 && same_start(c))
        .map(|c| (edit_distance(c, name), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| *c)
}

/// The longest candidate (3+ letters) that `name` extends: `masking` → `mask`.
fn extended<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .filter(|c| c.len() >= 3 && name.starts_with(*c))
        .max_by_key(|c| c.len())
        .copied()
}

/// Edit distance with adjacent transpositions (optimal string alignment), for "did you mean"
/// hints: `bhdn` is one edit from `bhnd`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// "; did you mean `x`?" or "; write `x` without quotes", when a value is close to an allowed one.
pub(super) fn value_hint<'a>(
    v: &syn::Expr,
    allowed: impl IntoIterator<Item = &'a str> + Clone,
) -> String {
    if let Some(s) = str_of(v) {
        if let Some(name) = allowed.clone().into_iter().find(|n| *n == s) {
            return format!("; write `{name}` without quotes");
        }
    }
    let written = ident_of(v).or_else(|| str_of(v));
    written
        .and_then(|w| suggest(&w, allowed))
        .map_or(String::new(), |n| format!("; did you mean `{n}`?"))
}
