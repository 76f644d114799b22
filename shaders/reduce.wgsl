// reduce.wgsl — kernels: sum_axis_wg, sum_axis_thread, sum_keep_middle_wg, sum_keep_middle_thread,
// sum_chunks, channel_scale_add, permute.
//
// sum over the middle axis of an (outer, len, inner) view: y[o, i] = Σ_l x[o, l, i]
//   sum_axis_wg:     one workgroup per output, 256 threads stride over l, then a tree reduction in
//                    workgroup memory (long axes, e.g. a sum over a whole tensor);
//   sum_axis_thread: one thread per output, a serial loop over l (short axes).
// sum over both other axes, y[l] = Σ_o Σ_i x[o, l, i] (a per-channel sum of NCHW such as a bias gradient, in
// one launch instead of two):
//   sum_keep_middle_wg:     one workgroup per l, 256 threads stride over the outer·inner positions, then
//                           the tree reduction (many positions);
//   sum_keep_middle_thread: one thread per l, a serial loop over the positions (few).
//   With `rank` = 1 both sum the product x·x2 instead of x (the layer scale's gradient Σ g·h).
// sum_chunks: the sum over the middle axis of (1, chunks, inner) like sum_axis_thread (split-K partial
//   results), its first `rank` outputs written to y and the rest to y2 (a weight gradient's partials that
//   carry the bias gradient after it).
// channel_scale_add: y = x + x3[l]·x2 at every (o, l, i) (a residual plus a per-channel scaled branch,
//   ConvNeXt's layer scale), one thread per element.
// permute: y[j] = x[Σ_k idx_k(j)·src_stride_k] where idx(j) decodes j over the output dimensions and
//   src_stride_k is x's stride of the axis that becomes output axis k (rank ≤ 8).

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    rank: u32,
    dims: array<vec4<u32>, 2>,
    src_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> x2: array<f32>;
@group(0) @binding(3) var<storage, read> x3: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read_write> y2: array<f32>;

@compute @workgroup_size(256)
fn sum_axis_wg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let out_index = linear_workgroup(wg, nwg);
    let live = out_index < params.outer * params.inner;
    let o = out_index / params.inner;
    let i = out_index % params.inner;
    var acc = 0.0;
    if (live) {
        let base = o * params.len * params.inner + i;
        for (var l = lid; l < params.len; l += 256u) {
            acc += x[base + l * params.inner];
        }
    }
    let sum = workgroup_sum(lid, acc);
    if (live && lid == 0u) {
        y[out_index] = sum;
    }
}

@compute @workgroup_size(256)
fn sum_axis_thread(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let out_index = linear_workgroup(wg, nwg) * 256u + lid;
    if (out_index >= params.outer * params.inner) {
        return;
    }
    let o = out_index / params.inner;
    let i = out_index % params.inner;
    let base = o * params.len * params.inner + i;
    var acc = 0.0;
    for (var l = 0u; l < params.len; l++) {
        acc += x[base + l * params.inner];
    }
    y[out_index] = acc;
}

// x[k], or x[k]·x2[k] when the sum is of a product.
fn term(k: u32) -> f32 {
    if (params.rank == 1u) {
        return x[k] * x2[k];
    }
    return x[k];
}

@compute @workgroup_size(256)
fn sum_keep_middle_wg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let l = linear_workgroup(wg, nwg);
    let live = l < params.len;
    let positions = params.outer * params.inner;
    var acc = 0.0;
    if (live) {
        for (var j = lid; j < positions; j += 256u) {
            let oi = udivmod(j, params.inner);
            acc += term((oi.x * params.len + l) * params.inner + oi.y);
        }
    }
    let sum = workgroup_sum(lid, acc);
    if (live && lid == 0u) {
        y[l] = sum;
    }
}

@compute @workgroup_size(256)
fn sum_keep_middle_thread(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let l = linear_workgroup(wg, nwg) * 256u + lid;
    if (l >= params.len) {
        return;
    }
    var acc = 0.0;
    for (var o = 0u; o < params.outer; o++) {
        let base = (o * params.len + l) * params.inner;
        for (var i = 0u; i < params.inner; i++) {
            acc += term(base + i);
        }
    }
    y[l] = acc;
}

@compute @workgroup_size(256)
fn sum_chunks(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wg, nwg) * 256u + lid;
    if (i >= params.inner) {
        return;
    }
    var acc = 0.0;
    for (var l = 0u; l < params.len; l++) {
        acc += x[l * params.inner + i];
    }
    if (i < params.rank) {
        y[i] = acc;
    } else {
        y2[i - params.rank] = acc;
    }
}

@compute @workgroup_size(256)
fn channel_scale_add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let j = linear_workgroup(wg, nwg) * 256u + lid;
    if (j >= params.outer * params.len * params.inner) {
        return;
    }
    let l = udivmod(udiv(j, params.inner), params.len).y;
    y[j] = x[j] + x3[l] * x2[j];
}

@compute @workgroup_size(256)
fn permute(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    // For permute, `outer` holds the element count.
    let j = linear_workgroup(wg, nwg) * 256u + lid;
    if (j >= params.outer) {
        return;
    }
    var rem = j;
    var src = 0u;
    for (var k = 0u; k < params.rank; k++) {
        let ax = params.rank - 1u - k;
        let d = params.dims[ax / 4u][ax % 4u];
        let qr = udivmod(rem, d);
        src += qr.y * params.src_strides[ax / 4u][ax % 4u];
        rem = qr.x;
    }
    y[j] = x[src];
}
