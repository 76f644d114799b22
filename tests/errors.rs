//! Bad input returns an error that names the op and the shapes; nothing a caller does panics.

mod common;

use liera::{Conv2dGeometry, Conv2dParams, Device, Shape, Tensor};

fn t(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape.to_vec(), &Device::cpu()).unwrap()
}

/// Asserts `r` is an error whose message contains every one of `needles`.
fn assert_err<T: std::fmt::Debug>(r: liera::Result<T>, needles: &[&str]) {
    let msg = r.expect_err("expected an error").to_string();
    for n in needles {
        assert!(
            msg.contains(n),
            "error message {msg:?} does not mention {n:?}"
        );
    }
}

#[test]
fn elementwise_ops_reject_shapes_that_do_not_broadcast() {
    assert_err(t(&[2, 3]).add(&t(&[4])), &["add", "[2, 3]", "[4]"]);
    assert_err(t(&[2, 3]).sub(&t(&[3, 2])), &["sub"]);
    assert_err(t(&[5]).mul(&t(&[4, 3])), &["mul"]);
    assert_err(t(&[2, 1, 3]).div(&t(&[2, 2, 2])), &["div"]);
}

#[test]
fn matmul_rejects_mismatched_inner_and_batch_dimensions() {
    assert_err(t(&[2, 3]).matmul(&t(&[4, 5])), &["matmul", "k = 3 vs 4"]);
    assert_err(t(&[3]).matmul(&t(&[3, 2])), &["matmul", "at least 2 axes"]);
    assert_err(
        t(&[2, 3, 4]).matmul(&t(&[3, 4, 5])),
        &["matmul", "batch axes"],
    );
    assert_err(t(&[2, 3]).matmul_t(&t(&[2, 3]), false, false), &["matmul"]);
    assert!(t(&[2, 3]).matmul_t(&t(&[2, 3]), true, false).is_ok());
}

#[test]
fn shape_moves_reject_bad_arguments() {
    assert_err(t(&[2, 3]).reshape([4, 2]), &["reshape", "[2, 3]", "[4, 2]"]);
    assert_err(
        t(&[2, 3]).permute(&[0, 0]),
        &["permute", "not a permutation"],
    );
    assert_err(t(&[2, 3]).permute(&[1]), &["permute"]);
    assert_err(t(&[2, 3]).transpose(0, 2), &["transpose", "out of range"]);
    assert_err(t(&[2, 3]).sum(&[2], false), &["sum", "axis 2"]);
    assert_err(t(&[2, 3]).mean(&[5], true), &["mean", "axis 5"]);
    assert_err(t(&[2, 3]).sum_to(&Shape::new([4])), &["sum_to"]);
    assert_err(
        t(&[2, 3]).broadcast_to(&Shape::new([3, 3])),
        &["broadcast_to"],
    );
    assert_err(t(&[2, 3]).flatten_from(3), &["flatten_from"]);
}

#[test]
fn constructors_reject_data_that_does_not_fill_the_shape() {
    assert_err(
        Tensor::from_slice(&[1.0, 2.0, 3.0], [2, 2], &Device::cpu()),
        &["from_slice", "3 values", "[2, 2]"],
    );
    assert_err(t(&[2]).to_scalar(), &["to_scalar"]);
}

#[test]
fn conv_geometry_is_validated() {
    let ok = Conv2dGeometry::new(
        &Shape::new([1, 4, 8, 8]),
        &Shape::new([6, 2, 3, 3]),
        Conv2dParams::default().groups(2),
    )
    .unwrap();
    assert_eq!(ok.output_shape(), Shape::new([1, 6, 6, 6]));
    let cases: [(&[usize], &[usize], Conv2dParams, &str); 8] = [
        // A zero-size plane is refused even where the padding would make room for the kernel.
        (
            &[1, 1, 0, 0],
            &[1, 1, 1, 1],
            Conv2dParams::default().padding(1),
            "empty input",
        ),
        (
            &[1, 1, 4, 4],
            &[1, 1, 3, 3],
            Conv2dParams::default().padding(usize::MAX / 2 + 1),
            "overflows",
        ),
        (&[4, 8, 8], &[6, 4, 3, 3], Conv2dParams::default(), "NCHW"),
        (&[1, 4, 8, 8], &[6, 4, 3], Conv2dParams::default(), "OIHW"),
        (
            &[1, 4, 8, 8],
            &[6, 4, 3, 3],
            Conv2dParams::default().stride(0),
            "at least 1",
        ),
        (
            &[1, 4, 8, 8],
            &[6, 2, 3, 3],
            Conv2dParams::default().groups(3),
            "groups 3 must divide",
        ),
        (
            &[1, 4, 8, 8],
            &[6, 3, 3, 3],
            Conv2dParams::default(),
            "input channels per group",
        ),
        (
            &[1, 4, 2, 2],
            &[6, 4, 3, 3],
            Conv2dParams::default().dilation(2),
            "larger than the padded input",
        ),
    ];
    for (x, w, p, needle) in cases {
        assert_err(
            Conv2dGeometry::new(&Shape::new(x), &Shape::new(w), p),
            &["conv2d", needle],
        );
    }
}

#[test]
fn conv2d_rejects_bad_bias_and_geometry_through_the_op() {
    let x = t(&[1, 4, 8, 8]);
    assert_err(
        x.conv2d(&t(&[6, 4, 3, 3]), Some(&t(&[5])), Conv2dParams::default()),
        &["conv2d", "bias", "[6]", "[5]"],
    );
    assert_err(
        x.conv2d(&t(&[6, 2, 3, 3]), None, Conv2dParams::default()),
        &["conv2d", "input channels per group"],
    );
    assert!(x
        .conv2d(
            &t(&[4, 1, 7, 7]),
            None,
            Conv2dParams::default().padding(3).groups(4)
        )
        .is_ok());
}

#[test]
fn normalisations_and_losses_reject_bad_shapes() {
    assert_err(
        t(&[2, 3, 4, 4]).layer_norm_channels(Some(&t(&[4])), None, 1e-6),
        &["layer_norm_channels", "weight", "[3]", "[4]"],
    );
    assert_err(
        t(&[3]).layer_norm_channels(None, None, 1e-6),
        &["layer_norm_channels", "(N, C, ...)"],
    );
    assert_err(
        t(&[2, 5]).layer_norm_last(None, Some(&t(&[2])), 1e-6),
        &["layer_norm_last", "bias"],
    );
    assert_err(
        t(&[2, 5]).layer_norm_last(None, None, -1.0),
        &["layer_norm_last", "eps"],
    );
    assert_err(t(&[2, 5]).log_softmax(2), &["log_softmax", "axis 2"]);
    assert_err(
        t(&[2, 5]).cross_entropy(&[1]),
        &["cross_entropy", "1 labels", "[2, 5]"],
    );
    assert_err(
        t(&[2, 5]).cross_entropy(&[1, 5]),
        &["cross_entropy", "label 5", "position 1", "5 classes"],
    );
    assert_err(
        t(&[2, 5, 1]).cross_entropy(&[1, 2]),
        &["cross_entropy", "(N, classes)"],
    );
    assert_err(
        t(&[1, 3, 2, 2]).grn(&t(&[2]), &t(&[3]), 1e-6, false),
        &["grn", "gamma", "[3]"],
    );
    assert_err(
        t(&[3, 2, 2]).global_avg_pool(),
        &["global_avg_pool", "rank 4"],
    );
    assert_err(
        t(&[2, 3]).linear(&t(&[4, 2]), None),
        &["linear", "[2, 3]", "[4, 2]"],
    );
    assert_err(
        t(&[2, 3]).linear(&t(&[4, 3]), Some(&t(&[3]))),
        &["linear", "bias", "[4]"],
    );
}

/// The backend's conv kernels are public: a hand-made geometry that `Conv2dGeometry::new` would not derive,
/// or buffers shorter than it says, is an error, never an out-of-bounds write.
#[test]
fn conv_kernels_reject_inconsistent_geometry_and_short_buffers() {
    let dev = Device::cpu();
    let backend = dev.backend();
    let good = Conv2dGeometry::new(
        &Shape::new([1, 2, 1, 1]),
        &Shape::new([1, 2, 1, 1]),
        Conv2dParams::default(),
    )
    .unwrap();
    let forged = Conv2dGeometry {
        h_out: 256,
        w_out: 256,
        ..good
    };
    let w = backend.upload(&[1.0, 1.0]).unwrap();
    let dy = backend.upload(&vec![1.0; 256 * 256]).unwrap();
    assert_err(
        backend.conv2d_input_grad(&dy, &w, &forged),
        &["conv2d", "inconsistent geometry"],
    );
    let x = backend.upload(&[1.0, 2.0]).unwrap();
    assert_err(
        backend.conv2d_weight_grad(&x, &dy, &forged),
        &["conv2d", "inconsistent geometry"],
    );
    let short = backend.upload(&[1.0]).unwrap();
    assert_err(
        backend.conv2d(&short, &w, None, &good),
        &["conv2d", "input buffer holds 1 values"],
    );
    assert!(backend.conv2d(&x, &w, None, &good).is_ok());
}

/// A zero-length axis is an empty result, not a panic.
#[test]
fn empty_tensors_broadcast_to_empty_results() {
    let y = t(&[2, 3, 0]).add(&t(&[1, 3, 1])).unwrap();
    assert_eq!(y.dims(), &[2, 3, 0]);
    assert!(y.to_vec().unwrap().is_empty());
}

type UnaryOp = fn(&Tensor) -> liera::Result<Tensor>;

/// Reductions, normalisations and moves over tensors with a zero-size axis give empty (or zero) results and
/// empty gradients on every device, not a panic.
#[test]
fn zero_size_axes_reduce_normalise_and_differentiate() {
    for dev in common::devices() {
        let z = |shape: &[usize]| Tensor::param(&[], shape.to_vec(), &dev).unwrap();
        let on = dev.name();
        // Σ over an empty axis is 0.
        let x = z(&[2, 0, 3]);
        let s = x.sum(&[1], false).unwrap();
        assert_eq!(s.to_vec().unwrap(), vec![0.0; 6], "{on}");
        let g = s.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).unwrap().to_vec().unwrap().is_empty(), "{on}");
        // Everything else over an empty tensor is empty, forward and backward.
        let cases: [(&[usize], UnaryOp); 5] = [
            (&[2, 3, 0], |t| t.sum(&[1], false)),
            (&[2, 4, 0, 3], |t| t.layer_norm_channels(None, None, 1e-6)),
            (&[0, 4], |t| t.layer_norm_last(None, None, 1e-6)),
            (&[2, 3, 0], |t| t.log_softmax(1)),
            (&[2, 0, 3], |t| t.permute(&[2, 0, 1])),
        ];
        for (shape, f) in cases {
            let x = z(shape);
            let y = f(&x).unwrap_or_else(|e| panic!("{shape:?} on {on}: {e}"));
            assert!(y.to_vec().unwrap().is_empty(), "{shape:?} on {on}");
            let g = y.sum_all().unwrap().backward().unwrap();
            assert!(
                g.get(&x).unwrap().to_vec().unwrap().is_empty(),
                "{shape:?} on {on}"
            );
        }
    }
}
