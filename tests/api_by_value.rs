//! The CPU `forward`s take tensors by value, each with its dfdx tape, as dfdx's ops do:
//! `Module::try_forward` is `forward`, and one tensor may be passed as several arguments.
//! (Gradients through the tape: tests/training.rs.)

use attnc::prelude::*;
use dfdx::nn::Module;
use dfdx::tensor::Trace;
use dfdx::tensor_ops::{Backward, SumTo};

#[attention(head_dim = 16, feature_map = elu_plus_one, normalize = sum, chunk = 16)]
struct Plain;

#[attention(head_dim = 16, update = gated_delta, qk_norm = l2, chunk = 16)]
struct GatedDelta;

#[attention(head_dim = 16, feature_map = softmax, chunk = 16)]
struct Softmax;

type X = Tensor<Rank4<1, 2, 24, 16>, f32, Cpu>;
type S = Tensor<Rank3<1, 2, 24>, f32, Cpu>;

fn inputs(dev: &Cpu) -> (X, X, X) {
    (
        dev.sample_normal(),
        dev.sample_normal(),
        dev.sample_normal(),
    )
}

/// Write strengths in (0, 1) and log-decays <= 0.
fn beta_g(dev: &Cpu) -> (S, S) {
    let beta: S = dev.sample_uniform();
    let g: S = dev.sample_uniform();
    (beta, -g)
}

#[test]
fn module_try_forward_is_forward() {
    let dev = Cpu::default();
    let (q, k, v) = inputs(&dev);
    let (b, g) = beta_g(&dev);
    let want = Plain::forward(q.clone(), k.clone(), v.clone()).unwrap();
    let got = Plain
        .try_forward((q.clone(), k.clone(), v.clone()))
        .unwrap();
    assert_eq!(got.as_vec(), want.as_vec());
    let want = GatedDelta::forward(q.clone(), k.clone(), v.clone(), b.clone(), g.clone()).unwrap();
    let got = GatedDelta
        .try_forward((q.clone(), k.clone(), v.clone(), b, g))
        .unwrap();
    assert_eq!(got.as_vec(), want.as_vec());
    let want = Softmax::forward(q.clone(), k.clone(), v.clone()).unwrap();
    let got = Softmax.try_forward((q, k, v)).unwrap();
    assert_eq!(got.as_vec(), want.as_vec());
    // Traced through the trait: the same output, and gradients for every input.
    let (q, k, v) = inputs(&dev);
    let want = Plain::forward(q.clone(), k.clone(), v.clone()).unwrap();
    let o = Plain
        .try_forward((q.leaky_trace(), k.leaky_trace(), v.leaky_trace()))
        .unwrap();
    assert_eq!(o.as_vec(), want.as_vec());
    let grads = o.sum::<Rank0, _>().backward();
    for t in [&q, &k, &v] {
        assert!(grads.get(t).as_vec().iter().any(|g| *g != 0.0));
    }
}

#[test]
fn one_tensor_as_q_and_k() {
    let dev = Cpu::default();
    let (x, _, v) = inputs(&dev);
    let y: X = dev.tensor(x.as_vec());
    let got = Plain::forward(x.clone(), x.clone(), v.clone()).unwrap();
    let want = Plain::forward(y.clone(), y, v.clone()).unwrap();
    assert_eq!(got.as_vec(), want.as_vec());
    let got = Softmax::forward(x.clone(), x.clone(), x.clone()).unwrap();
    assert_eq!(got.shape(), x.shape());
}
