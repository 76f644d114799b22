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
//
// With stride 1, dilation 1 and padding below the kernel size (every ConvNeXt block), the forward and the
// input gradient run instead as dw_forward_rows and dw_input_grad_rows: a thread per 4 consecutive outputs
// of a row, sliding a window of 4 source values along each kernel row, so that every 4 multiply-adds read
// one source value and one weight (the thread-per-output kernels read both for each one). The input gradient
// is then a correlation too: dx = dy ⋆ (the kernel flipped in both directions), dy padded by k − 1 − pad.
// dw_weight_grad_rows, for the same geometries, gives each thread 4 consecutive taps (p, q0 .. q0 + 3) of one
// channel and slides a window of 4 input values along each row of dy: one dy and one x read per 4
// multiply-adds. It is laid out like dw_weight_grad (a chunk's result is dw then db).

// The parameter block `ConvParams` (the geometry, groups, splits, has_bias, chunk) is generated from the
// Rust struct of the same name (src/backend/gpu/shaders.rs) and added to this module by the host.

@group(0) @binding(0) var<uniform> params: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy_in: array<f32>;
// The correlated plane of dw_forward_rows (x) and dw_input_grad_rows (dy).
@group(0) @binding(1) var<storage, read> src: array<f32>;
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

// Channel c's bias gradient over images n_begin .. n_end: Σ_{n,oh,ow} dy[n, c, oh, ow].
fn chunk_bias_grad(c: u32, n_begin: u32, n_end: u32) -> f32 {
    let hw = params.h_out * params.w_out;
    var acc = 0.0;
    for (var n = n_begin; n < n_end; n++) {
        let start = (n * params.c_out + c) * hw;
        for (var j = 0u; j < hw; j++) {
            acc += dy[start + j];
        }
    }
    return acc;
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
        let c = kc.y - n_w;
        let acc = chunk_bias_grad(c, kc.x * chunk, n_end);
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

@compute @workgroup_size(256)
fn dw_forward_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    correlate_rows(linear_workgroup(wg, nwg) * 256u + lid, false);
}

@compute @workgroup_size(256)
fn dw_input_grad_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    correlate_rows(linear_workgroup(wg, nwg) * 256u + lid, true);
}

// The geometry of the stride-1 correlation out = k ⋆ src of the forward (flip false: src = x, out = y) or
// of the input gradient (true: src = dy, out = dx, k flipped, padding kernel − 1 − pad).
struct Correlation {
    src_h: u32,
    src_w: u32,
    out_h: u32,
    out_w: u32,
    pad_h: u32,
    pad_w: u32,
}

fn correlation(flip: bool) -> Correlation {
    if (flip) {
        return Correlation(params.h_out, params.w_out, params.h_in, params.w_in,
                           params.kh - 1u - params.pad_h, params.kw - 1u - params.pad_w);
    }
    return Correlation(params.h_in, params.w_in, params.h_out, params.w_out, params.pad_h, params.pad_w);
}

// The first three slots of a sliding window: src at columns col0, col0 + 1, col0 + 2 of a row.
fn window3(row: u32, col0: i32, width: u32) -> vec3<f32> {
    return vec3<f32>(src_at(row, col0, width), src_at(row, col0 + 1, width), src_at(row, col0 + 2, width));
}

// src[row + col] of a source row `width` wide, 0 outside it.
fn src_at(row: u32, col: i32, width: u32) -> f32 {
    if (col < 0 || col >= i32(width)) {
        return 0.0;
    }
    return src[row + u32(col)];
}

// Outputs 4·t .. 4·t + 3 of one row (thread t of the row) of the stride-1, dilation-1 correlation
// out[plane, r, j] = Σ_{p,q} k[p, q]·src[plane, r + p − pad_h, j + q − pad_w] (0 outside src), with
// k = w[c] and the forward's geometry, or (flip) k = w[c] flipped and the input gradient's geometry
// (src = dy, out = dx, pad = kernel − 1 − pad).
fn correlate_rows(i: u32, flip: bool) {
    let cg = correlation(flip);
    let quads = (cg.out_w + 3u) / 4u;
    if (i >= params.batch * params.c_out * cg.out_h * quads) {
        return;
    }
    let row_quad = udivmod(i, quads);
    let plane_row = udivmod(row_quad.x, cg.out_h);
    let plane = plane_row.x;
    let r = plane_row.y;
    let c = udivmod(plane, params.c_out).y;
    let j0 = row_quad.y * 4u;
    var acc = vec4<f32>();
    if (!flip && params.has_bias != 0u) {
        acc = vec4<f32>(bias[c]);
    }
    let pr = tap_range(r, 1u, 1u, cg.pad_h, cg.src_h, params.kh);
    let col0 = i32(j0) - i32(cg.pad_w);
    for (var p = pr.x; p < pr.y; p++) {
        let src_row = (plane * cg.src_h + r + p - cg.pad_h) * cg.src_w;
        let wp = select(p, params.kh - 1u - p, flip);
        let w_row = (c * params.kh + wp) * params.kw;
        // Window slot s holds the source value for output j0 + s at the current tap q; acc[s] is output j0 + s.
        var win = window3(src_row, col0, cg.src_w);
        for (var q = 0u; q < params.kw; q++) {
            let v = vec4<f32>(win, src_at(src_row, col0 + i32(q) + 3, cg.src_w));
            acc += w[w_row + select(q, params.kw - 1u - q, flip)] * v;
            win = v.yzw;
        }
    }
    store_quad((plane * cg.out_h + r) * cg.out_w + j0, cg.out_w - j0, acc);
}

// out[at + s] = v[s] for the first min(4, count) slots s (count ≥ 1).
fn store_quad(at: u32, count: u32, v: vec4<f32>) {
    out[at] = v.x;
    if (count > 1u) {
        out[at + 1u] = v.y;
    }
    if (count > 2u) {
        out[at + 2u] = v.z;
    }
    if (count > 3u) {
        out[at + 3u] = v.w;
    }
}

@compute @workgroup_size(256)
fn dw_weight_grad_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    // Thread per (image chunk, c, p, group of 4 taps q0 .. q0 + 3), then per (image chunk, c) for db.
    let chunk = params.chunk;
    let quads = (params.kw + 3u) / 4u;
    let tap_threads = params.c_out * params.kh * quads;
    let threads = tap_threads + select(0u, params.c_out, params.has_bias != 0u);
    let chunks = (params.batch + chunk - 1u) / chunk;
    let i = linear_workgroup(wg, nwg) * 256u + lid;
    if (i >= chunks * threads) {
        return;
    }
    let kc = udivmod(i, threads);
    let n_begin = kc.x * chunk;
    let n_end = min(params.batch, n_begin + chunk);
    let n_w = params.c_out * params.kh * params.kw;
    let base = kc.x * (n_w + select(0u, params.c_out, params.has_bias != 0u));
    if (kc.y >= tap_threads) {
        let c = kc.y - tap_threads;
        let acc = chunk_bias_grad(c, n_begin, n_end);
        if (chunks == 1u) {
            out2[c] = acc;
        } else {
            out[base + n_w + c] = acc;
        }
        return;
    }
    let cp_quad = udivmod(kc.y, quads);
    let cp = udivmod(cp_quad.x, params.kh);
    let c = cp.x;
    let p = cp.y;
    let q0 = cp_quad.y * 4u;
    // The output rows whose tap row p reads a real input row.
    let ohr = tap_range(p, 1u, 1u, params.pad_h, params.h_in, params.h_out);
    // Window slot s holds x at column ow + q0 + s − pad_w for the current output column ow; acc[s] is tap
    // q0 + s.
    let col0 = i32(q0) - i32(params.pad_w);
    var acc = vec4<f32>();
    for (var n = n_begin; n < n_end; n++) {
        let plane = n * params.c_out + c;
        for (var oh = ohr.x; oh < ohr.y; oh++) {
            let x_row = (plane * params.h_in + oh + p - params.pad_h) * params.w_in;
            let dy_row = (plane * params.h_out + oh) * params.w_out;
            var win = window3(x_row, col0, params.w_in);
            for (var ow = 0u; ow < params.w_out; ow++) {
                let v = vec4<f32>(win, src_at(x_row, col0 + i32(ow) + 3, params.w_in));
                acc += dy[dy_row + ow] * v;
                win = v.yzw;
            }
        }
    }
    store_quad(base + (c * params.kh + p) * params.kw + q0, params.kw - q0, acc);
}

// ---- Tiled kernels: a workgroup's source tile and its halo in workgroup memory ----
//
// dw_forward_tiled and dw_input_grad_tiled compute the same correlation as the *_rows kernels, for the same
// geometries, with 64 threads per workgroup. A workgroup owns a tile of tile_planes planes × tile_h rows ×
// tile_w columns of the output (tile_w a multiple of 4, 64 = tile_planes · tile_h · tile_w / 4). It first
// copies the source values the tile reads, (tile_h + kh − 1) × (tile_w + kw − 1) per plane with zeros
// outside the source, into dw_tile (rows tile_stride words apart, a width padded against bank conflicts); then each thread slides its window of 4 outputs along workgroup memory,
// with no bounds tests. Each source value is read from global memory about once per workgroup instead of
// once per tap row per thread. The host picks the tile from the output plane (see conv.rs) so that small
// planes share a workgroup.
//
// dw_weight_grad_tiled is a tiled reduction: a workgroup per (image chunk, channel) walks the chunk's planes
// tile by tile (tile_h × tile_w outputs of dy, and the x values under their taps), staging both tiles in
// workgroup memory. Thread (g, k) holds tap row p and taps q0 .. q0 + 3 of quad k, and sums over the
// tile's rows g, g + G, … (G row groups), sliding a window of 4 x values along each row. At the end the
// row groups' sums are added in workgroup memory, and the bias gradient Σ dy is a workgroup sum. The result
// is laid out like dw_weight_grad's (a chunk's result is dw then db; with one chunk, db goes to out2).

// DW_THREADS (threads per workgroup), DW_TILE_WORDS and DW_DY_TILE_WORDS are generated from the Rust
// constants of the same names (src/backend/gpu/shaders.rs), which conv.rs sizes the tiles by.
var<workgroup> dw_tile: array<f32, DW_TILE_WORDS>;
var<workgroup> dw_dy_tile: array<f32, DW_DY_TILE_WORDS>;
var<workgroup> dw_partial: array<vec4<f32>, DW_THREADS>;

@compute @workgroup_size(DW_THREADS)
fn dw_forward_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    correlate_tiled(linear_workgroup(wg, nwg), lid, false);
}

@compute @workgroup_size(DW_THREADS)
fn dw_input_grad_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    correlate_tiled(linear_workgroup(wg, nwg), lid, true);
}

// Workgroup `wid`'s tile of correlate_rows's correlation (the same geometry and `flip`).
fn correlate_tiled(wid: u32, lid: u32, flip: bool) {
    let cg = correlation(flip);
    let planes = params.batch * params.c_out;
    let tiles_w = (cg.out_w + params.tile_w - 1u) / params.tile_w;
    let tiles_h = (cg.out_h + params.tile_h - 1u) / params.tile_h;
    let plane_tiles = (planes + params.tile_planes - 1u) / params.tile_planes;
    if (wid >= plane_tiles * tiles_h * tiles_w) {
        return;
    }
    let t_col = udivmod(wid, tiles_w);
    let t_row = udivmod(t_col.x, tiles_h);
    let plane0 = t_row.x * params.tile_planes;
    let r0 = t_row.y * params.tile_h;
    let c0 = t_col.y * params.tile_w;
    // The staged tile: per plane, tile rows r0 − cg.pad_h .. and columns c0 − cg.pad_w .. of the source.
    let stage_w = params.tile_w + params.kw - 1u;
    let stride = params.tile_stride;
    let stage_h = params.tile_h + params.kh - 1u;
    let per_plane = stage_h * stride;
    for (var e = lid; e < params.tile_planes * stage_h * stage_w; e += DW_THREADS) {
        let pe = udivmod(e, stage_h * stage_w);
        let rc = udivmod(pe.y, stage_w);
        let plane = plane0 + pe.x;
        let r = i32(r0 + rc.x) - i32(cg.pad_h);
        let c = i32(c0 + rc.y) - i32(cg.pad_w);
        var v = 0.0;
        if (plane < planes && r >= 0 && r < i32(cg.src_h) && c >= 0 && c < i32(cg.src_w)) {
            v = src[(plane * cg.src_h + u32(r)) * cg.src_w + u32(c)];
        }
        dw_tile[pe.x * per_plane + rc.x * stride + rc.y] = v;
    }
    workgroupBarrier();
    // Thread lid: plane slot pz, tile row ty, outputs 4·tx .. 4·tx + 3 of the row.
    let quads = params.tile_w / 4u;
    let tx_rest = udivmod(lid, quads);
    let ty_pz = udivmod(tx_rest.x, params.tile_h);
    let plane = plane0 + ty_pz.x;
    let r = r0 + ty_pz.y;
    let j0 = c0 + 4u * tx_rest.y;
    if (plane >= planes || r >= cg.out_h || j0 >= cg.out_w) {
        return;
    }
    let c = udivmod(plane, params.c_out).y;
    var acc = vec4<f32>();
    if (!flip && params.has_bias != 0u) {
        acc = vec4<f32>(bias[c]);
    }
    for (var p = 0u; p < params.kh; p++) {
        let base = ty_pz.x * per_plane + (ty_pz.y + p) * stride + 4u * tx_rest.y;
        let wp = select(p, params.kh - 1u - p, flip);
        let w_row = (c * params.kh + wp) * params.kw;
        // Window slot s holds the staged value for output j0 + s at the current tap q.
        var win = vec3<f32>(dw_tile[base], dw_tile[base + 1u], dw_tile[base + 2u]);
        for (var q = 0u; q < params.kw; q++) {
            let v = vec4<f32>(win, dw_tile[base + q + 3u]);
            acc += w[w_row + select(q, params.kw - 1u - q, flip)] * v;
            win = v.yzw;
        }
    }
    store_quad((plane * cg.out_h + r) * cg.out_w + j0, cg.out_w - j0, acc);
}

@compute @workgroup_size(DW_THREADS)
fn dw_weight_grad_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let wid = linear_workgroup(wg, nwg);
    let chunk = params.chunk;
    let chunks = (params.batch + chunk - 1u) / chunk;
    if (wid >= chunks * params.c_out) {
        return;
    }
    let kc = udivmod(wid, params.c_out);
    let c = kc.y;
    let n_begin = kc.x * chunk;
    let n_end = min(params.batch, n_begin + chunk);
    // Thread roles: tap quad k (row p, taps q0 .. q0 + 3) of `tap_quads`, row group g of `groups`.
    let quads = (params.kw + 3u) / 4u;
    let tap_quads = params.kh * quads;
    let groups = DW_THREADS / tap_quads;
    let kg = udivmod(lid, tap_quads);
    let g = kg.x;
    let pq = udivmod(kg.y, quads);
    let p = pq.x;
    let q0 = 4u * pq.y;
    let in_group = g < groups;
    let tw = params.tile_w;
    let th = params.tile_h;
    let stage_w = tw + params.kw - 1u;
    let stride = params.tile_stride;
    let stage_len = (th + params.kh - 1u) * stage_w;
    let tiles_w = (params.w_out + tw - 1u) / tw;
    let tiles = (params.h_out + th - 1u) / th * tiles_w;
    var acc = vec4<f32>();
    var bias_acc = 0.0;
    for (var n = n_begin; n < n_end; n++) {
        let plane = n * params.c_out + c;
        for (var t = 0u; t < tiles; t++) {
            let rc = udivmod(t, tiles_w);
            let r0 = rc.x * th;
            let c0 = rc.y * tw;
            // dy at rows r0 .., columns c0 .. (0 past the plane), and x under its taps (0 outside x).
            for (var e = lid; e < th * tw; e += DW_THREADS) {
                let yx = udivmod(e, tw);
                var v = 0.0;
                if (r0 + yx.x < params.h_out && c0 + yx.y < params.w_out) {
                    v = dy[(plane * params.h_out + r0 + yx.x) * params.w_out + c0 + yx.y];
                }
                dw_dy_tile[e] = v;
                bias_acc += v;
            }
            for (var e = lid; e < stage_len; e += DW_THREADS) {
                let yx = udivmod(e, stage_w);
                let r = i32(r0 + yx.x) - i32(params.pad_h);
                let col = i32(c0 + yx.y) - i32(params.pad_w);
                var v = 0.0;
                if (r >= 0 && r < i32(params.h_in) && col >= 0 && col < i32(params.w_in)) {
                    v = x[(plane * params.h_in + u32(r)) * params.w_in + u32(col)];
                }
                dw_tile[yx.x * stride + yx.y] = v;
            }
            workgroupBarrier();
            if (in_group) {
                // acc[s] += Σ_j dy[row, j]·x[row + p, j + q0 + s] over this group's tile rows.
                for (var row = g; row < th; row += groups) {
                    let dy_row = row * tw;
                    let base = (row + p) * stride + q0;
                    var win = vec3<f32>(dw_tile[base], dw_tile[base + 1u], dw_tile[base + 2u]);
                    for (var j = 0u; j < tw; j++) {
                        let v = vec4<f32>(win, dw_tile[base + j + 3u]);
                        acc += dw_dy_tile[dy_row + j] * v;
                        win = v.yzw;
                    }
                }
            }
            workgroupBarrier();
        }
    }
    dw_partial[lid] = acc;
    let db = workgroup_sum_of(lid, bias_acc, DW_THREADS);
    // dw_partial is complete: workgroup_sum_of's first barrier follows every store above.
    let n_w = params.c_out * params.kh * params.kw;
    let base_out = kc.x * (n_w + select(0u, params.c_out, params.has_bias != 0u));
    if (lid < tap_quads) {
        var sum = vec4<f32>();
        for (var k = 0u; k < groups; k++) {
            sum += dw_partial[k * tap_quads + lid];
        }
        store_quad(base_out + (c * params.kh + p) * params.kw + q0, params.kw - q0, sum);
    }
    if (lid == 0u && params.has_bias != 0u) {
        if (chunks == 1u) {
            out2[c] = db;
        } else {
            out[base_out + n_w + c] = db;
        }
    }
}
