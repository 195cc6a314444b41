//! Between dfdx tensors and the kernels' flat buffers: reading a tensor in logical order
//! whatever its strides, and the (B, N, H, D) <-> (B, H, N, D) permutes of token-major layouts.

use crate::check::{checked, Problem, ScalarRule};
use crate::cpu::pool::pooled_buffer;
use crate::error::Result;
use attnc_codegen::abi::Layout;
use dfdx::shapes::{HasShape, Shape};
use dfdx::tensor::{Cpu, Tensor};
use dfdx::tensor_ops::ReshapeTo;

impl Problem {
    /// Checks a (B, H, N, D)-or-(B, N, H, D) tensor against the problem and returns its data
    /// heads first and contiguous.
    pub fn gather_tokens<S: Shape<Concrete = [usize; 4]>>(
        &self,
        arg: &'static str,
        t: &Tensor<S, f32, Cpu>,
        d: usize,
    ) -> Result<Vec<f32>> {
        self.check_tokens(arg, t.shape().concrete(), d)?;
        let data = checked(arg, contiguous_data(t))?;
        Ok(self.heads_first(data, d))
    }

    /// Checks a per-token (B, H, N)-or-(B, N, H) `beta` or `g` and returns it heads first: its
    /// shape, its values against `rule` (always, finite checking on or off) and, when finite
    /// checking is on, for NaN and infinity. The rule's check is one pass over the copy just
    /// made, B·H·N floats: nothing next to q, k and v.
    pub(crate) fn gather_rule_scalars<S: Shape<Concrete = [usize; 3]>>(
        &self,
        arg: &'static str,
        rule: ScalarRule,
        t: &Tensor<S, f32, Cpu>,
    ) -> Result<Vec<f32>> {
        self.check_scalars(arg, t.shape().concrete())?;
        let mut data = checked(arg, t.as_vec())?;
        // In the caller's layout, so that the error names the caller's (batch, head, token).
        self.check_scalar_values(arg, rule, &mut data)?;
        Ok(self.heads_first(data, 1))
    }

    /// Checks a per-head (B, H, D) decoding input.
    pub fn gather_heads<S: Shape<Concrete = [usize; 3]>>(
        &self,
        arg: &'static str,
        t: &Tensor<S, f32, Cpu>,
        d: usize,
    ) -> Result<Vec<f32>> {
        self.check_heads(arg, t.shape().concrete(), d)?;
        checked(arg, contiguous_data(t))
    }

    /// Checks a per-head (B, H) decoding input (beta_t, g_t).
    pub fn gather_head_scalars<S: Shape<Concrete = [usize; 2]>>(
        &self,
        arg: &'static str,
        t: &Tensor<S, f32, Cpu>,
    ) -> Result<Vec<f32>> {
        self.check_head_scalars(arg, t.shape().concrete())?;
        checked(arg, contiguous_data(t))
    }

    /// [`Problem::gather_head_scalars`] for `beta_t` or `g_t`, whose values are also checked
    /// against `rule` (always).
    pub(crate) fn gather_rule_head_scalars<S: Shape<Concrete = [usize; 2]>>(
        &self,
        arg: &'static str,
        rule: ScalarRule,
        t: &Tensor<S, f32, Cpu>,
    ) -> Result<Vec<f32>> {
        let mut data = self.gather_head_scalars(arg, t)?;
        self.check_head_scalar_values(arg, rule, &mut data)?;
        Ok(data)
    }

    /// (B, N, H, D) -> (B, H, N, D); identity for heads-first layouts.
    pub(crate) fn heads_first(&self, data: Vec<f32>, d: usize) -> Vec<f32> {
        match self.layout {
            Layout::Bhnd => data,
            Layout::Bnhd => permute_middle(&data, self.batch, self.tokens, self.heads, d),
        }
    }

    /// (B, H, N, D) -> the problem's layout, for outputs.
    pub fn from_heads_first(&self, data: Vec<f32>, d: usize) -> Vec<f32> {
        match self.layout {
            Layout::Bhnd => data,
            Layout::Bnhd => permute_middle(&data, self.batch, self.heads, self.tokens, d),
        }
    }
}

/// A tensor's data in logical order with one `memcpy`.
///
/// dfdx 0.13 exposes neither strides nor storage; `try_contiguous` is free for a tensor in the
/// standard layout (it shares the buffer) and materialises permuted or broadcast views, after
/// which the buffer holds exactly the logical elements and `copy_into` is one `memcpy`. (An
/// earlier probe of the layout through a gradient buffer cost a zeroed allocation as large as
/// the tensor, about a millisecond per input at N = 4096.) Should `copy_into` ever refuse the
/// buffer, dfdx's element-wise iteration is the fallback rather than a panic.
pub fn contiguous_data<S: Shape>(t: &Tensor<S, f32, Cpu>) -> Vec<f32> {
    let Ok(c) = t.clone().try_contiguous() else {
        return t.as_vec();
    };
    let mut out = pooled_buffer(c.shape().num_elements());
    let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.copy_into(&mut out)));
    match copied {
        Ok(()) => out,
        Err(_) => t.as_vec(),
    }
}

/// Swaps the two middle axes of a (A, X, Y, D) buffer, giving (A, Y, X, D).
fn permute_middle(data: &[f32], a: usize, x: usize, y: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for ai in 0..a {
        for xi in 0..x {
            for yi in 0..y {
                let src = ((ai * x + xi) * y + yi) * d;
                let dst = ((ai * y + yi) * x + xi) * d;
                if let (Some(s), Some(o)) = (data.get(src..src + d), out.get_mut(dst..dst + d)) {
                    o.copy_from_slice(s);
                }
            }
        }
    }
    out
}
