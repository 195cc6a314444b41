//! `step` updates the caller's `State` in place, without touching clones of it (dfdx tensors
//! share their buffer; the update must copy on write), and works on a state whose tensors are
//! views in a non-standard layout.

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
