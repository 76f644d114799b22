// norm.wgsl — kernels: ln_forward, ln_backward_dx, ln_backward_params: layer norm over the middle axis
// of an (outer, len, inner) view (NCHW channels: (N, C, H·W); last axis: (rows, C, 1)).
//
// ln_forward (workgroup per (o, i) position, 64 threads striding over c, tree reductions):
//   μ = (1/C) Σ_c x_c,  rstd = 1/√((1/C) Σ_c (x_c − μ)² + ε),  x̂_c = (x_c − μ)·rstd,
//   y_c = x̂_c·weight_c + bias_c; μ and rstd are written for the backward.
// ln_backward_dx (workgroup per position): with ĝ_c = weight_c·dy_c,
//   dx_c = rstd·(ĝ_c − (1/C) Σ ĝ − x̂_c·(1/C) Σ ĝ·x̂)
// ln_backward_params (workgroup per channel c, 64 threads striding over the outer·inner positions):
//   dweight_c = Σ dy_c·x̂_c,  dbias_c = Σ dy_c

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    eps: f32,
    has_weight: u32,
    has_bias: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read> mean_in: array<f32>;
@group(0) @binding(5) var<storage, read> rstd_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(7) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> dbias: array<f32>;
@group(0) @binding(8) var<storage, read_write> rstd_out: array<f32>;

const THREADS: u32 = 64u;
var<workgroup> red_a: array<f32, 64>;
var<workgroup> red_b: array<f32, 64>;

// Sums `a` and `b` over the workgroup (both results in every thread). Called in uniform control flow.
fn workgroup_sum2(lid: u32, a: f32, b: f32) -> vec2<f32> {
    red_a[lid] = a;
    red_b[lid] = b;
    workgroupBarrier();
    for (var half = THREADS / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            red_a[lid] += red_a[lid + half];
            red_b[lid] += red_b[lid + half];
        }
        workgroupBarrier();
    }
    let r = vec2<f32>(red_a[0], red_b[0]);
    workgroupBarrier();
    return r;
}

fn weight_at(c: u32) -> f32 {
    if (params.has_weight != 0u) {
        return weight[c];
    }
    return 1.0;
}

@compute @workgroup_size(64)
fn ln_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let pos = linear_workgroup(wg, nwg);
    let live = pos < params.outer * params.inner;
    let o = pos / params.inner;
    let i = pos % params.inner;
    let base = o * params.len * params.inner + i;
    let step = params.inner;
    var s = 0.0;
    if (live) {
        for (var c = lid; c < params.len; c += THREADS) {
            s += x[base + c * step];
        }
    }
    let mu = workgroup_sum2(lid, s, 0.0).x / f32(params.len);
    var sq = 0.0;
    if (live) {
        for (var c = lid; c < params.len; c += THREADS) {
            let d = x[base + c * step] - mu;
            sq += d * d;
        }
    }
    let rstd = 1.0 / sqrt(workgroup_sum2(lid, sq, 0.0).x / f32(params.len) + params.eps);
    if (!live) {
        return;
    }
    for (var c = lid; c < params.len; c += THREADS) {
        var b = 0.0;
        if (params.has_bias != 0u) {
            b = bias[c];
        }
        y[base + c * step] = (x[base + c * step] - mu) * rstd * weight_at(c) + b;
    }
    if (lid == 0u) {
        mean_out[pos] = mu;
        rstd_out[pos] = rstd;
    }
}

@compute @workgroup_size(64)
fn ln_backward_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let pos = linear_workgroup(wg, nwg);
    let live = pos < params.outer * params.inner;
    let p = select(0u, pos, live);
    let o = p / params.inner;
    let i = p % params.inner;
    let base = o * params.len * params.inner + i;
    let step = params.inner;
    let mu = mean_in[p];
    let rs = rstd_in[p];
    var sg = 0.0;
    var sgx = 0.0;
    if (live) {
        for (var c = lid; c < params.len; c += THREADS) {
            let k = base + c * step;
            let g = weight_at(c) * dy[k];
            sg += g;
            sgx += g * (x[k] - mu) * rs;
        }
    }
    let sums = workgroup_sum2(lid, sg, sgx);
    let inv = 1.0 / f32(params.len);
    if (!live) {
        return;
    }
    for (var c = lid; c < params.len; c += THREADS) {
        let k = base + c * step;
        let xh = (x[k] - mu) * rs;
        dx[k] = rs * (weight_at(c) * dy[k] - sums.x * inv - xh * sums.y * inv);
    }
}

@compute @workgroup_size(64)
fn ln_backward_params(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let c = linear_workgroup(wg, nwg);
    let live = c < params.len;
    var sgx = 0.0;
    var sg = 0.0;
    if (live) {
        for (var p = lid; p < params.outer * params.inner; p += THREADS) {
            let k = ((p / params.inner) * params.len + c) * params.inner + p % params.inner;
            let g = dy[k];
            sg += g;
            sgx += g * (x[k] - mean_in[p]) * rstd_in[p];
        }
    }
    let sums = workgroup_sum2(lid, sgx, sg);
    if (live && lid == 0u) {
        dweight[c] = sums.x;
        dbias[c] = sums.y;
    }
}
