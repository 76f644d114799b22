//! GELU, exact (erf) form, as in ConvNeXt.
//!
//! Forward: y = x·Φ(x), Φ(x) = ½(1 + erf(x/√2)) the standard normal CDF.
//! Derivative: ∂y/∂x = Φ(x) + x·φ(x), φ(x) = e^(−x²/2)/√(2π) the normal density.
//! The backward runs one fused kernel, `BinaryOp::GeluBackward`, computing g·GELU′(x), over the incoming
//! gradient's own buffer where the backend can and nothing else holds that gradient
//! ([`Backend::binary_in_place`](crate::backend::Backend::binary_in_place)). A convolution followed by GELU
//! has its own op, [`Tensor::conv2d_gelu`], which keeps GELU′ from the forward instead of x.

use super::binary::over_gradient;
use super::unary;
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::tensor::Tensor;

impl Tensor {
    /// GELU(x) = x·Φ(x) elementwise.
    pub fn gelu(&self) -> Result<Tensor> {
        let x = self.detach();
        unary(self, "gelu", UnaryOp::Gelu, move |g| {
            Ok(vec![Some(over_gradient(
                "gelu_backward",
                BinaryOp::GeluBackward,
                g,
                &x,
            )?)])
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::{BinaryOp, Device};
    use crate::tensor::Tensor;

    /// GELU's backward writes over its incoming gradient only where nothing else holds that gradient: with
    /// h = GELU(x) and both h and b summed into one output, the add rule hands the same gradient to h and
    /// to b; b's must stay ∂L/∂(h + b), untouched by h's backward. And the result, in place or not, is the
    /// separate kernel's, g·GELU′(x), bit for bit.
    #[test]
    fn the_backward_writes_in_place_only_over_a_gradient_no_one_else_holds() {
        let dev = Device::cpu();
        let xv: Vec<f32> = (0..5000).map(|i| (i as f32 - 2500.0) / 600.0).collect();
        let cv: Vec<f32> = (0..5000).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect();
        let x = Tensor::param(&xv, [5000], &dev).unwrap();
        // The separate kernel's g·GELU′(x), with g = ∂L/∂h = c.
        let c = Tensor::from_slice(&cv, [5000], &dev).unwrap();
        let (want, _) =
            super::super::binary::broadcast_kernel("gelu_backward", BinaryOp::GeluBackward, &c, &x)
                .unwrap();
        let want = dev.backend().download(&want).unwrap();
        let b = Tensor::param(&vec![0.25; 5000], [5000], &dev).unwrap();
        // The gradients of Σ c·t.
        let weighted_sum_grads = |t: Tensor| t.mul(&c)?.sum_all()?.backward();
        // Unique: the gradient of h comes from mul's rule alone.
        let g = weighted_sum_grads(x.gelu().unwrap()).unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec().unwrap(), want);
        // Shared: add hands one gradient to both h and b.
        let g = weighted_sum_grads(x.gelu().unwrap().add(&b).unwrap()).unwrap();
        assert_eq!(g.get(&b).unwrap().to_vec().unwrap(), cv);
        assert_eq!(g.get(&x).unwrap().to_vec().unwrap(), want);
    }
}
