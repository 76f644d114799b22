//! liera: fine-tune convolutional networks with the Lie-group adapter (LieRA, W' = W ⊙ exp(ΔW)) on a
//! reverse-mode autodiff engine of its own, with WGSL (wgpu) and rayon CPU kernels.
//!
//! Modules depend one way, bottom up; each imports only from those before it ([`error`] and [`shape`] are
//! used throughout):
//!
//! 1. [`backend`]: the kernel contract ([`backend::Backend`]) and its rayon CPU and WGSL (wgpu) kernels; it
//!    sees flat f32 buffers, never tensors.
//! 2. [`tensor`]: [`Tensor`] and the recording of the tape: [`Tensor::from_op`] stores each op's node
//!    (inputs and backward rule) while recording is on.
//! 3. [`autodiff`]: the reverse pass over that tape (`Tensor::backward`, [`Grads`], [`Tape`], [`no_grad`]).
//! 4. [`ops`]: one file per differentiable operation, with its math, as methods on [`Tensor`].
//! 5. [`nn`]: layers and ConvNeXt as [`nn::Module`]s with timm's parameter names, and the seam an adapter
//!    plugs into ([`nn::WeightReparam`] on an [`nn::Adaptable`] layer).
//! 6. [`io`] (safetensors and model files), then [`peft`] (LoRA and LieRA adapters; its adapter files go
//!    through `io`); [`data`] (datasets, image decoding and transforms, batching) beside them.
//! 7. [`optim`]: optimizers, schedules and gradient clipping.
//! 8. [`train`]: the training loop and evaluation.
//! 9. [`job`]: the jobs behind the `liera` command (pretrain, fine-tune, compare, VTAB), writing plots through
//!    [`report`]; `main.rs` parses the command line and calls them.
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
//!
//! Training on the CPU from a program of your own: call [`backend::cpu::keep_freed_memory`] before any
//! other thread allocates, and run the training on a thread of rayon's pool (`rayon::scope(|_| ...)`
//! called from outside the pool runs its body there), as the `liera` command does with two threads or
//! more. Each kernel's parallel loop then starts on the calling thread instead of being handed to the pool
//! while the caller sleeps; on a 2-core machine that made the 32×32 ConvNeXt-atto steps 14–15% faster
//! (`docs/BENCHMARKS.md`). With a one-thread pool, keep a thread that waits on another thread's rayon work
//! off it (the `liera` command gives itself a second, one-thread pool then).

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
pub mod profile;
pub mod report;
pub mod shape;
pub mod tensor;
pub mod train;

pub use autodiff::{no_grad, Grads, Tape};
pub use backend::Device;
pub use error::{Error, Result};
pub use shape::{Conv2dGeometry, Conv2dParams, Shape};
pub use tensor::Tensor;
