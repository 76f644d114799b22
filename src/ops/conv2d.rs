//! 2-D convolution, NCHW input and OIHW weight, with stride, padding, dilation and groups (depthwise
//! included) and an optional per-channel bias.
//!
//! Forward (cross-correlation, as in every deep-learning library), for group g of output channel o:
//!   y[n, o, i, j] = b\[o\] + Σ_{c ∈ group g} Σ_{p, q} x[n, c, i·s_h + p·d_h − pad_h, j·s_w + q·d_w − pad_w] · w[o, c − g·C/G, p, q]
//! with out-of-range input positions read as zero.
//! Shape algebra: H_out = (H + 2·pad_h − d_h·(kh − 1) − 1) / s_h + 1 (likewise W_out); w is (O, C/G, kh, kw).
//!
//! Backward, with G = ∂L/∂y (y is linear in x and in w):
//! - ∂L/∂x[n, c, h, w] = Σ over every (o, i, j, p, q) that read x[n, c, h, w] of G[n, o, i, j]·w[o, c', p, q]:
//!   the transposed convolution of G with w ([`Backend::conv2d_input_grad`](crate::backend::Backend::conv2d_input_grad));
//! - ∂L/∂w[o, c', p, q] = Σ_{n, i, j} G[n, o, i, j]·x[n, c, i·s_h + p·d_h − pad_h, j·s_w + q·d_w − pad_w]:
//!   the correlation of x with G ([`Backend::conv2d_weight_grad`](crate::backend::Backend::conv2d_weight_grad));
//! - ∂L/∂b\[o\] = Σ_{n, i, j} G[n, o, i, j].
//!
//! In matrix form per image and group (im2col view): Y_g = W_g · X̃_g with W_g (O/G, C/G·kh·kw) and X̃_g the
//! (C/G·kh·kw, H_out·W_out) patch matrix, so ∂W_g = Σ_n G_g X̃_gᵀ and ∂X̃_g = W_gᵀ G_g (scattered back to x).
//!
//! With GELU ([`Tensor::conv2d_gelu`]): z = GELU(y), one op. Its forward keeps GELU′(y) instead of y (the
//! backends compute it with GELU(y): the CPU in one pass over y, the GPU in the GEMM's epilogue), so the
//! backward is G = ∂L/∂z ⊙ GELU′(y), one multiply, then the rules above: no erf is evaluated twice.

use super::binary::over_gradient;
use crate::backend::BinaryOp;
use crate::error::{Error, Result};
use crate::shape::{Conv2dGeometry, Conv2dParams, Shape};
use crate::tensor::Tensor;

impl Tensor {
    /// Convolves this NCHW tensor with an OIHW `weight` (plus an optional bias of shape (O)).
    ///
    /// ```
    /// use liera::{Conv2dParams, Device, Tensor};
    /// let dev = Device::cpu();
    /// // x (N=1, C=2, 5×5), a grouped 3×3 kernel (O=4, C/groups=1), stride 2, padding 1.
    /// let x = Tensor::param(&[0.1; 2 * 5 * 5], [1, 2, 5, 5], &dev)?;
    /// let w = Tensor::param(&[0.2; 4 * 3 * 3], [4, 1, 3, 3], &dev)?;
    /// let b = Tensor::param(&[0.0; 4], [4], &dev)?;
    /// let params = Conv2dParams::default().stride(2).padding(1).groups(2);
    /// let y = x.conv2d(&w, Some(&b), params)?;
    /// assert_eq!(y.dims(), [1, 4, 3, 3]); // (5 + 2·1 − 3) / 2 + 1 = 3
    /// // dX has x's shape, dW the kernel's (summed over the batch), db one entry per output channel.
    /// let grads = y.sum_all()?.backward()?;
    /// assert_eq!(grads.get(&x).unwrap().dims(), [1, 2, 5, 5]);
    /// assert_eq!(grads.get(&w).unwrap().dims(), [4, 1, 3, 3]);
    /// assert_eq!(grads.get(&b).unwrap().to_vec()?, vec![9.0; 4]); // Σ over the 3×3 outputs
    /// // Invalid geometry is an error, not a panic: 3 input channels cannot split into 2 groups.
    /// let odd = Tensor::zeros([1, 3, 5, 5], &dev)?;
    /// assert!(odd.conv2d(&w, None, params).is_err());
    /// # Ok::<(), liera::Error>(())
    /// ```
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: Conv2dParams,
    ) -> Result<Tensor> {
        let geom = check("conv2d", self, weight, bias, params)?;
        let storage = self.device().backend().conv2d(
            &self.storage(),
            &weight.storage(),
            bias.map(|b| b.storage()).as_ref(),
            &geom,
        )?;
        Ok(record(self, weight, bias, geom, storage, None))
    }

    /// GELU(conv2d(x, w) + b): the values and gradients of `x.conv2d(w, b, params)?.gelu()`, as one op
    /// whose forward computes GELU and GELU′ together ([`Backend::conv2d_gelu`]) and whose backward
    /// multiplies by the GELU′ it kept.
    ///
    /// [`Backend::conv2d_gelu`]: crate::backend::Backend::conv2d_gelu
    pub fn conv2d_gelu(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: Conv2dParams,
    ) -> Result<Tensor> {
        let geom = check("conv2d_gelu", self, weight, bias, params)?;
        let (z, dz) = self.device().backend().conv2d_gelu(
            &self.storage(),
            &weight.storage(),
            bias.map(|b| b.storage()).as_ref(),
            &geom,
        )?;
        let derivative = Tensor::from_storage(dz, geom.output_shape(), self.device());
        Ok(record(self, weight, bias, geom, z, Some(derivative)))
    }
}

/// Checks devices and shapes; returns the convolution's geometry.
fn check(
    op: &'static str,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: Conv2dParams,
) -> Result<Conv2dGeometry> {
    x.check_device(op, weight)?;
    let geom = Conv2dGeometry::new(x.shape(), weight.shape(), params)?;
    if let Some(b) = bias {
        x.check_device(op, b)?;
        if b.dims() != [geom.c_out] {
            return Err(Error::shape(
                op,
                format!(
                    "bias must have shape [{}] for weight {}, got {}",
                    geom.c_out,
                    weight.shape(),
                    b.shape()
                ),
            ));
        }
    }
    Ok(geom)
}

/// The tape's name for a convolution, by kind, so that tapes and op profiles tell a ConvNeXt's layers
/// apart: depthwise, 1×1 (the pointwise layers), or any other (the stem's and downsampling patchify
/// convolutions); with `_gelu` for [`Tensor::conv2d_gelu`].
fn op_name(geom: &Conv2dGeometry, gelu: bool) -> &'static str {
    match (geom.is_depthwise(), geom.kh == 1 && geom.kw == 1, gelu) {
        (true, _, false) => "conv2d_depthwise",
        (true, _, true) => "conv2d_depthwise_gelu",
        (false, true, false) => "conv2d_1x1",
        (false, true, true) => "conv2d_1x1_gelu",
        (false, false, false) => "conv2d",
        (false, false, true) => "conv2d_gelu",
    }
}

/// Records the convolution of `x` whose output `storage` is already computed; with `gelu_derivative`,
/// GELU′ of the convolution, the output is GELU of it ([`Tensor::conv2d_gelu`]).
fn record(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geom: Conv2dGeometry,
    storage: crate::backend::Storage,
    gelu_derivative: Option<Tensor>,
) -> Tensor {
    let (saved_x, w) = (x.detach(), weight.detach());
    let need = [
        x.requires_grad(),
        weight.requires_grad(),
        bias.is_some_and(|b| b.requires_grad()),
    ];
    let has_bias = bias.is_some();
    let mut inputs = vec![x, weight];
    inputs.extend(bias);
    Tensor::from_op(
        op_name(&geom, gelu_derivative.is_some()),
        storage,
        geom.output_shape(),
        &inputs,
        move |g| {
            // Through GELU first: ∂L/∂y = ∂L/∂z ⊙ GELU′(y).
            let through_gelu;
            let g = match &gelu_derivative {
                Some(d) => {
                    through_gelu = over_gradient("conv2d_gelu_backward", BinaryOp::Mul, g, d)?;
                    &through_gelu
                }
                None => g,
            };
            let backend = g.device().backend();
            let dx = if need[0] {
                let s = backend.conv2d_input_grad(&g.storage(), &w.storage(), &geom)?;
                Some(Tensor::from_storage(s, geom.input_shape(), g.device()))
            } else {
                None
            };
            let dev = g.device();
            let (dw, db) = match (need[1], has_bias && need[2]) {
                // Both from one pass where the backend fuses them.
                (true, true) => {
                    let (dw, db) =
                        backend.conv2d_weight_bias_grad(&saved_x.storage(), &g.storage(), &geom)?;
                    (Some(dw), Some(db))
                }
                (true, false) => (
                    Some(backend.conv2d_weight_grad(&saved_x.storage(), &g.storage(), &geom)?),
                    None,
                ),
                (false, true) => (None, Some(g.sum(&[0, 2, 3], false)?.storage())),
                (false, false) => (None, None),
            };
            let mut grads = vec![
                dx,
                dw.map(|s| Tensor::from_storage(s, geom.weight_shape(), dev)),
            ];
            if has_bias {
                grads.push(db.map(|s| Tensor::from_storage(s, [geom.c_out], dev)));
            }
            Ok(grads)
        },
    )
}

/// The output shape of a convolution of `x` with a weight of shape `w` (for callers that plan buffers).
pub fn conv2d_output_shape(x: &Shape, w: &Shape, params: Conv2dParams) -> Result<Shape> {
    Ok(Conv2dGeometry::new(x, w, params)?.output_shape())
}

#[cfg(test)]
mod tests {
    use crate::backend::Device;
    use crate::shape::Conv2dParams;
    use crate::tensor::Tensor;

    /// conv2d_gelu is `conv2d` then `gelu`, bit for bit on the CPU, in its value and in every gradient,
    /// though its backward multiplies by the GELU′ its forward kept instead of evaluating GELU′ again: for
    /// a 1×1 convolution (one GEMM over the batch, several tiles and a partial one) and a 3×3 one (patch
    /// matrices), whose outputs cover both signs and GELU's curved middle.
    #[test]
    fn conv2d_gelu_gives_the_values_and_gradients_of_conv2d_then_gelu() {
        let dev = Device::cpu();
        let wave = |n: usize, scale: f32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * scale)
                .collect()
        };
        for (k, pad) in [(1, 0), (3, 1)] {
            let (c_in, c_out) = (24, 40);
            let x = Tensor::param(&wave(2 * c_in * 81, 1.0), [2, c_in, 9, 9], &dev).unwrap();
            let w =
                Tensor::param(&wave(c_out * c_in * k * k, 0.6), [c_out, c_in, k, k], &dev).unwrap();
            let b = Tensor::param(&wave(c_out, 0.3), [c_out], &dev).unwrap();
            let c = Tensor::from_slice(&wave(2 * c_out * 81, 2.0), [2, c_out, 9, 9], &dev).unwrap();
            let params = Conv2dParams::default().padding(pad);
            let run = |fused: bool| {
                let z = if fused {
                    x.conv2d_gelu(&w, Some(&b), params).unwrap()
                } else {
                    x.conv2d(&w, Some(&b), params).unwrap().gelu().unwrap()
                };
                let grads = z.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
                let mut out = vec![z.to_vec().unwrap()];
                for t in [&x, &w, &b] {
                    out.push(grads.get(t).unwrap().to_vec().unwrap());
                }
                out
            };
            let (fused, plain) = (run(true), run(false));
            for (what, (f, p)) in ["value", "dx", "dw", "db"]
                .iter()
                .zip(fused.iter().zip(&plain))
            {
                assert_eq!(f, p, "{k}×{k} {what}");
            }
            assert!(fused[0].iter().any(|&v| v < 0.0) && fused[0].iter().any(|&v| v > 1.0));
        }
    }
}
