//! GPU faults are errors, not hangs or aborts: a tensor beyond the adapter's buffer limits (asked for
//! directly, or as the output of a kernel) comes back as `Err` naming the size and the limit, nothing that
//! large is ever allocated, and the device keeps working afterwards. Skips (visibly) without an adapter.

use liera::backend::gpu::{GpuBackend, GpuOptions};
use liera::{Device, Tensor};
use std::sync::Arc;

fn gpu() -> Option<(Arc<GpuBackend>, Device)> {
    match GpuBackend::new(GpuOptions::default()) {
        Ok(b) => {
            let b = Arc::new(b);
            Some((b.clone(), Device::from_backend(b)))
        }
        Err(e) => {
            if std::env::var("LIERA_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("LIERA_REQUIRE_GPU=1 but the GPU device is unavailable: {e}");
            }
            eprintln!("skipped: no GPU adapter ({e})");
            None
        }
    }
}

#[test]
fn tensors_beyond_the_buffer_limit_are_errors_and_the_device_survives() {
    let Some((backend, dev)) = gpu() else { return };
    let limits = backend.limits();
    let max_bytes = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    eprintln!(
        "{}: largest bindable buffer {} bytes",
        dev.name(),
        max_bytes
    );
    // One float past the limit: refused before any allocation.
    let floats = (max_bytes / 4 + 1) as usize;
    let err = Tensor::zeros([floats], &dev).expect_err("a tensor past the limit must be an error");
    let msg = err.to_string();
    assert!(
        msg.contains("exceeds the largest buffer"),
        "unexpected message: {msg}"
    );
    eprintln!("too large a tensor: {msg}");
    // Absurd sizes too (no overflow, no abort).
    assert!(Tensor::zeros([1usize << 61], &dev).is_err());
    assert!(Tensor::full([1usize << 40, 1 << 20], 1.0, &dev).is_err());

    // A kernel whose output would exceed the limit: an outer product of two small vectors.
    let n = ((max_bytes / 4) as f64).sqrt().ceil() as usize + 1;
    let col = Tensor::ones([n, 1], &dev).unwrap();
    let row = Tensor::ones([1, n], &dev).unwrap();
    let err = col
        .matmul(&row)
        .expect_err("an output past the limit must be an error");
    eprintln!("too large a matmul output ({n}×{n}): {err}");
    assert!(err.to_string().contains("exceeds the largest buffer"));

    // The device still works.
    let a = Tensor::from_slice(&[1.0, 2.0, 3.0], [3], &dev).unwrap();
    let s = a.mul(&a).unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert_eq!(s, 14.0);
}
