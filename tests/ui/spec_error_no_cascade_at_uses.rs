use attnc::prelude::*;

// One mistake in the spec: the uses of the struct below add no errors of their own.
#[attention(head_dim = 16, feature_map = elu, normalize = sum, update = gated)]
pub struct Attn;

fn main() -> Result<(), attnc::Error> {
    let dev = Cpu::default();
    let q: Tensor<Rank4<1, 2, 8, 16>, f32, _> = dev.zeros();
    let g: Tensor<Rank3<1, 2, 8>, f32, _> = dev.zeros();
    let o = Attn::forward(q.clone(), q.clone(), q.clone(), g.clone())?;
    let init = Attn::zero_state(Const::<1>, Const::<2>)?;
    let (_, mut state) = Attn::forward_with_state(q.clone(), q.clone(), o, g, Some(&init))?;
    let q_t: Tensor<Rank3<1, 2, 16>, f32, _> = dev.zeros();
    let g_t: Tensor<Rank2<1, 2>, f32, _> = dev.zeros();
    let _o_t = Attn::step(&mut state, &q_t, &q_t, &q_t, &g_t)?;
    Ok(())
}
