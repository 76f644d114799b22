// reduce.wgsl — kernels: sum_axis_wg, sum_axis_thread, sum_squares, permute.
//
// sum over the middle axis of an (outer, len, inner) view: y[o, i] = Σ_l x[o, l, i]
//   sum_axis_wg:     one workgroup per output, 256 threads stride over l, then a tree reduction in
//                    workgroup memory (long axes, e.g. a sum over a whole tensor);
//   sum_axis_thread: one thread per output, a serial loop over l (short axes).
// sum_squares: y[0] = Σ_k Σ_i x_k[i]² over up to four inputs (bindings 1–4, lengths in outer, len, inner,
//   rank), plus prior[0] (binding 5) when dims[0].x is 1; one workgroup, each thread strides every input,
//   then a tree reduction. Chained four tensors at a time, it is gradient clipping's global norm.
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
@group(0) @binding(4) var<storage, read> x4: array<f32>;
@group(0) @binding(5) var<storage, read> prior: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, 256>;

// The sum of `value` over the 256 threads of the workgroup (every thread must call it): a tree reduction in
// workgroup memory.
fn workgroup_sum(lid: u32, value: f32) -> f32 {
    partial[lid] = value;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half = half / 2u) {
        if (lid < half) {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    return partial[0];
}

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

@compute @workgroup_size(256)
fn sum_squares(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var j = lid; j < params.outer; j += 256u) {
        acc += x[j] * x[j];
    }
    for (var j = lid; j < params.len; j += 256u) {
        acc += x2[j] * x2[j];
    }
    for (var j = lid; j < params.inner; j += 256u) {
        acc += x3[j] * x3[j];
    }
    for (var j = lid; j < params.rank; j += 256u) {
        acc += x4[j] * x4[j];
    }
    let sum = workgroup_sum(lid, acc);
    if (lid == 0u) {
        var total = sum;
        if (params.dims[0].x == 1u) {
            total += prior[0];
        }
        y[0] = total;
    }
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
