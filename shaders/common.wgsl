// common.wgsl — helpers prepended to every kernel family (no kernels of its own).
//
// Dispatch grids: a launch of T workgroups is spread over up to three dimensions (each at most the
// adapter's per-dimension limit, normally 65535), so kernels work with the linearised workgroup index
//   wid = wg.x + nwg.x·(wg.y + nwg.y·wg.z)
// and the host rounds T up; the few workgroups past the end do nothing (but still reach every barrier).

fn linear_workgroup(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + nwg.x * (wg.y + nwg.y * wg.z);
}

// x / d for u32 through an f32 quotient and a ±1 correction. Exact, and far cheaper than integer division
// where that is emulated (SIMD CPU drivers such as llvmpipe scalarise it; most GPUs run a long sequence).
// Below 2^22 the f32 quotient (WGSL allows 2.5 ulp) is within 1 of the true one; larger x uses `/`.
fn udiv(x: u32, d: u32) -> u32 {
    if (x < d) {
        return 0u;
    }
    if (x >= 4194304u) {
        return x / d;
    }
    var q = u32(f32(x) / f32(d));
    if (q * d > x) {
        q -= 1u;
    } else if ((q + 1u) * d <= x) {
        q += 1u;
    }
    return q;
}

// (x / d, x % d)
fn udivmod(x: u32, d: u32) -> vec2<u32> {
    let q = udiv(x, d);
    return vec2<u32>(q, x - q * d);
}

var<workgroup> wg_sum_scratch: array<f32, 256>;

// The sum of `value` over the 256 threads of the workgroup (every thread must call it): a tree reduction in
// workgroup memory.
fn workgroup_sum(lid: u32, value: f32) -> f32 {
    return workgroup_sum_of(lid, value, 256u);
}

// The sum of `value` over a workgroup of `threads` threads, a power of two up to 256 (every thread must
// call it, with the same `threads`).
fn workgroup_sum_of(lid: u32, value: f32, threads: u32) -> f32 {
    wg_sum_scratch[lid] = value;
    workgroupBarrier();
    for (var half = threads / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            wg_sum_scratch[lid] += wg_sum_scratch[lid + half];
        }
        workgroupBarrier();
    }
    return wg_sum_scratch[0];
}

// erf by Abramowitz & Stegun 7.1.26 (the CPU backend's formula, so both agree to rounding), and the exact
// GELU x/2·(1 + erf(x/√2)) and its derivative on it (elementwise.wgsl's unary ops and conv2d.wgsl's fused
// epilogue).
fn erf_as(x: f32) -> f32 {
    return erf_gauss(x).x;
}

// (erf(x), exp(−x²)): the formula's exponential too, which GELU′'s density shares (one exp for both).
fn erf_gauss(x: f32) -> vec2<f32> {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.2548296 + t * (-0.28449674 + t * (1.4214138 + t * (-1.4531521 + t * 1.0614054))));
    let gauss = exp(-z * z);
    return vec2<f32>(select(1.0, -1.0, x < 0.0) * (1.0 - poly * gauss), gauss);
}

fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_as(x * 0.70710677));
}

// GELU′(x) = Φ(x) + x·φ(x): with z = x/√2, erf(z) and φ(x) = exp(−z²)/√(2π) share one exp (the CPU
// backend's order of operations). elementwise.wgsl's GELU backward and derivative, and conv2d.wgsl's fused
// epilogue.
fn gelu_derivative(x: f32) -> f32 {
    let eg = erf_gauss(x * 0.70710677);
    return 0.5 * (1.0 + eg.x) + x * (eg.y * 0.3989423);
}
