//! Plain f64 reference implementations shared by the tests: written from the definitions as loops, and
//! independent of the engine's kernels, so a test can compare the engine against them (or take finite
//! differences of them).

use liera::Conv2dParams;

/// erf(x) = 2/√π · e^(−x²) · Σ_{n≥0} 2ⁿ·x²ⁿ⁺¹ / (1·3·5···(2n+1)): a series of positive terms, so no
/// cancellation at any x (the Maclaurin series, whose terms alternate, lost up to 10⁻³ to rounding at
/// |x| = 5.9, which finite differences then magnified into false failures). Past |x| = 6, erf is ±1 to f64
/// precision (erfc(6) ≈ 2·10⁻¹⁷).
pub fn erf64(x: f64) -> f64 {
    if x.abs() >= 6.0 {
        return x.signum();
    }
    let x2 = x * x;
    let (mut sum, mut term, mut n) = (x, x, 0.0f64);
    while term.abs() > 1e-17 * sum.abs() {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt() * (-x2).exp()
}

/// The exact GELU, x·Φ(x) = ½·x·(1 + erf(x/√2)).
pub fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + erf64(x / std::f64::consts::SQRT_2))
}

/// The 2-D convolution y[n, o, i, j] = b[o] + Σ_{c in o's group, p, q} x[n, c, i·s + p·d − pad,
/// j·s + q·d − pad] · w[o, c′, p, q] (zero outside the input), for x of dims (n, c, h, w) and w of dims
/// (o, c/groups, kh, kw), row-major. Returns y and its dims (n, o, ho, wo).
pub fn conv2d(
    x: &[f64],
    x_dims: [usize; 4],
    w: &[f64],
    w_dims: [usize; 4],
    b: Option<&[f64]>,
    p: Conv2dParams,
) -> (Vec<f64>, [usize; 4]) {
    let [n, c, h, wd] = x_dims;
    let [o, cg, kh, kw] = w_dims;
    assert_eq!(
        cg * p.groups,
        c,
        "weight {w_dims:?} does not fit input {x_dims:?}"
    );
    let span_h = p.dilation[0] * (kh - 1) + 1;
    let span_w = p.dilation[1] * (kw - 1) + 1;
    let ho = (h + 2 * p.padding[0] - span_h) / p.stride[0] + 1;
    let wo = (wd + 2 * p.padding[1] - span_w) / p.stride[1] + 1;
    let og = o / p.groups;
    let mut y = vec![0.0; n * o * ho * wo];
    for b_i in 0..n {
        for oc in 0..o {
            let grp = oc / og;
            for i in 0..ho {
                for j in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b[oc]);
                    for ci in 0..cg {
                        let cin = grp * cg + ci;
                        for kp in 0..kh {
                            for kq in 0..kw {
                                let ih = (i * p.stride[0] + kp * p.dilation[0]) as isize
                                    - p.padding[0] as isize;
                                let jw = (j * p.stride[1] + kq * p.dilation[1]) as isize
                                    - p.padding[1] as isize;
                                if ih < 0 || jw < 0 || ih >= h as isize || jw >= wd as isize {
                                    continue;
                                }
                                acc += x[((b_i * c + cin) * h + ih as usize) * wd + jw as usize]
                                    * w[((oc * cg + ci) * kh + kp) * kw + kq];
                            }
                        }
                    }
                    y[((b_i * o + oc) * ho + i) * wo + j] = acc;
                }
            }
        }
    }
    (y, [n, o, ho, wo])
}

/// op(A)·op(B), (m×k)·(k×n), row-major; `ta` / `tb` say that A is stored as (k×m) / B as (n×k).
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for l in 0..k {
                let av = if ta { a[l * m + i] } else { a[i * k + l] };
                let bv = if tb { b[j * k + l] } else { b[l * n + j] };
                s += av * bv;
            }
            c[i * n + j] = s;
        }
    }
    c
}

/// [`matmul`] over `batch` products; `a_batched` / `b_batched` say whether each operand has the batch axis
/// (an operand without one is shared by every product).
#[allow(clippy::too_many_arguments)]
pub fn batched_matmul(
    a: &[f64],
    b: &[f64],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    a_batched: bool,
    b_batched: bool,
) -> Vec<f64> {
    (0..batch)
        .flat_map(|bi| {
            let ao = if a_batched { bi * m * k } else { 0 };
            let bo = if b_batched { bi * k * n } else { 0 };
            matmul(&a[ao..ao + m * k], &b[bo..bo + k * n], m, k, n, ta, tb)
        })
        .collect()
}
