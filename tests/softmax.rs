//! Exact softmax attention (`feature_map = softmax`), tiled with the online-softmax method,
//! against a direct quadratic reference in f64: max |diff| / max |ref| <= 1e-4, every chunk size,
//! tails, both masks and layouts, every ISA variant this CPU has.

mod common;
#[path = "common/grad.rs"]
mod grad;

use attnc::prelude::*;
use attnc::spec::Layout;
use attnc::CpuIsa;
use common::*;
use dfdx::tensor::Trace;
use dfdx::tensor_ops::{Backward, SumTo};

macro_rules! softmax_spec {
    ($m:ident, $($attr:tt)*) => {
        mod $m {
            use super::*;

            #[attention(feature_map = softmax, $($attr)*)]
            pub struct Attn;

            #[test]
            fn matches_quadratic_reference() {
                let (dk, dv, c) = (Attn::HEAD_DIM, Attn::VALUE_DIM, Attn::CHUNK);
                let layout = Attn::spec().layout;
                for isa in CpuIsa::available() {
                    for n in [1, c - 1, c, c + 1, 3 * c + 7] {
                        let x = Inputs::random(2, 2, n, dk, dv, n as u64);
                        let dev = Cpu::default();
                        let shape = |d: usize| match layout {
                            Layout::Bhnd => (2usize, 2usize, n, d),
                            Layout::Bnhd => (2usize, n, 2usize, d),
                        };
                        let data = |src: &[f32], d: usize| match layout {
                            Layout::Bhnd => src.to_vec(),
                            Layout::Bnhd => to_bnhd(src, 2, 2, n, d),
                        };
                        let (qs, vs) = (shape(dk), shape(dv));
                        let q = dev.tensor_from_vec(data(&x.q, dk), (qs.0, qs.1, qs.2, Const::<{ Attn::HEAD_DIM }>));
                        let k = dev.tensor_from_vec(data(&x.k, dk), (qs.0, qs.1, qs.2, Const::<{ Attn::HEAD_DIM }>));
                        let v = dev.tensor_from_vec(data(&x.v, dv), (vs.0, vs.1, vs.2, Const::<{ Attn::VALUE_DIM }>));
                        let o = isa.run_with(|| Attn::forward(q.clone(), k.clone(), v.clone())).unwrap().unwrap().as_vec();
                        let o = match layout {
                            Layout::Bhnd => o,
                            Layout::Bnhd => from_bnhd(&o, 2, 2, n, dv),
                        };
                        let err = max_rel_err(&o, &quadratic_softmax(Attn::spec(), &x));
                        eprintln!("softmax {isa} N={n}: max-rel {err:.2e} `{}`", Attn::spec());
                        assert!(err <= 1e-4, "{isa} N={n}: error {err:.2e}");
                    }
                }
            }

            /// FlashAttention-2's backward on dfdx's tape against the f64 gradient oracle
            /// (tests/common/grad.rs): dq, dk, dv within 1e-4 max-rel.
            #[test]
            fn backward_matches_gradient_oracle() {
                let (dk, dv, c) = (Attn::HEAD_DIM, Attn::VALUE_DIM, Attn::CHUNK);
                let layout = Attn::spec().layout;
                for isa in CpuIsa::available() {
                    for n in [1, c - 1, c + 1, 3 * c + 7] {
                        let x = Inputs::random(1, 2, n, dk, dv, 40 + n as u64);
                        let ct = grad::Cotangents::random(Attn::spec(), 1, 2, n, dv, n as u64);
                        let want = grad::backward(Attn::spec(), &x, None, None, &ct);
                        let dev = Cpu::default();
                        let shape = |d: usize| match layout {
                            Layout::Bhnd => (1usize, 2usize, n, d),
                            Layout::Bnhd => (1usize, n, 2usize, d),
                        };
                        let data = |src: &[f32], d: usize| match layout {
                            Layout::Bhnd => src.to_vec(),
                            Layout::Bnhd => to_bnhd(src, 1, 2, n, d),
                        };
                        let back = |src: Vec<f32>, d: usize| match layout {
                            Layout::Bhnd => src,
                            Layout::Bnhd => from_bnhd(&src, 1, 2, n, d),
                        };
                        let (qs, vs) = (shape(dk), shape(dv));
                        let q = dev.tensor_from_vec(data(&x.q, dk), (qs.0, qs.1, qs.2, Const::<{ Attn::HEAD_DIM }>));
                        let k = dev.tensor_from_vec(data(&x.k, dk), (qs.0, qs.1, qs.2, Const::<{ Attn::HEAD_DIM }>));
                        let v = dev.tensor_from_vec(data(&x.v, dv), (vs.0, vs.1, vs.2, Const::<{ Attn::VALUE_DIM }>));
                        let d_o: Vec<f32> = ct.d_o.iter().map(|&g| g as f32).collect();
                        let d_o = dev.tensor_from_vec(data(&d_o, dv), (vs.0, vs.1, vs.2, Const::<{ Attn::VALUE_DIM }>));
                        let grads = isa.run_with(|| {
                            let o = Attn::forward(q.leaky_trace(), k.leaky_trace(), v.leaky_trace()).unwrap();
                            (o * d_o.clone()).sum::<Rank0, _>().backward()
                        }).unwrap();
                        for (name, got, d, want) in [
                            ("q", grads.get(&q).as_vec(), dk, &want.q),
                            ("k", grads.get(&k).as_vec(), dk, &want.k),
                            ("v", grads.get(&v).as_vec(), dv, &want.v),
                        ] {
                            let got: Vec<f64> = back(got, d).iter().map(|&g| g as f64).collect();
                            let err = grad::rel_err(&got, want);
                            eprintln!("softmax grad {isa} N={n}: d{name} max-rel {err:.2e} `{}`", Attn::spec());
                            assert!(err <= 1e-4, "{isa} N={n}: d{name} error {err:.2e}");
                        }
                    }
                }
            }
        }
    };
}

softmax_spec!(causal_c16, head_dim = 16, chunk = 16);
softmax_spec!(causal_c64, head_dim = 32, value_dim = 16, chunk = 64);
softmax_spec!(causal_c256, head_dim = 16, chunk = 256);
softmax_spec!(full_c16, head_dim = 16, mask = none, chunk = 16);
softmax_spec!(
    full_c128,
    head_dim = 8,
    value_dim = 24,
    mask = none,
    scale = 0.5,
    chunk = 128
);
softmax_spec!(
    causal_l2_bnhd_c32,
    head_dim = 16,
    qk_norm = l2,
    scale = 4.0,
    layout = bnhd,
    chunk = 32
);
