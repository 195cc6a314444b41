//! Training through dfdx's tape (the README's Training section): the tape plumbing against dfdx's own autograd of
//! the quadratic masked composition, gradients by tensor id through one tensor used twice,
//! permuted and broadcast views, the final state's gradient, and one SGD step of a small model
//! against the step computed from the f64 gradient oracle (tests/common/grad.rs).
//!
//! Tolerance: max |attnc - reference| / max |reference| <= 1e-4 (the README's gradient bound).

mod common;
#[path = "common/grad.rs"]
mod grad;

use attnc::prelude::*;
use dfdx::nn::{builders, BuildOnDevice, Module};
use dfdx::optim::{Optimizer, Sgd, SgdConfig};
use dfdx::shapes::Rank5;
use dfdx::tensor::{OwnedTape, Trace};
use dfdx::tensor_ops::{Backward, BroadcastTo, PermuteTo, ReshapeTo, SumTo, TryMatMul, TryMul};

const TOL: f64 = 1e-4;

/// Causal linear attention with the identity map, no normaliser: o = (tril(scale Q K^T)) V.
#[attention(head_dim = 16, chunk = 16)]
struct Identity;

/// elu+1 with the normaliser.
#[attention(head_dim = 16, feature_map = elu_plus_one, normalize = sum, chunk = 16)]
struct Elu;

type X = Tensor<Rank4<1, 2, 24, 16>, f32, Cpu>;

fn rel(got: &[f32], want: &[f32]) -> f64 {
    let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    let got: Vec<f64> = got.iter().map(|&v| v as f64).collect();
    grad::rel_err(&got, &want)
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

#[test]
fn matches_dfdx_autograd_of_the_quadratic_composition() {
    let dev = Cpu::default();
    let (q, k, v, d_o): (X, X, X, X) = (
        dev.sample_normal(),
        dev.sample_normal(),
        dev.sample_normal(),
        dev.sample_normal(),
    );
    let o = Identity::forward(q.leaky_trace(), k.leaky_trace(), v.leaky_trace()).unwrap();
    let grads = o.try_mul(d_o.clone()).unwrap().sum::<Rank0, _>().backward();
    // dfdx's own ops: scores, causal mask, values.
    let mask: Tensor<Rank2<24, 24>, f32, Cpu> = dev.tensor(
        (0..24 * 24)
            .map(|i| if i % 24 <= i / 24 { 0.25 } else { 0.0 })
            .collect::<Vec<f32>>(),
    );
    let kt = k.leaky_trace().permute::<Rank4<1, 2, 16, 24>, _>();
    let scores = q.leaky_trace().matmul(kt) * mask.broadcast::<Rank4<1, 2, 24, 24>, _>();
    let o_ref = scores.matmul(v.leaky_trace());
    let want = (o_ref * d_o).sum::<Rank0, _>().backward();
    for (name, t) in [("q", &q), ("k", &k), ("v", &v)] {
        let err = rel(&grads.get(t).as_vec(), &want.get(t).as_vec());
        eprintln!("d{name} vs dfdx autograd: max-rel {err:.2e}");
        assert!(err <= TOL, "d{name}: {err:.2e}");
    }
}

#[test]
fn one_tensor_as_q_and_k_gets_both_gradients() {
    let dev = Cpu::default();
    let (x, v, d_o): (X, X, X) = (
        dev.sample_normal(),
        dev.sample_normal(),
        dev.sample_normal(),
    );
    let (a, b): (X, X) = (dev.tensor(x.as_vec()), dev.tensor(x.as_vec()));
    let o = Elu::forward(x.leaky_trace(), x.leaky_trace(), v.clone()).unwrap();
    let got = (o * d_o.clone()).sum::<Rank0, _>().backward();
    let o = Elu::forward(a.leaky_trace(), b.leaky_trace(), v).unwrap();
    let want = (o * d_o).sum::<Rank0, _>().backward();
    let sum = add(&want.get(&a).as_vec(), &want.get(&b).as_vec());
    let err = rel(&got.get(&x).as_vec(), &sum);
    assert!(err <= TOL, "dq + dk through one tensor: {err:.2e}");
}

#[test]
fn permuted_and_broadcast_inputs_get_their_gradients() {
    let dev = Cpu::default();
    // q given tokens first and permuted (a strided view); v one (N, D) matrix broadcast over
    // batch and heads.
    let q_bnhd: Tensor<Rank4<1, 24, 2, 16>, f32, Cpu> = dev.sample_normal();
    let v_row: Tensor<Rank2<24, 16>, f32, Cpu> = dev.sample_normal();
    let (k, d_o): (X, X) = (dev.sample_normal(), dev.sample_normal());
    let q_view = q_bnhd.leaky_trace().permute::<Rank4<1, 2, 24, 16>, _>();
    let v_view = v_row.leaky_trace().broadcast::<Rank4<1, 2, 24, 16>, _>();
    let o = Elu::forward(q_view, k.clone(), v_view).unwrap();
    let got = (o * d_o.clone()).sum::<Rank0, _>().backward();
    // The same values, contiguous.
    let q: X = q_bnhd
        .clone()
        .permute::<Rank4<1, 2, 24, 16>, _>()
        .contiguous();
    let v: X = v_row
        .clone()
        .broadcast::<Rank4<1, 2, 24, 16>, _>()
        .contiguous();
    let o = Elu::forward(q.leaky_trace(), k, v.leaky_trace()).unwrap();
    let want = (o * d_o).sum::<Rank0, _>().backward();
    let dq_bnhd = want
        .get(&q)
        .permute::<Rank4<1, 24, 2, 16>, _>()
        .contiguous()
        .as_vec();
    let err = rel(&got.get(&q_bnhd).as_vec(), &dq_bnhd);
    assert!(err <= TOL, "dq through a permuted view: {err:.2e}");
    let dv_row = want.get(&v).sum::<Rank2<24, 16>, _>().as_vec();
    let err = rel(&got.get(&v_row).as_vec(), &dv_row);
    assert!(err <= TOL, "dv through a broadcast: {err:.2e}");
}

/// The contract's example: a loss on the output and on the final state, from an initial state;
/// `grads.get(&init.s)` is dS_0. Checked against the oracle.
#[test]
fn final_state_gradient_flows_to_the_initial_state() {
    let dev = Cpu::default();
    let spec = Identity::spec();
    let x = common::Inputs::random(1, 2, 24, 16, 16, 3);
    let tensor = |d: &[f32]| -> X { dev.tensor(d.to_vec()) };
    let (q, k, v) = (tensor(&x.q), tensor(&x.k), tensor(&x.v));
    let init = State::<Const<1>, Const<2>, 16, 16> {
        s: dev.sample_normal(),
        z: None,
    };
    let ct = grad::Cotangents::random(spec, 1, 2, 24, 16, 5);
    let f32s = |d: &[f64]| d.iter().map(|&g| g as f32).collect::<Vec<f32>>();
    let (d_o, d_s): (X, Tensor<Rank4<1, 2, 16, 16>, f32, Cpu>) =
        (dev.tensor(f32s(&ct.d_o)), dev.tensor(f32s(&ct.d_s)));
    let (o, fin) = Identity::forward_with_state(
        q.leaky_trace(),
        k.leaky_trace(),
        v.leaky_trace(),
        Some(&init),
    )
    .unwrap();
    let loss = (o * d_o).sum::<Rank0, _>()
        + (fin.s.retaped::<OwnedTape<f32, Cpu>>() * d_s).sum::<Rank0, _>();
    let grads = loss.backward();
    let want = grad::backward(spec, &x, Some(&init.s.as_vec()), None, &ct);
    for (name, got, want) in [
        ("q", grads.get(&q).as_vec(), &want.q),
        ("k", grads.get(&k).as_vec(), &want.k),
        ("v", grads.get(&v).as_vec(), &want.v),
        ("s0", grads.get(&init.s).as_vec(), &want.s0),
    ] {
        let got: Vec<f64> = got.iter().map(|&g| g as f64).collect();
        let err = grad::rel_err(&got, want);
        assert!(err <= TOL, "d{name}: {err:.2e}");
    }
}

/// A small model: q, k, v are three linear maps of x; one step of dfdx's SGD equals
/// W - lr dW with dW from the oracle's dq, dk, dv through the linear maps.
#[test]
fn one_sgd_step_equals_the_oracle_step() {
    type Proj = (
        builders::Linear<16, 16>,
        builders::Linear<16, 16>,
        builders::Linear<16, 16>,
    );
    let dev = Cpu::default();
    let mut model = <Proj as BuildOnDevice<Cpu, f32>>::build_on_device(&dev);
    let before = model.clone();
    let x: Tensor<Rank3<2, 24, 16>, f32, Cpu> = dev.sample_normal();
    let d_o: X = dev.sample_normal();
    let lr = 0.1;
    let mut opt = Sgd::new(
        &model,
        SgdConfig {
            lr,
            momentum: None,
            weight_decay: None,
        },
    );
    let heads = |t: Tensor<Rank3<2, 24, 16>, f32, Cpu, OwnedTape<f32, Cpu>>| {
        t.reshape::<Rank4<1, 2, 24, 16>>()
    };
    let q = heads(model.0.forward(x.leaky_trace()));
    let k = heads(model.1.forward(x.leaky_trace()));
    let v = heads(model.2.forward(x.leaky_trace()));
    let (qd, kd, vd) = (q.as_vec(), k.as_vec(), v.as_vec());
    let o = Identity::forward(q, k, v).unwrap();
    let grads = (o * d_o.clone()).sum::<Rank0, _>().backward();
    opt.update(&mut model, &grads).unwrap();

    // The oracle: dq, dk, dv, then dW = dY^T X and db = sum dY for each map.
    let xs = common::Inputs {
        q: qd,
        k: kd,
        v: vd,
        ..common::Inputs::random(1, 2, 24, 16, 16, 0)
    };
    let ct = grad::Cotangents {
        d_o: d_o.as_vec().iter().map(|&g| g as f64).collect(),
        d_s: Vec::new(),
        d_z: Vec::new(),
    };
    let want = grad::backward(Identity::spec(), &xs, None, None, &ct);
    let xv = x.as_vec();
    let layers = [
        (&before.0, &model.0, &want.q),
        (&before.1, &model.1, &want.k),
        (&before.2, &model.2, &want.v),
    ];
    for (i, (old, new, dy)) in layers.into_iter().enumerate() {
        let mut dw = vec![0.0f64; 16 * 16];
        let mut db = vec![0.0f64; 16];
        for t in 0..2 * 24 {
            for o in 0..16 {
                db[o] += dy[t * 16 + o];
                for j in 0..16 {
                    dw[o * 16 + j] += dy[t * 16 + o] * xv[t * 16 + j] as f64;
                }
            }
        }
        let step = |a: &[f32], b: &[f32]| -> Vec<f64> {
            a.iter().zip(b).map(|(a, b)| (a - b) as f64 / lr).collect()
        };
        let err_w = grad::rel_err(&step(&old.weight.as_vec(), &new.weight.as_vec()), &dw);
        let err_b = grad::rel_err(&step(&old.bias.as_vec(), &new.bias.as_vec()), &db);
        eprintln!("layer {i}: SGD step vs oracle: weight {err_w:.2e}, bias {err_b:.2e}");
        // The step is recovered from f32 weights: (W - W') / lr loses about 1e-7 / (lr |dW|).
        assert!(
            err_w <= 1e-3 && err_b <= 1e-3,
            "layer {i}: {err_w:.2e} {err_b:.2e}"
        );
    }
}

/// A loss on the final state alone (the output's term multiplied by zero, so the closure on the
/// output's tape runs): dq, dk, dv and dS_0 are those of <S_N, dS> alone.
#[test]
fn a_loss_on_the_final_state_alone() {
    let dev = Cpu::default();
    let spec = Elu::spec();
    let x = common::Inputs::random(1, 2, 24, 16, 16, 9);
    let tensor = |d: &[f32]| -> X { dev.tensor(d.to_vec()) };
    let (q, k, v) = (tensor(&x.q), tensor(&x.k), tensor(&x.v));
    let mut ct = grad::Cotangents::random(spec, 1, 2, 24, 16, 11);
    ct.d_o.iter_mut().for_each(|g| *g = 0.0);
    ct.d_z.iter_mut().for_each(|g| *g = 0.0);
    let d_s: Tensor<Rank4<1, 2, 16, 16>, f32, Cpu> =
        dev.tensor(ct.d_s.iter().map(|&g| g as f32).collect::<Vec<f32>>());
    let (o, fin) = Elu::forward_with_state(
        q.leaky_trace(),
        k.leaky_trace(),
        v.leaky_trace(),
        None::<&State<Const<1>, Const<2>, 16, 16>>,
    )
    .unwrap();
    let loss = (fin.s.retaped::<OwnedTape<f32, Cpu>>() * d_s).sum::<Rank0, _>()
        + o.sum::<Rank0, _>() * 0.0;
    let grads = loss.backward();
    let want = grad::backward(spec, &x, None, None, &ct);
    for (name, got, want) in [
        ("q", grads.get(&q).as_vec(), &want.q),
        ("k", grads.get(&k).as_vec(), &want.k),
        ("v", grads.get(&v).as_vec(), &want.v),
    ] {
        let got: Vec<f64> = got.iter().map(|&g| g as f64).collect();
        let err = grad::rel_err(&got, want);
        assert!(err <= TOL, "d{name}: {err:.2e}");
    }
}

/// Grouped-query attention (k, v with fewer heads, each shared by a group of q heads) composes
/// from dfdx's ops: a new axis broadcast over the group, then a reshape to H heads (one copy,
/// which the runtime's heads-first gather would make anyway). Its output equals the forward of
/// explicitly repeated k, v, and the tape sums each group's gradients into the shared head.
#[test]
fn grouped_kv_heads_compose_by_broadcast() {
    let dev = Cpu::default();
    let q: X = dev.sample_normal();
    let (k1, v1): (
        Tensor<Rank4<1, 1, 24, 16>, f32, Cpu>,
        Tensor<Rank4<1, 1, 24, 16>, f32, Cpu>,
    ) = (dev.sample_normal(), dev.sample_normal());
    let d_o: X = dev.sample_normal();
    // One kv head shared by both q heads.
    let repeat = |t: Tensor<Rank4<1, 1, 24, 16>, f32, Cpu, OwnedTape<f32, Cpu>>| {
        t.broadcast::<Rank5<1, 1, 2, 24, 16>, _>()
            .reshape::<Rank4<1, 2, 24, 16>>()
    };
    let o = Elu::forward(
        q.leaky_trace(),
        repeat(k1.leaky_trace()),
        repeat(v1.leaky_trace()),
    )
    .unwrap();
    let o_vals = o.as_vec();
    let grads = o.try_mul(d_o.clone()).unwrap().sum::<Rank0, _>().backward();

    // The reference: k and v repeated by hand, as independent leaves.
    let twice = |t: &Tensor<Rank4<1, 1, 24, 16>, f32, Cpu>| -> X {
        let data = t.as_vec();
        dev.tensor([data.clone(), data].concat())
    };
    let (k2, v2) = (twice(&k1), twice(&v1));
    let o_ref = Elu::forward(q.leaky_trace(), k2.leaky_trace(), v2.leaky_trace()).unwrap();
    assert!(rel(&o_vals, &o_ref.as_vec()) <= TOL);
    let want = o_ref.try_mul(d_o).unwrap().sum::<Rank0, _>().backward();
    let group_sum = |g: Vec<f32>| add(&g[..24 * 16], &g[24 * 16..]);
    let dk = group_sum(want.get(&k2).as_vec());
    let dv = group_sum(want.get(&v2).as_vec());
    assert!(rel(&grads.get(&k1).as_vec(), &dk) <= TOL);
    assert!(rel(&grads.get(&v1).as_vec(), &dv) <= TOL);
}
