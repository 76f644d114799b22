// depthwise.wgsl — kernels: dw_forward, dw_input_grad, dw_weight_grad for a depthwise convolution
// (groups = C_in = C_out: each channel convolved with its own kh×kw filter).
//
// dw_forward (thread per output):   y[n,c,oh,ow] = bias[c] + Σ_{p,q} w[c,p,q]·x[n,c,ih,iw]
//                                   with ih = oh·s_h − pad_h + p·dil_h, iw = ow·s_w − pad_w + q·dil_w
// dw_input_grad (thread per input): dx[n,c,ih,iw] = Σ_{p,q} w[c,p,q]·dy[n,c,oh,ow] over the taps whose
//                                   (oh, ow) exists (a gather, so no atomics are needed)
// dw_weight_grad (thread per (image chunk, c, p, q)): dw[c,p,q] = Σ_{n,oh,ow} dy[n,c,oh,ow]·x[n,c,ih,iw]
//                                   over the chunk's images; the host sums the chunks (one chunk when the
//                                   (c, p, q) alone give enough threads). With has_bias, C more threads per
//                                   chunk sum db[c] = Σ_{n,oh,ow} dy[n,c,oh,ow]: a chunk's result is dw then
//                                   db, and with one chunk db goes to out2.
// The valid tap (or output) ranges are computed up front, so the inner loops carry no bounds tests.

// The parameter block `ConvParams` (the geometry, groups, splits, has_bias, chunk) is generated from the
// Rust struct of the same name (src/backend/gpu/shaders.rs) and added to this module by the host.

@group(0) @binding(0) var<uniform> params: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy_in: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read_write> out2: array<f32>;

// The t in [0, k) for which o·s + t·d − pad lies in [0, size): a contiguous range [lo, hi).
fn tap_range(o: u32, s: u32, d: u32, pad: u32, size: u32, k: u32) -> vec2<u32> {
    let base = o * s;
    var lo = 0u;
    if (pad > base) {
        lo = udiv(pad - base + d - 1u, d); // t·d ≥ pad − o·s
    }
    var hi = 0u;
    if (size + pad > base) {
        hi = udiv(size + pad - base + d - 1u, d); // t·d < size + pad − o·s
    }
    hi = min(hi, k);
    return vec2<u32>(min(lo, hi), hi);
}

// The taps p in [0, k) for which i + pad − p·d lies in [0, span): the input-gradient gather range, with
// span = (out − 1)·stride + 1 (divisibility by the stride is checked separately).
fn gather_range(i: u32, pad: u32, d: u32, span: u32, k: u32) -> vec2<u32> {
    let hi = min(k, udiv(i + pad, d) + 1u);
    var lo = 0u;
    if (i + pad >= span) {
        lo = udiv(i + pad - span, d) + 1u;
    }
    return vec2<u32>(min(lo, hi), hi);
}

@compute @workgroup_size(256)
fn dw_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let hw_out = params.h_out * params.w_out;
    let i = linear_workgroup(wg, nwg) * 256u + lid;
    if (i >= params.batch * params.c_out * hw_out) {
        return;
    }
    let plane_pos = udivmod(i, hw_out);
    let plane = plane_pos.x;
    let c = udivmod(plane, params.c_out).y;
    let hw = udivmod(plane_pos.y, params.w_out);
    let oh = hw.x;
    let ow = hw.y;
    var acc = 0.0;
    if (params.has_bias != 0u) {
        acc = bias[c];
    }
    let pr = tap_range(oh, params.stride_h, params.dil_h, params.pad_h, params.h_in, params.kh);
    let qr = tap_range(ow, params.stride_w, params.dil_w, params.pad_w, params.w_in, params.kw);
    // x index of tap (p, q): row_base(p) + ow·s_w + q·dil_w − pad_w, all terms non-negative in range.
    let col0 = ow * params.stride_w - params.pad_w; // wraps below 0, made whole by q·dil_w ≥ pad_w − ow·s_w
    for (var p = pr.x; p < pr.y; p++) {
        let ih = oh * params.stride_h + p * params.dil_h - params.pad_h;
        let x_row = (plane * params.h_in + ih) * params.w_in;
        let w_row = (c * params.kh + p) * params.kw;
        for (var q = qr.x; q < qr.y; q++) {
            acc += w[w_row + q] * x[x_row + col0 + q * params.dil_w];
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
    let plane_pos = udivmod(i, hw_in);
    let plane = plane_pos.x;
    let c = udivmod(plane, params.c_in).y;
    let hw = udivmod(plane_pos.y, params.w_in);
    let ih = hw.x;
    let iw = hw.y;
    let pr = gather_range(ih, params.pad_h, params.dil_h, (params.h_out - 1u) * params.stride_h + 1u, params.kh);
    let qr = gather_range(iw, params.pad_w, params.dil_w, (params.w_out - 1u) * params.stride_w + 1u, params.kw);
    var acc = 0.0;
    for (var p = pr.x; p < pr.y; p++) {
        let sh = udivmod(ih + params.pad_h - p * params.dil_h, params.stride_h);
        if (sh.y != 0u) {
            continue;
        }
        let dy_row = (plane * params.h_out + sh.x) * params.w_out;
        let w_row = (c * params.kh + p) * params.kw;
        if (params.stride_w == 1u) {
            for (var q = qr.x; q < qr.y; q++) {
                acc += w[w_row + q] * dy_in[dy_row + iw + params.pad_w - q * params.dil_w];
            }
        } else {
            for (var q = qr.x; q < qr.y; q++) {
                let sw = udivmod(iw + params.pad_w - q * params.dil_w, params.stride_w);
                if (sw.y == 0u) {
                    acc += w[w_row + q] * dy_in[dy_row + sw.x];
                }
            }
        }
    }
    out[i] = acc;
}

@compute @workgroup_size(256)
fn dw_weight_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    // Thread per (image chunk, c, p, q).
    let chunk = params.chunk;
    let taps = params.kh * params.kw;
    let i = linear_workgroup(wg, nwg) * 256u + lid;
    let n_w = params.c_out * taps;
    let per_chunk = n_w + select(0u, params.c_out, params.has_bias != 0u);
    let chunks = (params.batch + chunk - 1u) / chunk;
    if (i >= chunks * per_chunk) {
        return;
    }
    let kc = udivmod(i, per_chunk);
    let n_end = min(params.batch, (kc.x + 1u) * chunk);
    if (kc.y >= n_w) {
        // The bias gradient of channel c over the chunk's images.
        let c = kc.y - n_w;
        let hw = params.h_out * params.w_out;
        var acc = 0.0;
        for (var n = kc.x * chunk; n < n_end; n++) {
            let start = (n * params.c_out + c) * hw;
            for (var j = 0u; j < hw; j++) {
                acc += dy[start + j];
            }
        }
        if (chunks == 1u) {
            out2[c] = acc;
        } else {
            out[i] = acc;
        }
        return;
    }
    let ct = udivmod(kc.y, taps);
    let c = ct.x;
    let pq = udivmod(ct.y, params.kw);
    let p = pq.x;
    let q = pq.y;
    // The output rows and columns whose tap (p, q) reads a real input pixel.
    let ohr = tap_range(p, params.dil_h, params.stride_h, params.pad_h, params.h_in, params.h_out);
    let owr = tap_range(q, params.dil_w, params.stride_w, params.pad_w, params.w_in, params.w_out);
    var acc = 0.0;
    for (var n = kc.x * chunk; n < n_end; n++) {
        let plane = n * params.c_out + c;
        for (var oh = ohr.x; oh < ohr.y; oh++) {
            let ih = oh * params.stride_h + p * params.dil_h - params.pad_h;
            let dy_row = (plane * params.h_out + oh) * params.w_out;
            let x_row = (plane * params.h_in + ih) * params.w_in + q * params.dil_w - params.pad_w;
            for (var ow = owr.x; ow < owr.y; ow++) {
                acc += dy[dy_row + ow] * x[x_row + ow * params.stride_w];
            }
        }
    }
    out[i] = acc;
}
