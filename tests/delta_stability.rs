//! The delta rule and the gated delta rule at long sequences and on adversarial inputs: no NaN or
//! infinity, and agreement with the step-by-step oracle (max |diff| / max |ref|):
//! <= 1e-4 on well-conditioned inputs up to N = 8192, <= 1e-3 on adversarial ones.

#![allow(clippy::needless_range_loop)] // index loops mirror the math in test code

mod common;

use attnc::prelude::*;
use common::*;

type Tok = Tensor<(usize, usize, usize, Const<64>), f32, Cpu>;
type Per = Tensor<(usize, usize, usize), f32, Cpu>;

fn tok(x: &[f32], n: usize) -> Tok {
    Cpu::default().tensor_from_vec(x.to_vec(), (1, 1, n, Const))
}

fn per(x: &[f32], n: usize) -> Per {
    Cpu::default().tensor_from_vec(x.to_vec(), (1, 1, n))
}

macro_rules! delta_specs {
    ($($name:ident: $update:ident, $chunk:literal;)*) => {
        $(
            #[attention(head_dim = 64, update = $update, qk_norm = l2, chunk = $chunk)]
            pub struct $name;
        )*

        /// Runs every spec on `x`, returning (name, chunk, error, all finite).
        fn run_all(x: &Inputs) -> Vec<(&'static str, usize, f64, bool)> {
            let mut out = Vec::new();
            $(
                let (q, k, v) = (tok(&x.q, x.n), tok(&x.k, x.n), tok(&x.v, x.n));
                let (beta, _g) = (per(&x.beta, x.n), per(&x.g, x.n));
                let o = delta_specs!(@call $name, $update, q, k, v, beta, _g).as_vec();
                let want = reference($name::spec(), x, None, None);
                let finite = o.iter().all(|v| v.is_finite());
                out.push((stringify!($name), $chunk, max_rel_err(&o, &want.o), finite));
            )*
            out
        }
    };
    (@call $name:ident, delta, $q:ident, $k:ident, $v:ident, $beta:ident, $_g:ident) => {
        $name::forward($q.clone(), $k.clone(), $v.clone(), $beta.clone()).unwrap()
    };
    (@call $name:ident, gated_delta, $q:ident, $k:ident, $v:ident, $beta:ident, $g:ident) => {
        $name::forward($q.clone(), $k.clone(), $v.clone(), $beta.clone(), $g.clone()).unwrap()
    };
}

delta_specs! {
    Delta16: delta, 16;
    Delta64: delta, 64;
    Delta128: delta, 128;
    Delta256: delta, 256;
    GatedDelta16: gated_delta, 16;
    GatedDelta64: gated_delta, 64;
    GatedDelta128: gated_delta, 128;
    GatedDelta256: gated_delta, 256;
}

fn check(case: &str, x: &Inputs, tol: f64) {
    for (name, chunk, err, finite) in run_all(x) {
        eprintln!("{case}: {name} (chunk {chunk}) max-rel error {err:.2e}");
        assert!(finite, "{case}: {name} produced NaN or infinity");
        assert!(err <= tol, "{case}: {name} error {err:.2e} > {tol:e}");
    }
}

#[test]
fn long_sequences_stay_accurate() {
    let x = Inputs::random(1, 1, 8192, 64, 64, 2024);
    check("N=8192 random, beta in (0.05, 1)", &x, 1e-4);
}

#[test]
fn beta_one_with_repeated_identical_keys() {
    let mut x = Inputs::random(1, 1, 1000, 64, 64, 7);
    let key: Vec<f32> = x.k[..64].to_vec();
    for t in 0..x.n {
        // Runs of 50 identical keys: each write fully overwrites the previous one.
        if (t / 50) % 2 == 0 {
            x.k[t * 64..(t + 1) * 64].copy_from_slice(&key);
        }
    }
    x.beta.iter_mut().for_each(|b| *b = 1.0);
    check("beta = 1, repeated identical keys", &x, 1e-3);
}

#[test]
fn nearly_collinear_keys() {
    let mut x = Inputs::random(1, 1, 1000, 64, 64, 8);
    let base: Vec<f32> = x.k[..64].to_vec();
    let mut rng = Rng::new(99);
    for t in 0..x.n {
        for i in 0..64 {
            x.k[t * 64 + i] = base[i] + 1e-3 * rng.normal();
        }
    }
    x.beta.iter_mut().for_each(|b| *b = 1.0);
    check("nearly collinear keys, beta = 1", &x, 1e-3);
}

#[test]
fn extreme_gates() {
    let mut x = Inputs::random(1, 1, 777, 64, 64, 9);
    x.g.iter_mut().for_each(|g| *g = -20.0);
    check("g = -20", &x, 1e-3);
    x.g.iter_mut().for_each(|g| *g = 0.0);
    check("g = 0", &x, 1e-3);
    for (t, g) in x.g.iter_mut().enumerate() {
        *g = if t % 3 == 0 { -20.0 } else { 0.0 };
    }
    check("g alternating -20 and 0", &x, 1e-3);
    // -inf, a decay of exactly 0, every third token (read as attnc's floor, g = -40), the random
    // log-sigmoid gates between: the kernels' cumulative sums of -inf would be NaN.
    let random = Inputs::random(1, 1, 777, 64, 64, 9).g;
    for (t, g) in x.g.iter_mut().enumerate() {
        *g = if t % 3 == 0 {
            f32::NEG_INFINITY
        } else {
            random[t]
        };
    }
    check("g = -inf every third token", &x, 1e-3);
}
