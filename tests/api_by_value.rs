//! The CPU `forward`s take tensors by value, each with its dfdx tape, as dfdx's ops do: traced
//! inputs are refused until attnc records gradients, `Module::try_forward` is `forward`, and one
//! tensor may be passed as several arguments.

use attnc::prelude::*;
use dfdx::nn::Module;
use dfdx::tensor::{Gradients, Merge, NoneTape, PutTape, Tape, Trace};

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

fn refused<T: std::fmt::Debug>(r: Result<T, Error>) {
    assert_eq!(r.unwrap_err(), Error::GradientsUnavailable);
}

/// A tape that records (`OWNS_TAPE`) and that an untaped tensor can merge: with dfdx's own
/// tapes the tape must come first (`NoneTape: Merge<OwnedTape>` does not hold, so a traced `k`
/// beside an untraced `q` does not compile); this one reaches each position's check at run time.
#[derive(Debug, Default, Clone, Copy)]
struct Recording;

impl Tape<f32, Cpu> for Recording {
    const OWNS_TAPE: bool = true;
    fn add_backward_op<F>(&mut self, _: F)
    where
        F: 'static + FnOnce(&mut Gradients<f32, Cpu>) -> Result<(), dfdx::tensor::CpuError>,
    {
    }
}

impl Merge<Recording> for Recording {
    fn merge(self, _: Recording) -> Self {
        self
    }
}

impl Merge<NoneTape> for Recording {
    fn merge(self, _: NoneTape) -> Self {
        self
    }
}

impl Merge<Recording> for NoneTape {
    fn merge(self, _: Recording) -> Self {
        self
    }
}

#[test]
fn a_traced_input_is_refused_in_every_position() {
    let dev = Cpu::default();
    let (q, k, v) = inputs(&dev);
    let (b, g) = beta_g(&dev);
    let r = |x: &X| x.clone().put_tape(Recording);
    let rs = |x: &S| x.clone().put_tape(Recording);
    refused(Plain::forward(r(&q), k.clone(), v.clone()));
    refused(Plain::forward(q.clone(), r(&k), v.clone()));
    refused(Plain::forward(q.clone(), k.clone(), r(&v)));
    refused(Plain::forward_with_state(q.clone(), k.clone(), r(&v), None));
    refused(GatedDelta::forward(
        r(&q),
        k.clone(),
        v.clone(),
        b.clone(),
        g.clone(),
    ));
    refused(GatedDelta::forward(
        q.clone(),
        r(&k),
        v.clone(),
        b.clone(),
        g.clone(),
    ));
    refused(GatedDelta::forward(
        q.clone(),
        k.clone(),
        r(&v),
        b.clone(),
        g.clone(),
    ));
    refused(GatedDelta::forward(
        q.clone(),
        k.clone(),
        v.clone(),
        rs(&b),
        g.clone(),
    ));
    refused(GatedDelta::forward(
        q.clone(),
        k.clone(),
        v.clone(),
        b.clone(),
        rs(&g),
    ));
    refused(Softmax::forward(q.clone(), r(&k), v.clone()));
    refused(Softmax::forward(q.clone(), k.clone(), r(&v)));
    // The same inputs, untraced, run.
    assert!(Plain::forward(q.clone(), k.clone(), v.clone()).is_ok());
    assert!(Softmax::forward(q.clone(), k.clone(), v.clone()).is_ok());
    assert!(GatedDelta::forward(q, k, v, b, g).is_ok());
}

#[test]
fn dfdx_traced_inputs_are_refused() {
    let dev = Cpu::default();
    let (q, k, v) = inputs(&dev);
    let (b, g) = beta_g(&dev);
    refused(Plain::forward(q.leaky_trace(), k.clone(), v.clone()));
    refused(Plain::forward(
        q.leaky_trace(),
        k.leaky_trace(),
        v.leaky_trace(),
    ));
    refused(Plain::forward_with_state(
        q.clone().traced(Gradients::leaky()),
        k.clone(),
        v.clone(),
        None,
    ));
    refused(Softmax::forward(
        q.leaky_trace(),
        k.clone(),
        v.leaky_trace(),
    ));
    refused(GatedDelta::forward(
        q.leaky_trace(),
        k,
        v,
        b.leaky_trace(),
        g.leaky_trace(),
    ));
}

#[test]
fn the_message_says_what_to_do() {
    let msg = Error::GradientsUnavailable.to_string();
    assert!(msg.contains("gradients"), "{msg}");
    assert!(msg.contains("NoneTape"), "{msg}");
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
    // Traced through the trait too.
    let (q, k, v) = inputs(&dev);
    refused(Plain.try_forward((q.leaky_trace(), k, v)));
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
