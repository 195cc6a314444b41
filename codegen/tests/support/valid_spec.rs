//! Random valid spec attributes, shared by `codegen/tests/fuzz.rs` (through proptest) and the
//! facade's `tests/nvrtc_compile.rs` (through a fixed-seed RNG, so that test needs no proptest).
//!
//! The generator draws every choice from `pick(n)`, a number in `0..n` from any random source,
//! and respects the spec language's rules, so every string it returns must parse.

#![allow(dead_code)]

/// A random valid spec: `head_dim` and a random subset of the other keys, in random order,
/// sometimes with a trailing comma.
pub fn valid_spec(pick: &mut dyn FnMut(usize) -> usize) -> String {
    let map = feature_map(pick);
    let softmax = map == "softmax";
    let update = if softmax {
        "additive"
    } else {
        ["additive", "gated", "delta", "gated_delta"][pick(4)]
    };
    let delta = update.contains("delta");
    let non_negative = !matches!(map.as_str(), "identity" | "softmax");
    let mut entries = vec![format!("head_dim = {}", dim(pick, &map))];
    maybe(
        &mut entries,
        format!("value_dim = {}", 8 * (1 + pick(32))),
        pick,
    );
    // The defaults (identity, additive) are written or left out; anything else is written.
    if map == "identity" {
        maybe(&mut entries, format!("feature_map = {map}"), pick);
    } else {
        entries.push(format!("feature_map = {map}"));
    }
    match update {
        "additive" if softmax => {}
        "additive" => maybe(&mut entries, "update = additive".into(), pick),
        _ => entries.push(format!("update = {update}")),
    }
    let mask = if update == "additive" {
        ["causal", "none"][pick(2)]
    } else {
        "causal"
    };
    maybe(&mut entries, format!("mask = {mask}"), pick);
    let normalize = if non_negative && !delta {
        ["none", "sum"][pick(2)]
    } else {
        "none"
    };
    maybe(&mut entries, format!("normalize = {normalize}"), pick);
    maybe(
        &mut entries,
        format!("qk_norm = {}", ["none", "l2"][pick(2)]),
        pick,
    );
    let scale = ["auto", "0.125", "1", "0.5e-1", "2.0"][pick(5)];
    maybe(&mut entries, format!("scale = {scale}"), pick);
    maybe(
        &mut entries,
        format!("chunk = {}", [16, 32, 64, 128, 256][pick(5)]),
        pick,
    );
    maybe(
        &mut entries,
        format!("layout = {}", ["bhnd", "bnhd"][pick(2)]),
        pick,
    );
    systems(&mut entries, pick, (&map, update, mask));
    shuffle(&mut entries, pick);
    let trailing = if pick(4) == 0 { "," } else { "" };
    format!("{}{trailing}", entries.join(", "))
}

/// Sometimes `update = momentum(..)` (in place of an additive update, causal, not softmax or
/// favor), `rpe = toeplitz` (additive without momentum, not softmax or favor) and
/// `short_conv = w` (not softmax).
fn systems(
    entries: &mut Vec<String>,
    pick: &mut dyn FnMut(usize) -> usize,
    (map, update, mask): (&str, &str, &str),
) {
    let linear = map != "softmax" && !map.starts_with("favor");
    let additive = update == "additive" && linear;
    let momentum = additive && mask == "causal" && pick(4) == 0;
    if momentum {
        entries.retain(|e| !e.starts_with("update"));
        entries.push(format!(
            "update = momentum(mu = {})",
            ["0.0", "0.5", "0.9", "0.99"][pick(4)]
        ));
    } else if additive && pick(4) == 0 {
        entries.push("rpe = toeplitz".into());
    }
    if map != "softmax" && pick(3) == 0 {
        entries.push(format!("short_conv = {}", 2 + pick(7)));
    }
}

/// Writes `entry` or leaves it out (at random).
fn maybe(entries: &mut Vec<String>, entry: String, pick: &mut dyn FnMut(usize) -> usize) {
    if pick(2) == 0 {
        entries.push(entry);
    }
}

/// A head dim: a multiple of 8 in 8..=256, kept small for `taylor2` (F grows as dk^2 / 2).
fn dim(pick: &mut dyn FnMut(usize) -> usize, map: &str) -> usize {
    let most = if map == "taylor2" { 4 } else { 32 };
    8 * (1 + pick(most))
}

/// Any feature map, written the ways the parser accepts.
fn feature_map(pick: &mut dyn FnMut(usize) -> usize) -> String {
    match pick(13) {
        0 => "identity".into(),
        1 => "elu_plus_one".into(),
        2 => "relu".into(),
        3 => "squared_relu".into(),
        4 => "sigmoid".into(),
        5 => "taylor2".into(),
        6 => "dpfp".into(),
        7 => format!("dpfp(nu = {})", 1 + pick(16)),
        8 => "favor".into(),
        9 => format!("favor(features = {})", 8 * (1 + pick(64))),
        10 => "softmax".into(),
        _ => format!("|x| {}", closure_body(pick, 3)),
    }
}

/// A closure body within the closure grammar, at most `depth` operators deep.
pub fn closure_body(pick: &mut dyn FnMut(usize) -> usize, depth: usize) -> String {
    if depth == 0 {
        return leaf(pick);
    }
    let sub = |pick: &mut dyn FnMut(usize) -> usize| closure_body(pick, depth - 1);
    match pick(9) {
        0 | 1 => leaf(pick),
        2 => {
            let op = ["+", "-", "*", "/"][pick(4)];
            format!("({} {op} {})", sub(pick), sub(pick))
        }
        3 => format!("-({})", sub(pick)),
        4 => {
            let f = ["exp", "ln", "sqrt", "abs", "tanh"][pick(5)];
            format!("({}).{f}()", sub(pick))
        }
        5 => {
            let f = ["max", "min", "powf"][pick(3)];
            format!("({}).{f}({})", sub(pick), sub(pick))
        }
        6 => format!("({}).powi({})", sub(pick), pick(7) as i32 - 3),
        7 => {
            let cmp = ["<", "<=", ">", ">=", "==", "!="][pick(6)];
            let (a, b, c, d) = (sub(pick), sub(pick), sub(pick), sub(pick));
            format!("if ({a}) {cmp} ({b}) {{ {c} }} else {{ {d} }}")
        }
        _ => format!("(x * {})", leaf(pick)),
    }
}

/// The argument or a literal.
fn leaf(pick: &mut dyn FnMut(usize) -> usize) -> String {
    ["x", "x", "0.5", "1.0", "2", "1e-3", "3.25f32", "0.0"][pick(8)].into()
}

/// Fisher-Yates with `pick`.
fn shuffle<T>(items: &mut [T], pick: &mut dyn FnMut(usize) -> usize) {
    for i in (1..items.len()).rev() {
        items.swap(i, pick(i + 1));
    }
}

/// A small deterministic RNG (splitmix64) for callers without proptest.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    }
}
