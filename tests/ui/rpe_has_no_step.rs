use attnc::prelude::*;

// A valid `rpe = toeplitz` spec still has a `step`, but calling it does not compile: its message
// says why (no fixed-size state) and what to do instead.
#[attention(head_dim = 8, rpe = toeplitz)]
pub struct R;

fn main() {
    let mut st = attnc::State::<usize, usize, 8, 8>::zeros(1, 1, false).unwrap();
    let x: Tensor<(usize, usize, Const<8>), f32, Cpu> = Cpu::default().zeros_like(&(1, 1, Const));
    let _ = R::step(&mut st, &x, &x, &x);
}
