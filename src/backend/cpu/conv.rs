//! CPU convolution kernels (forward, input gradient, weight gradient).

use crate::error::{Error, Result};
use crate::shape::Conv2dGeometry;

fn missing(op: &'static str) -> Error {
    Error::Unsupported {
        backend: "cpu".into(),
        op,
    }
}

pub fn conv2d(
    _x: &[f32],
    _w: &[f32],
    _bias: Option<&[f32]>,
    _g: &Conv2dGeometry,
) -> Result<Vec<f32>> {
    Err(missing("conv2d"))
}
pub fn conv2d_input_grad(_dy: &[f32], _w: &[f32], _g: &Conv2dGeometry) -> Result<Vec<f32>> {
    Err(missing("conv2d_input_grad"))
}
pub fn conv2d_weight_grad(_x: &[f32], _dy: &[f32], _g: &Conv2dGeometry) -> Result<Vec<f32>> {
    Err(missing("conv2d_weight_grad"))
}
