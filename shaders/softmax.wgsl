// softmax.wgsl — kernels: log_softmax, log_softmax_backward over the middle axis of an (outer, len, inner)
// view, one workgroup of 64 threads per (o, i) position with tree reductions in workgroup memory.
//
// log_softmax:          m = max_c x_c,  y_c = x_c − m − ln Σ_c exp(x_c − m)   (shifted for stability)
// log_softmax_backward: dx_c = dy_c − exp(y_c)·Σ_c dy_c   (exp(y) is the softmax)
// log_softmax_thread, log_softmax_backward_thread: the same with one thread per position and serial
//   loops (short axes, many positions).

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> y_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;

const THREADS: u32 = 64u;
var<workgroup> red: array<f32, 64>;

// Reduces `v` over the workgroup with max (is_max) or +; every thread gets the result.
fn workgroup_reduce(lid: u32, v: f32, is_max: bool) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var half = THREADS / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            let other = red[lid + half];
            red[lid] = select(red[lid] + other, max(red[lid], other), is_max);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(64)
fn log_softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let pos = linear_workgroup(wg, nwg);
    let live = pos < params.outer * params.inner;
    let base = (pos / params.inner) * params.len * params.inner + pos % params.inner;
    let step = params.inner;
    var m = -3.40282347e38; // −FLT_MAX: a constant ±∞ is not valid WGSL; the same max for any finite input
    if (live) {
        for (var c = lid; c < params.len; c += THREADS) {
            m = max(m, x[base + c * step]);
        }
    }
    let mx = workgroup_reduce(lid, m, true);
    var s = 0.0;
    if (live) {
        for (var c = lid; c < params.len; c += THREADS) {
            s += exp(x[base + c * step] - mx);
        }
    }
    let lse = log(workgroup_reduce(lid, s, false));
    if (!live) {
        return;
    }
    for (var c = lid; c < params.len; c += THREADS) {
        y[base + c * step] = x[base + c * step] - mx - lse;
    }
}

@compute @workgroup_size(64)
fn log_softmax_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let pos = linear_workgroup(wg, nwg);
    let live = pos < params.outer * params.inner;
    let base = (pos / params.inner) * params.len * params.inner + pos % params.inner;
    let step = params.inner;
    var s = 0.0;
    if (live) {
        for (var c = lid; c < params.len; c += THREADS) {
            s += dy[base + c * step];
        }
    }
    let total = workgroup_reduce(lid, s, false);
    if (!live) {
        return;
    }
    for (var c = lid; c < params.len; c += THREADS) {
        let k = base + c * step;
        dx[k] = dy[k] - exp(y_in[k]) * total;
    }
}

@compute @workgroup_size(256)
fn log_softmax_thread(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let pos = linear_workgroup(wg, nwg) * 256u + lid;
    if (pos >= params.outer * params.inner) {
        return;
    }
    let oi = udivmod(pos, params.inner);
    let base = oi.x * params.len * params.inner + oi.y;
    let step = params.inner;
    var m = -3.40282347e38; // −FLT_MAX: a constant ±∞ is not valid WGSL; the same max for any finite input
    for (var c = 0u; c < params.len; c++) {
        m = max(m, x[base + c * step]);
    }
    var s = 0.0;
    for (var c = 0u; c < params.len; c++) {
        s += exp(x[base + c * step] - m);
    }
    let lse = log(s);
    for (var c = 0u; c < params.len; c++) {
        y[base + c * step] = x[base + c * step] - m - lse;
    }
}

@compute @workgroup_size(256)
fn log_softmax_backward_thread(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                               @builtin(local_invocation_index) lid: u32) {
    let pos = linear_workgroup(wg, nwg) * 256u + lid;
    if (pos >= params.outer * params.inner) {
        return;
    }
    let oi = udivmod(pos, params.inner);
    let base = oi.x * params.len * params.inner + oi.y;
    let step = params.inner;
    var s = 0.0;
    for (var c = 0u; c < params.len; c++) {
        s += dy[base + c * step];
    }
    for (var c = 0u; c < params.len; c++) {
        let k = base + c * step;
        dx[k] = dy[k] - exp(y_in[k]) * s;
    }
}
