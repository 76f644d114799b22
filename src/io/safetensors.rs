//! safetensors files ↔ named f32 arrays. The format: 8-byte little-endian header length, a JSON header
//! (name → dtype, shape, byte offsets; optional `__metadata__`), then the raw little-endian data.
//!
//! Reading accepts F32, and F16/BF16 converted exactly to f32 (every half value is an f32 value); any other
//! dtype is an error naming the key and the dtype. Truncated or corrupt files are errors, never panics
//! (the `safetensors` crate validates the header, offsets and sizes).

use super::{atomic_write, io_error};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// An array on the host, as read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The values, row-major, converted to f32.
    pub data: Vec<f32>,
}

fn format_error(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.display().to_string(),
        msg: msg.into(),
    }
}

/// f16 bits → f32 (exact): sign, 5-bit exponent (bias 15), 10-bit mantissa; subnormals, inf and NaN kept.
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value m·2⁻²⁴; normalise it.
            let v = m as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Reads every tensor of a safetensors file, sorted by name.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, HostTensor)>> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    read_safetensors_bytes(path, &bytes)
}

/// Like [`read_safetensors`] from bytes already in memory (`path` only names the source in errors).
pub fn read_safetensors_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<(String, HostTensor)>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format_error(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect(),
            other => {
                return Err(format_error(
                    path,
                    format!(
                        "tensor `{name}` has dtype {other}; only F32 (and F16/BF16, converted) are supported"
                    ),
                ))
            }
        };
        out.push((
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                data,
            },
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The string metadata (`__metadata__`) of a safetensors file held in `bytes` (empty if it has none);
/// `path` only names the source in errors.
pub fn read_safetensors_metadata(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format_error(path, format!("not a valid safetensors file: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Writes named host arrays as F32, atomically, with optional string metadata (the arrays' lengths must
/// match their shapes).
pub fn write_safetensors_host(
    path: &Path,
    tensors: &[(String, HostTensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| {
            let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), t.shape.clone(), bytes)
        })
        .collect();
    serialize_and_write(path, &buffers, metadata)
}

fn serialize_and_write(
    path: &Path,
    buffers: &[(String, Vec<usize>, Vec<u8>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| format_error(path, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| format_error(path, format!("cannot serialise: {e}")))?;
    atomic_write(path, &bytes)
}

/// Writes named tensors (downloaded from their device) as F32, atomically, with optional string metadata.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let bytes: Vec<u8> = t.to_vec()?.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name.clone(), t.dims().to_vec(), bytes));
    }
    serialize_and_write(path, &buffers, metadata)
}
