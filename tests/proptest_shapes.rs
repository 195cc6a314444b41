//! Property tests: random batch, head and token counts (tails of every length) and random inputs,
//! over a spread of specs; `forward` must agree with the step-by-step oracle to 1e-4 and `step`
//! must reproduce `forward`.

mod common;

use attnc::prelude::*;
use common::*;
use proptest::prelude::*;

type Tok<const D: usize> = Tensor<(usize, usize, usize, Const<D>), f32, Cpu>;
type Per = Tensor<(usize, usize, usize), f32, Cpu>;

#[attention(head_dim = 16, chunk = 16)]
pub struct Plain;

#[attention(head_dim = 8, value_dim = 16, feature_map = elu_plus_one, normalize = sum, chunk = 32)]
pub struct EluSum;

#[attention(head_dim = 16, update = gated, qk_norm = l2, chunk = 16)]
pub struct Gated;

#[attention(head_dim = 16, update = delta, qk_norm = l2, chunk = 16)]
pub struct Delta;

#[attention(head_dim = 16, value_dim = 8, update = gated_delta, qk_norm = l2, chunk = 32)]
pub struct GatedDelta;

#[attention(head_dim = 16, mask = none, feature_map = |x| x.max(0.0) + 0.1, normalize = sum, chunk = 16)]
pub struct NonCausal;

fn tok<const D: usize>(x: &[f32], s: &Inputs) -> Tok<D> {
    Cpu::default().tensor_from_vec(x.to_vec(), (s.b, s.h, s.n, Const))
}

fn per(x: &[f32], s: &Inputs) -> Per {
    Cpu::default().tensor_from_vec(x.to_vec(), (s.b, s.h, s.n))
}

/// Runs spec `which` on `x`; returns (output, oracle).
fn run(which: usize, x: &Inputs) -> (Vec<f32>, Vec<f64>) {
    macro_rules! go {
        ($spec:ident, $dk:literal, $dv:literal $(, $extra:ident)*) => {{
            let (q, k, v) = (tok::<$dk>(&x.q, x), tok::<$dk>(&x.k, x), tok::<$dv>(&x.v, x));
            $(let $extra = per(&x.$extra, x);)*
            let o = $spec::forward(q, k, v $(, $extra)*).unwrap().as_vec();
            (o, reference($spec::spec(), x, None, None).o)
        }};
    }
    match which {
        0 => go!(Plain, 16, 16),
        1 => go!(EluSum, 8, 16),
        2 => go!(Gated, 16, 16, g),
        3 => go!(Delta, 16, 16, beta),
        4 => go!(GatedDelta, 16, 8, beta, g),
        _ => go!(NonCausal, 16, 16),
    }
}

fn dims(which: usize) -> (usize, usize) {
    match which {
        1 => (8, 16),
        4 => (16, 8),
        _ => (16, 16),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn forward_agrees_with_the_oracle(
        which in 0usize..6,
        b in 1usize..3,
        h in 1usize..4,
        n in 1usize..200,
        seed in any::<u64>(),
    ) {
        let (dk, dv) = dims(which);
        let x = Inputs::random(b, h, n, dk, dv, seed);
        let (o, want) = run(which, &x);
        let err = max_rel_err(&o, &want);
        prop_assert!(err <= 1e-4, "spec {which}, B={b} H={h} N={n}: error {err:.2e}");
    }

    #[test]
    fn step_reproduces_forward(n in 1usize..80, seed in any::<u64>()) {
        let x = Inputs::random(1, 2, n, 16, 16, seed);
        let (q, k, v, g) = (tok::<16>(&x.q, &x), tok::<16>(&x.k, &x), tok::<16>(&x.v, &x), per(&x.g, &x));
        let full = Gated::forward(q.clone(), k.clone(), v.clone(), g.clone()).unwrap().as_vec();
        let mut state = State::zeros(1usize, 2usize, false).unwrap();
        let dev = Cpu::default();
        let scale = full.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
        for t in 0..n {
            let pick = |src: &[f32], d: usize| -> Vec<f32> {
                (0..2).flat_map(|h| src[(h * n + t) * d..(h * n + t + 1) * d].to_vec()).collect()
            };
            let q_t = dev.tensor_from_vec(pick(&x.q, 16), (1usize, 2usize, Const::<16>));
            let k_t = dev.tensor_from_vec(pick(&x.k, 16), (1usize, 2usize, Const::<16>));
            let v_t = dev.tensor_from_vec(pick(&x.v, 16), (1usize, 2usize, Const::<16>));
            let g_t = dev.tensor_from_vec(pick(&x.g, 1), (1usize, 2usize));
            let o_t = Gated::step(&mut state, &q_t, &k_t, &v_t, &g_t).unwrap().as_vec();
            let want = pick(&full, 16);
            let err = o_t.iter().zip(&want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
            prop_assert!(err <= 1e-4, "token {t}: step differs from forward by {err:.2e}");
        }
    }
}
