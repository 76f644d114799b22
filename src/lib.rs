//! liera: fine-tune convolutional networks with the Lie-group adapter (LieRA, W' = W ⊙ exp(ΔW)) on a
//! reverse-mode autodiff engine of its own, with WGSL (wgpu) and rayon CPU kernels.
//!
//! Layers, bottom up: [`backend`] (the kernel contract and its CPU implementation), [`tensor`] and
//! [`autodiff`] (tensors and the tape), [`ops`] (one file per differentiable operation, with its math).
//!
//! ```
//! use liera::{Device, Tensor};
//! let dev = Device::cpu();
//! let w = Tensor::param(&[0.5, -1.0, 2.0], [3], &dev)?;
//! let loss = w.exp()?.sum_all()?; // L = Σ exp(w)
//! let grads = loss.backward()?;
//! let g = grads.get(&w).unwrap().to_vec()?; // ∂L/∂w = exp(w)
//! assert!((g[0] - 0.5f32.exp()).abs() < 1e-6);
//! # Ok::<(), liera::Error>(())
//! ```

#![warn(missing_docs)]

pub mod autodiff;
pub mod backend;
pub mod data;
pub mod error;
pub mod io;
pub mod job;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod peft;
pub mod report;
pub mod shape;
pub mod tensor;
pub mod train;

pub use autodiff::{no_grad, Grads, Tape};
pub use backend::Device;
pub use error::{Error, Result};
pub use shape::{Conv2dGeometry, Conv2dParams, Shape};
pub use tensor::Tensor;
