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
        Ok(record(self, weight, bias, geom, storage))
    }

    /// GELU(conv2d(x, w) + b), the same as `x.conv2d(w, b, params)?.gelu()` (and recorded as those two
    /// ops), computed in one pass where the backend fuses the activation into the convolution (both
    /// backends' GEMM epilogue).
    pub fn conv2d_gelu(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: Conv2dParams,
    ) -> Result<Tensor> {
        let geom = check("conv2d_gelu", self, weight, bias, params)?;
        let (a, h) = self.device().backend().conv2d_gelu(
            &self.storage(),
            &weight.storage(),
            bias.map(|b| b.storage()).as_ref(),
            &geom,
        )?;
        Ok(record(self, weight, bias, geom, a).gelu_computed(h))
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
/// convolutions).
fn op_name(geom: &Conv2dGeometry) -> &'static str {
    if geom.is_depthwise() {
        "conv2d_depthwise"
    } else if geom.kh == 1 && geom.kw == 1 {
        "conv2d_1x1"
    } else {
        "conv2d"
    }
}

/// Records the convolution of `x` whose output `storage` is already computed.
fn record(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geom: Conv2dGeometry,
    storage: crate::backend::Storage,
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
        op_name(&geom),
        storage,
        geom.output_shape(),
        &inputs,
        move |g| {
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
