//! `step` updates the caller's `State` in place, without touching clones of it (dfdx tensors
//! share their buffer; the update must copy on write), and works on a state whose tensors are
//! views in a non-standard layout. `decode_step` on a `DecodeState` gives the same numbers as
//! `step` on a `State`, and refuses a state that does not fit the tokens without changing it.

use attnc::prelude::*;
use dfdx::tensor_ops::{PermuteTo, ReshapeTo};

#[attention(head_dim = 8, feature_map = elu_plus_one, normalize = sum, chunk = 16)]
struct Attn;

type St = State<usize, usize, 8, 8>;
type Tok = Tensor<(usize, usize, Const<8>), f32, Cpu>;

fn token(dev: &Cpu) -> (Tok, Tok, Tok) {
    let t = || dev.sample_normal_like(&(2, 3, Const));
    (t(), t(), t())
}

/// A state after a few steps, so it is not all zeros.
fn warm_state(dev: &Cpu) -> St {
    let mut st = St::zeros(2, 3, true).unwrap();
    for _ in 0..3 {
        let (q, k, v) = token(dev);
        Attn::step(&mut st, &q, &k, &v).unwrap();
    }
    st
}

#[test]
fn step_leaves_clones_of_the_state_unchanged() {
    let dev = Cpu::seed_from_u64(3);
    let mut st = warm_state(&dev);
    let before = st.clone();
    let (s0, z0) = (before.s.as_vec(), before.z.as_ref().unwrap().as_vec());
    let (q, k, v) = token(&dev);
    let o = Attn::step(&mut st, &q, &k, &v).unwrap().as_vec();
    // The clone still holds the old state, bit for bit.
    assert_eq!(before.s.as_vec(), s0);
    assert_eq!(before.z.as_ref().unwrap().as_vec(), z0);
    assert_ne!(st.s.as_vec(), s0, "the stepped state changed");
    // Stepping the clone gives the same output and state.
    let mut again = before;
    let o2 = Attn::step(&mut again, &q, &k, &v).unwrap().as_vec();
    assert_eq!(o, o2);
    assert_eq!(st.s.as_vec(), again.s.as_vec());
}

#[test]
fn step_reads_a_state_held_as_a_permuted_view() {
    let dev = Cpu::seed_from_u64(4);
    let st = warm_state(&dev);
    // The same S, stored (B, H, DV, F) and viewed (B, H, F, DV) through a permute.
    let stored: Tensor<(usize, usize, Const<8>, Const<8>), f32, Cpu> =
        st.s.clone()
            .permute::<_, dfdx::shapes::Axes4<0, 1, 3, 2>>()
            .contiguous();
    let view = stored.permute::<_, dfdx::shapes::Axes4<0, 1, 3, 2>>();
    let mut permuted = St {
        s: view,
        z: st.z.clone(),
    };
    let mut plain = st;
    let (q, k, v) = token(&dev);
    let o1 = Attn::step(&mut plain, &q, &k, &v).unwrap().as_vec();
    let o2 = Attn::step(&mut permuted, &q, &k, &v).unwrap().as_vec();
    assert_eq!(o1, o2);
    assert_eq!(plain.s.as_vec(), permuted.s.as_vec());
}

/// The gated delta rule: `decode_step` also takes the per-token beta and g.
#[attention(head_dim = 16, update = gated_delta, qk_norm = l2, chunk = 16)]
struct GatedDelta;

#[test]
fn decode_step_matches_step_bit_for_bit() {
    let dev = Cpu::seed_from_u64(5);
    // A normalised spec: z travels with S.
    let mut st = warm_state(&dev);
    let mut dec = DecodeState::from_state(&st);
    for _ in 0..4 {
        let (q, k, v) = token(&dev);
        let o1 = Attn::step(&mut st, &q, &k, &v).unwrap().as_vec();
        let o2 = Attn::decode_step(&mut dec, &q, &k, &v).unwrap().as_vec();
        assert_eq!(o1, o2);
    }
    assert_eq!(dec.s(), st.s.as_vec().as_slice());
    assert_eq!(dec.z(), st.z.as_ref().map(|z| z.as_vec()).as_deref());
    let back = dec.to_state().unwrap();
    assert_eq!(back.s.as_vec(), st.s.as_vec());

    // Per-token beta and g.
    let mut st = State::<usize, usize, 16, 16>::zeros(1, 2, false).unwrap();
    let mut dec = DecodeState::<usize, usize, 16, 16>::zeros(1, 2, false);
    let tok = || -> Tensor<(usize, usize, Const<16>), f32, Cpu> {
        dev.sample_normal_like(&(1, 2, Const))
    };
    for _ in 0..4 {
        let (q, k, v) = (tok(), tok(), tok());
        let beta: Tensor<(usize, usize), f32, Cpu> = dev.sample_uniform_like(&(1, 2));
        let g = dev.sample_uniform_like(&(1, 2)).negate();
        let o1 = GatedDelta::step(&mut st, &q, &k, &v, &beta, &g).unwrap();
        let o2 = GatedDelta::decode_step(&mut dec, &q, &k, &v, &beta, &g).unwrap();
        assert_eq!(o1.as_vec(), o2.as_vec());
    }
    assert_eq!(dec.s(), st.s.as_vec().as_slice());
}

#[test]
fn decode_step_refuses_a_state_of_other_heads_and_keeps_it() {
    let dev = Cpu::seed_from_u64(6);
    let mut dec = DecodeState::from_state(&warm_state(&dev));
    let before = dec.s().to_vec();
    // Tokens for 4 heads against a state of 3.
    let t = || -> Tok { dev.sample_normal_like(&(2, 4, Const)) };
    let err = Attn::decode_step(&mut dec, &t(), &t(), &t()).unwrap_err();
    assert!(
        err.to_string().contains("heads"),
        "the message names the mismatch: {err}"
    );
    assert_eq!(dec.s(), before.as_slice());
    // A state without z for a normalised spec.
    let mut no_z = DecodeState::<usize, usize, 8, 8>::zeros(2, 3, false);
    let (q, k, v) = token(&dev);
    let err = Attn::decode_step(&mut no_z, &q, &k, &v).unwrap_err();
    assert!(err.to_string().contains("normalize = sum"), "{err}");
}
