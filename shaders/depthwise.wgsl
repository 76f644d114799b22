// depthwise.wgsl — kernels: dw_forward, dw_input_grad, dw_weight_grad for a depthwise convolution
// (groups = C_in = C_out: each channel convolved with its own kh×kw filter).
//
// dw_forward (thread per output):   y[n,c,oh,ow] = bias[c] + Σ_{p,q} w[c,p,q]·x[n,c,ih,iw]
//                                   with ih = oh·s_h − pad_h + p·dil_h, iw = ow·s_w − pad_w + q·dil_w
// dw_input_grad (thread per input): dx[n,c,ih,iw] = Σ_{p,q} w[c,p,q]·dy[n,c,oh,ow] over the taps whose
//                                   (oh, ow) exists (a gather, so no atomics are needed)
// dw_weight_grad (workgroup per (c, p, q)): dw[c,p,q] = Σ_{n,oh,ow} dy[n,c,oh,ow]·x[n,c,ih,iw], a
//                                   256-thread strided sum and a tree reduction in workgroup memory.

struct Params {
    batch: u32,
    c_in: u32,
    h_in: u32,
    w_in: u32,
    c_out: u32,
    kh: u32,
    kw: u32,
    h_out: u32,
    w_out: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    dil_h: u32,
    dil_w: u32,
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy_in: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(256)
fn dw_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let hw_out = params.h_out * params.w_out;
    let i = linear_workgroup(wg, nwg) * 256u + lid;
    if (i >= params.batch * params.c_out * hw_out) {
        return;
    }
    let plane = i / hw_out;
    let c = plane % params.c_out;
    let oh = (i % hw_out) / params.w_out;
    let ow = i % params.w_out;
    var acc = 0.0;
    if (params.has_bias != 0u) {
        acc = bias[c];
    }
    for (var p = 0u; p < params.kh; p++) {
        let ih = i32(oh * params.stride_h + p * params.dil_h) - i32(params.pad_h);
        if (ih < 0 || ih >= i32(params.h_in)) {
            continue;
        }
        for (var q = 0u; q < params.kw; q++) {
            let iw = i32(ow * params.stride_w + q * params.dil_w) - i32(params.pad_w);
            if (iw < 0 || iw >= i32(params.w_in)) {
                continue;
            }
            acc += w[(c * params.kh + p) * params.kw + q]
                * x[(plane * params.h_in + u32(ih)) * params.w_in + u32(iw)];
        }
    }
    out[i] = acc;
}

@compute @workgroup_size(256)
fn dw_input_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let hw_in = params.h_in * params.w_in;
    let i = linear_workgroup(wg, nwg) * 256u + lid;
    if (i >= params.batch * params.c_in * hw_in) {
        return;
    }
    let plane = i / hw_in;
    let c = plane % params.c_in;
    let ih = (i % hw_in) / params.w_in;
    let iw = i % params.w_in;
    var acc = 0.0;
    for (var p = 0u; p < params.kh; p++) {
        let th = i32(ih + params.pad_h) - i32(p * params.dil_h);
        if (th < 0 || u32(th) % params.stride_h != 0u) {
            continue;
        }
        let oh = u32(th) / params.stride_h;
        if (oh >= params.h_out) {
            continue;
        }
        for (var q = 0u; q < params.kw; q++) {
            let tw = i32(iw + params.pad_w) - i32(q * params.dil_w);
            if (tw < 0 || u32(tw) % params.stride_w != 0u) {
                continue;
            }
            let ow = u32(tw) / params.stride_w;
            if (ow >= params.w_out) {
                continue;
            }
            acc += w[(c * params.kh + p) * params.kw + q]
                * dy_in[(plane * params.h_out + oh) * params.w_out + ow];
        }
    }
    out[i] = acc;
}

@compute @workgroup_size(256)
fn dw_weight_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let taps = params.kh * params.kw;
    let wid = linear_workgroup(wg, nwg);
    let live = wid < params.c_out * taps;
    let c = wid / taps;
    let p = (wid % taps) / params.kw;
    let q = wid % params.kw;
    let hw_out = params.h_out * params.w_out;
    var acc = 0.0;
    if (live) {
        for (var j = lid; j < params.batch * hw_out; j += 256u) {
            let n = j / hw_out;
            let oh = (j % hw_out) / params.w_out;
            let ow = j % params.w_out;
            let ih = i32(oh * params.stride_h + p * params.dil_h) - i32(params.pad_h);
            let iw = i32(ow * params.stride_w + q * params.dil_w) - i32(params.pad_w);
            if (ih >= 0 && iw >= 0 && ih < i32(params.h_in) && iw < i32(params.w_in)) {
                let plane = n * params.c_out + c;
                acc += dy[plane * hw_out + oh * params.w_out + ow]
                    * x[(plane * params.h_in + u32(ih)) * params.w_in + u32(iw)];
            }
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half = half / 2u) {
        if (lid < half) {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    if (live && lid == 0u) {
        out[wid] = partial[0];
    }
}
