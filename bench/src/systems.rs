//! Issue #16's systems beside plain linear attention (dk = dv = 64, chunk 64): momentum,
//! a short convolution, rpe's FFT kernel; and rpe's cost against N (the N log N curve).

use crate::specs::{Inputs, Tok};
use attnc::prelude::*;

/// Plain causal linear attention with heavy-ball momentum.
#[attention(head_dim = 64, update = momentum(mu = 0.9), chunk = 64)]
pub struct Momentum;

/// A short convolution (width 4) before plain causal linear attention.
#[attention(head_dim = 64, short_conv = 4, chunk = 64)]
pub struct ShortConv;

/// Causal linear attention with Toeplitz positional weights (FFT).
#[attention(head_dim = 64, rpe = toeplitz)]
pub struct Rpe;

/// The systems benchmarked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    /// `update = momentum(mu = 0.9)`.
    Momentum,
    /// `short_conv = 4`.
    ShortConv,
    /// `rpe = toeplitz`.
    Rpe,
}

impl System {
    /// All of them.
    pub const ALL: [System; 3] = [System::Momentum, System::ShortConv, System::Rpe];

    /// The row name.
    pub fn name(self) -> &'static str {
        match self {
            System::Momentum => "momentum(mu = 0.9)",
            System::ShortConv => "short_conv = 4",
            System::Rpe => "rpe = toeplitz",
        }
    }
}

/// Convolution weights (H, 64, 4) and log-weights (H, 2N - 1) of one shape.
pub struct Extras {
    conv: Tensor<(usize, Const<64>, Const<4>), f32, Cpu>,
    bias: Tensor<(usize, usize), f32, Cpu>,
}

impl Extras {
    /// Random extras for H heads and N tokens.
    pub fn random(h: usize, n: usize) -> Extras {
        let dev = Cpu::seed_from_u64(17);
        let conv: Tensor<(usize, Const<64>, Const<4>), f32, Cpu> =
            dev.sample_normal_like(&(h, Const, Const));
        let bias: Tensor<(usize, usize), f32, Cpu> = dev.sample_normal_like(&(h, 2 * n - 1));
        Extras {
            conv: conv * 0.5,
            bias: bias * 0.1,
        }
    }
}

/// `forward` of a system.
pub fn forward(s: System, x: &Inputs, e: &Extras) -> Result<Tok, Error> {
    let (q, k, v) = (x.q.clone(), x.k.clone(), x.v.clone());
    match s {
        System::Momentum => Momentum::forward(q, k, v),
        System::ShortConv => {
            ShortConv::forward(q, k, v, e.conv.clone(), e.conv.clone(), e.conv.clone())
        }
        System::Rpe => Rpe::forward(q, k, v, e.bias.clone()),
    }
}
