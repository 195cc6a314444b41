//! The rules of the per-token scalars, checked by every entry point whatever
//! `set_finite_check` says: log-decays `g` are <= 0 and not NaN (`-inf`, a decay of 0, is
//! allowed, and so is any huge negative g), write strengths `beta` are finite and within
//! [0, 2]. A refused value returns `Error::InvalidScalar` naming the tensor, its (batch, head,
//! token) and the rule, never `Ok` with infinities; a refused step leaves the state as it was.

mod common;

use attnc::prelude::*;
use common::{max_rel_err, reference, Inputs};

#[attention(head_dim = 16, update = gated, chunk = 16)]
struct Gated;

#[attention(head_dim = 16, update = gated_delta, qk_norm = l2, chunk = 16)]
struct Gdn;

#[attention(head_dim = 16, update = delta, qk_norm = l2, chunk = 16, layout = bnhd)]
struct DeltaBnhd;

type Tok = Tensor<(usize, usize, usize, Const<16>), f32, Cpu>;
type Per = Tensor<(usize, usize, usize), f32, Cpu>;
type HeadTok = Tensor<(usize, usize, Const<16>), f32, Cpu>;
type HeadScalar = Tensor<(usize, usize), f32, Cpu>;
type St = State<usize, usize, 16, 16>;
type Dec = DecodeState<usize, usize, 16, 16>;

const B: usize = 2;
const H: usize = 3;
const N: usize = 40;

/// The rule texts as the messages state them.
const G_RULE: &str = "g holds log-decays ln(decay), which must be <= 0 and not NaN";
const BETA_RULE: &str = "beta holds write strengths, which must be finite and within [0, 2]";

fn tok(x: &[f32], n: usize) -> Tok {
    Cpu::default().tensor_from_vec(x.to_vec(), (B, H, n, Const))
}

fn per(x: &[f32], n: usize) -> Per {
    Cpu::default().tensor_from_vec(x.to_vec(), (B, H, n))
}

/// Valid inputs: beta in (0.05, 1), g = log-sigmoid in about (-3, 0).
fn inputs(n: usize, seed: u64) -> Inputs {
    Inputs::random(B, H, n, 16, 16, seed)
}

/// Flat heads-first index of (batch, head, token).
fn at(b: usize, h: usize, t: usize, n: usize) -> usize {
    (b * H + h) * n + t
}

fn gated(x: &Inputs) -> Result<Vec<f32>, Error> {
    let n = x.n;
    Gated::forward(tok(&x.q, n), tok(&x.k, n), tok(&x.v, n), per(&x.g, n)).map(|o| o.as_vec())
}

fn gdn(x: &Inputs) -> Result<Vec<f32>, Error> {
    let n = x.n;
    let (q, k, v) = (tok(&x.q, n), tok(&x.k, n), tok(&x.v, n));
    Gdn::forward(q, k, v, per(&x.beta, n), per(&x.g, n)).map(|o| o.as_vec())
}

fn gdn_with_state(x: &Inputs) -> Result<Vec<f32>, Error> {
    let n = x.n;
    let (q, k, v) = (tok(&x.q, n), tok(&x.k, n), tok(&x.v, n));
    let st = St::zeros(B, H, false)?;
    let (o, _) = Gdn::forward_with_state(q, k, v, per(&x.beta, n), per(&x.g, n), Some(&st))?;
    Ok(o.as_vec())
}

/// Asserts `err` is an `InvalidScalar` of `arg` at (batch, head, token) whose message names the
/// tensor and states the rule.
fn assert_refused(err: &Error, arg: &str, place: (usize, usize, Option<usize>), rule: &str) {
    match err {
        Error::InvalidScalar {
            arg: a,
            batch,
            head,
            token,
            ..
        } => {
            assert_eq!(*a, arg, "{err}");
            assert_eq!((*batch, *head, *token), place, "{err}");
        }
        other => panic!("expected InvalidScalar for `{arg}`, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&format!("`{arg}`")), "names the tensor: {msg}");
    assert!(msg.contains(rule), "states the rule: {msg}");
    let (b, h, t) = place;
    let where_ = match t {
        Some(t) => format!("batch {b}, head {h}, token {t}"),
        None => format!("batch {b}, head {h}"),
    };
    assert!(msg.contains(&where_), "names {where_}: {msg}");
}

fn finite(o: &[f32]) -> bool {
    o.iter().all(|v| v.is_finite())
}

#[test]
fn positive_g_is_refused_by_gated_and_gated_delta() {
    let mut x = inputs(N, 1);
    x.g[at(1, 2, 17, N)] = 1.0;
    let e = gated(&x).unwrap_err();
    assert_refused(&e, "g", (1, 2, Some(17)), G_RULE);
    eprintln!("g = +1: {e}");
    assert!(e.to_string().contains("`g = decay.ln()`"), "{e}");
    assert_refused(&gdn(&x).unwrap_err(), "g", (1, 2, Some(17)), G_RULE);
    assert_refused(
        &gdn_with_state(&x).unwrap_err(),
        "g",
        (1, 2, Some(17)),
        G_RULE,
    );
}

#[test]
fn a_decay_passed_for_its_log_is_refused() {
    // g = 0.9 everywhere, the decay instead of ln(0.9): e^(0.9 N) overflows long before N = 1000.
    let mut x = inputs(1000, 2);
    x.g.iter_mut().for_each(|g| *g = 0.9);
    let e = gated(&x).unwrap_err();
    eprintln!("g = 0.9: {e}");
    assert_refused(&e, "g", (0, 0, Some(0)), G_RULE);
    assert!(e.to_string().contains("g = ln(0.9) = -0.105"), "{e}");
}

#[test]
fn non_finite_g_is_refused_but_minus_infinity_is_a_decay_of_zero() {
    for bad in [f32::NAN, f32::INFINITY] {
        let mut x = inputs(N, 3);
        x.g[at(0, 1, 5, N)] = bad;
        assert_refused(&gated(&x).unwrap_err(), "g", (0, 1, Some(5)), G_RULE);
        assert_refused(&gdn(&x).unwrap_err(), "g", (0, 1, Some(5)), G_RULE);
    }
    // -inf forgets the state, and so does any huge negative g (both read as g = -40, a decay of
    // 4e-18). Mid-chunk, at a chunk's first and last token, twice in a row, and at the start.
    for forget in [f32::NEG_INFINITY, f32::MIN, -1e30, -500.0] {
        let mut x = inputs(N, 4);
        for t in [0, 5, 6, 16, 31, 39] {
            x.g[at(0, 1, t, N)] = forget;
            x.g[at(1, 2, t, N)] = forget;
        }
        for (name, got) in [("gated", gated(&x)), ("gated_delta", gdn(&x))] {
            let o = got.unwrap_or_else(|e| panic!("{name}, g = {forget}: {e}"));
            assert!(finite(&o), "{name}, g = {forget}: non-finite output");
            let spec = if name == "gated" {
                Gated::spec()
            } else {
                Gdn::spec()
            };
            let err = max_rel_err(&o, &reference(spec, &x, None, None).o);
            assert!(
                err <= 1e-4,
                "{name}, g = {forget}: error {err:e} against the recurrence"
            );
        }
    }
}

#[test]
fn zero_g_and_beta_at_the_ends_of_its_range_are_accepted() {
    for (beta, g) in [(0.0, 0.0), (2.0, 0.0), (2.0, -0.5), (0.0, -1.0)] {
        let mut x = inputs(N, 5);
        x.beta.iter_mut().for_each(|b| *b = beta);
        x.g.iter_mut().for_each(|v| *v = g);
        let o = gdn(&x).unwrap_or_else(|e| panic!("beta = {beta}, g = {g}: {e}"));
        assert!(finite(&o), "beta = {beta}, g = {g}");
        let err = max_rel_err(&o, &reference(Gdn::spec(), &x, None, None).o);
        assert!(err <= 1e-3, "beta = {beta}, g = {g}: error {err:e}");
        let o = gated(&x).unwrap();
        assert!(finite(&o), "gated, g = {g}");
    }
}

#[test]
fn beta_outside_zero_to_two_is_refused() {
    for bad in [5.0, -0.1, 2.001, f32::NAN, f32::INFINITY] {
        let mut x = inputs(N, 6);
        x.beta[at(1, 0, 39, N)] = bad;
        let e = gdn(&x).unwrap_err();
        if bad == 5.0 {
            eprintln!("beta = 5: {e}");
        }
        assert_refused(&e, "beta", (1, 0, Some(39)), BETA_RULE);
        assert_refused(
            &gdn_with_state(&x).unwrap_err(),
            "beta",
            (1, 0, Some(39)),
            BETA_RULE,
        );
    }
}

#[test]
fn the_first_refused_value_is_reported() {
    let mut x = inputs(N, 7);
    x.beta[at(0, 2, 9, N)] = 3.0;
    x.beta[at(1, 0, 1, N)] = -1.0;
    x.g[at(0, 0, 0, N)] = 1.0;
    // beta is checked before g, and within it in logical order.
    assert_refused(&gdn(&x).unwrap_err(), "beta", (0, 2, Some(9)), BETA_RULE);
}

#[test]
fn tokens_first_layout_reports_batch_head_and_token() {
    let x = inputs(N, 8);
    let dev = Cpu::default();
    let bnhd = |d: &[f32], w| common::to_bnhd(d, B, H, N, w);
    let t = |d: &[f32]| -> Tensor<(usize, usize, usize, Const<16>), f32, Cpu> {
        dev.tensor_from_vec(bnhd(d, 16), (B, N, H, Const))
    };
    let mut beta = bnhd(&x.beta, 1);
    // (batch 1, head 2, token 30) in (B, N, H) order.
    beta[(N + 30) * H + 2] = 5.0;
    let beta: Per = dev.tensor_from_vec(beta, (B, N, H));
    let e = DeltaBnhd::forward(t(&x.q), t(&x.k), t(&x.v), beta).unwrap_err();
    assert_refused(&e, "beta", (1, 2, Some(30)), BETA_RULE);
    assert!(matches!(e, Error::InvalidScalar { index, .. } if index == (N + 30) * H + 2));
    // The valid inputs run.
    let beta: Per = dev.tensor_from_vec(bnhd(&x.beta, 1), (B, N, H));
    assert!(finite(
        &DeltaBnhd::forward(t(&x.q), t(&x.k), t(&x.v), beta)
            .unwrap()
            .as_vec()
    ));
}

/// One token's inputs for `step`: (B, H, 16) and (B, H) scalars.
fn step_token(seed: u64) -> (HeadTok, HeadTok, HeadTok, Vec<f32>, Vec<f32>) {
    let x = inputs(1, seed);
    let dev = Cpu::default();
    let t = |d: &[f32]| -> HeadTok { dev.tensor_from_vec(d.to_vec(), (B, H, Const)) };
    (t(&x.q), t(&x.k), t(&x.v), x.beta, x.g)
}

fn head_scalar(x: &[f32]) -> HeadScalar {
    Cpu::default().tensor_from_vec(x.to_vec(), (B, H))
}

#[test]
fn step_and_decode_step_refuse_and_keep_the_state() {
    let mut st = St::zeros(B, H, false).unwrap();
    let mut dec = Dec::zeros(B, H, false);
    for i in 0..3 {
        let (q, k, v, beta, g) = step_token(10 + i);
        let (beta, g) = (head_scalar(&beta), head_scalar(&g));
        Gdn::step(&mut st, &q, &k, &v, &beta, &g).unwrap();
        Gdn::decode_step(&mut dec, &q, &k, &v, &beta, &g).unwrap();
    }
    let (s_before, d_before) = (st.s.as_vec(), dec.s().to_vec());
    // (batch 1, head 1) is flat index H + 1.
    let cases: [(&str, usize, f32, &str); 6] = [
        ("g_t", 0, 1.0, G_RULE),
        ("g_t", 1, f32::NAN, G_RULE),
        ("g_t", 1, f32::INFINITY, G_RULE),
        ("beta_t", 0, 5.0, BETA_RULE),
        ("beta_t", 1, -0.1, BETA_RULE),
        ("beta_t", 1, f32::NAN, BETA_RULE),
    ];
    for (arg, which, bad, rule) in cases {
        let (q, k, v, mut beta, mut g) = step_token(20);
        let target = if arg == "g_t" { &mut g } else { &mut beta };
        target[H + which] = bad;
        let (beta, g) = (head_scalar(&beta), head_scalar(&g));
        let e = Gdn::step(&mut st, &q, &k, &v, &beta, &g).unwrap_err();
        assert_refused(&e, arg, (1, which, None), rule);
        let e = Gdn::decode_step(&mut dec, &q, &k, &v, &beta, &g).unwrap_err();
        assert_refused(&e, arg, (1, which, None), rule);
        assert_eq!(st.s.as_vec(), s_before, "a refused step leaves the state");
        assert_eq!(
            dec.s(),
            d_before.as_slice(),
            "a refused decode_step leaves the state"
        );
    }
    // Gated's step too.
    let (q, k, v, _, mut g) = step_token(21);
    g[2] = 0.5;
    let mut gst = St::zeros(B, H, false).unwrap();
    let e = Gated::step(&mut gst, &q, &k, &v, &head_scalar(&g)).unwrap_err();
    assert_refused(&e, "g_t", (0, 2, None), G_RULE);
    assert!(e.to_string().contains("g = ln(0.5) = -0.693"), "{e}");
}

#[test]
fn steps_accept_the_ends_of_the_ranges_and_minus_infinity() {
    let mut st = St::zeros(B, H, false).unwrap();
    let mut dec = Dec::zeros(B, H, false);
    for (i, (beta, g)) in [
        (2.0, 0.0),
        (0.0, f32::NEG_INFINITY),
        (2.0, -1e30),
        (1.0, 0.0),
    ]
    .into_iter()
    .enumerate()
    {
        let (q, k, v, _, _) = step_token(30 + i as u64);
        let (beta, g) = (head_scalar(&[beta; B * H]), head_scalar(&[g; B * H]));
        let o1 = Gdn::step(&mut st, &q, &k, &v, &beta, &g).unwrap().as_vec();
        let o2 = Gdn::decode_step(&mut dec, &q, &k, &v, &beta, &g)
            .unwrap()
            .as_vec();
        assert!(finite(&o1), "step {i}");
        assert_eq!(o1, o2);
    }
    assert!(finite(dec.s()));
}

#[test]
fn minus_infinity_g_trains_to_finite_gradients() {
    let mut x = inputs(N, 40);
    for t in [3, 16, 17] {
        x.g[at(1, 1, t, N)] = f32::NEG_INFINITY;
    }
    let n = N;
    let (q, k, v) = (tok(&x.q, n), tok(&x.k, n), tok(&x.v, n));
    let (beta, g) = (per(&x.beta, n), per(&x.g, n));
    let o = Gdn::forward(
        q.leaky_trace(),
        k.clone(),
        v.clone(),
        beta.clone(),
        g.leaky_trace(),
    )
    .unwrap();
    let grads = o.sum::<Rank0, _>().backward();
    assert!(finite(&grads.get(&q).as_vec()), "dq");
    assert!(finite(&grads.get(&g).as_vec()), "dg");
}
