//! The op profile (`LIERA_OP_PROFILE=1`): every op of a forward and backward pass is timed once per call
//! under its name and pass, convolutions by kind, and the ops a backward rule runs are not counted as
//! forward ops. The only test of this binary, so that setting the variable races with no other test.

use liera::shape::Conv2dParams;
use liera::{profile, Device, Tensor};

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| scale * ((i % 7) as f32 - 3.0)).collect()
}

/// (pass, calls per step) of each row of the report for `op`. A row reads: op, pass, calls, ms, share,
/// busy (the process's CPU time over the wall time × threads, a percentage, checked here to be one).
fn rows<'a>(report: &'a str, op: &str) -> Vec<(&'a str, f64)> {
    report
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() == 6 && cols[0] == op).then(|| {
                let busy: f64 = cols[5]
                    .strip_suffix('%')
                    .and_then(|b| b.parse().ok())
                    .unwrap_or_else(|| panic!("busy column of {l:?}"));
                assert!(busy.is_finite() && busy >= 0.0, "busy {busy} in {l:?}");
                (cols[1], cols[2].parse().expect("calls"))
            })
        })
        .collect()
}

#[test]
fn the_op_profile_times_each_op_once_per_pass_and_kind() -> liera::Result<()> {
    // SAFETY (of the environment write): no other thread of this binary reads the environment.
    std::env::set_var("LIERA_OP_PROFILE", "1");
    assert!(profile::enabled());
    let dev = Device::cpu();
    let x = Tensor::param(&ramp(2 * 4 * 6 * 6, 0.1), [2, 4, 6, 6], &dev)?;
    let w_dw = Tensor::param(&ramp(4 * 9, 0.05), [4, 1, 3, 3], &dev)?;
    let w_pw = Tensor::param(&ramp(8 * 4, 0.05), [8, 4, 1, 1], &dev)?;
    let depthwise = Conv2dParams {
        padding: [1, 1],
        groups: 4,
        ..Conv2dParams::default()
    };
    profile::reset();
    let y = x
        .conv2d(&w_dw, None, depthwise)?
        .conv2d(&w_pw, None, Conv2dParams::default())?
        .gelu()?
        .sum(&[0, 1, 2, 3], false)?;
    let grads = y.backward()?;
    assert!(grads.get(&x).is_some(), "the input got no gradient");
    let report = profile::report(1).expect("a profile was gathered");
    for op in ["conv2d_depthwise", "conv2d_1x1", "gelu", "sum"] {
        let mut got = rows(&report, op);
        got.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(
            got,
            vec![("backward", 1.0), ("forward", 1.0)],
            "{op} in\n{report}"
        );
    }
    // The backward rules' own ops (products, GELU′) are not forward ops of the pass.
    let forward_rows = report
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("forward"))
        .count();
    assert_eq!(forward_rows, 4, "forward rows in\n{report}");
    assert!(report.contains("total"), "{report}");
    Ok(())
}
