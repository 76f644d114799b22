//! CPU normalisation kernels: layer norm (forward, backward) and log-softmax (forward, backward).

use crate::backend::AxisLayout;
use crate::error::{Error, Result};

fn missing(op: &'static str) -> Error {
    Error::Unsupported {
        backend: "cpu".into(),
        op,
    }
}

#[allow(clippy::type_complexity)]
pub fn layer_norm(
    _x: &[f32],
    _weight: Option<&[f32]>,
    _bias: Option<&[f32]>,
    _l: AxisLayout,
    _eps: f32,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    Err(missing("layer_norm"))
}
#[allow(clippy::type_complexity)]
pub fn layer_norm_backward(
    _dy: &[f32],
    _x: &[f32],
    _weight: Option<&[f32]>,
    _mean: &[f32],
    _rstd: &[f32],
    _l: AxisLayout,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    Err(missing("layer_norm_backward"))
}
pub fn log_softmax(_x: &[f32], _l: AxisLayout) -> Result<Vec<f32>> {
    Err(missing("log_softmax"))
}
pub fn log_softmax_backward(_dy: &[f32], _y: &[f32], _l: AxisLayout) -> Result<Vec<f32>> {
    Err(missing("log_softmax_backward"))
}
