// multi.wgsl — kernels over many tensors per launch: adamw_multi, sum_squares_multi, lowrank_reparam_multi, lowrank_grads_multi.
//
// A training step updates every parameter and reduces every gradient; one launch per tensor would cost
// one dispatch each (128 for ConvNeXt-atto). These kernels take many tensors per launch, each in its own
// buffer. The buffers are the module's storage bindings s1 … sS, all read_write (S follows the adapter's
// limit on storage buffers per stage). WGSL cannot index bindings, so the per-tensor work is generated
// (Family::Multi's prelude): adamw_tensor(t, i, …) and sum_squares_tensor(t, …) are a switch over the
// tensor t, one case per tensor slot reaching its bindings directly. t is the same for a whole workgroup,
// so the switch does not diverge.
//
// The parameter block's table says which tensor a workgroup works on: tensor t starts at workgroup
// first_t, and a workgroup takes the last tensor whose first_t ≤ its index (tensors of length 0 own no
// workgroup and are skipped). Workgroups at or past `groups` (the grid's rounding) do nothing.
//
// adamw_multi: one thread per element. s1 holds the gradient scale c (read when flags bit 1 is set);
//   tensor t uses s(7t+2) … s(7t+8): p, g, m, v (read) and p', m', v' (written, fresh buffers).
//   table[t] = (len_t, first_t, lr_t bits, weight decay_t bits). adamw_element is optim.wgsl's formula in
//   the same evaluation order (bit-identical results): m = v = 0 when flags bit 0 (has moments) is clear,
//     g ← g·c,  m' = β₁·m + (1 − β₁)·g,  v' = β₂·v + (1 − β₂)·g²,
//     p' = p·(1 − lr·λ) − (lr/b₁)·m' / (√(v'/b₂) + ε).
// sum_squares_multi: tensor t is s(t+2). Workgroup w sums x² over a chunk of SQ_CHUNK elements of its
//   tensor (a tree reduction) and writes the chunk's sum to s1[aux_offset + w]; the host sums those
//   partials with reduce.wgsl's sum_axis. table holds two tensors per vec4: (len, first) in .xy for even t
//   and in .zw for odd t.
//
// The adapters' low-rank reparameterisation of many layers per launch (ops/reparam.rs has the math; the
// host gathers the layers of a step into few launches, see backend/gpu/lowrank.rs). Problem t is a kernel
// W (O×N), factors B (O×r) and A (r×N) and the scale s; table[2t] = (O, r, N, first workgroup) and
// table[2t+1] as below. The work is generated per problem slot like adamw_tensor (lowrank_reparam_problem,
// lowrank_grads_problem).
// lowrank_reparam_multi: problem t uses s(4t+1) … s(4t+4): W, B, A (read) and W' (written). A thread per
//   four consecutive elements of a row (each B value read serves four): P = Σ_q B[i, q]·A[q, j] (r terms),
//   W' = W + s·P (form 1, LoRA), W ⊙ exp(s·P) (form 2, LieRA) or W ⊙ (1 + s·P) (form 3, first-order
//   LieRA). table[2t+1] = (s bits, form, 0, 0).
// lowrank_grads_multi: problem t uses s(6t+1) … s(6t+6): g = ∂L/∂W', z, B, A (read) and ∂B, ∂A (written).
//   With G = s·(g ⊙ z) (z = W' for LieRA, W for first order, absent for LoRA): ∂B = G·Aᵀ (O×r), a thread per
//   row and four ranks summing over N, then ∂A = Bᵀ·G (r×N), a thread per column and four ranks summing
//   over O. Each g (and z) value read serves four sums (a thread per element read it r times, and the
//   kernel took 1.4× as long on llvmpipe). With r4 = ⌈r/4⌉, table[2t+1] = (s bits, has z, O·r4 or 0 when
//   ∂B is not wanted, r4·N or 0 when ∂A is not wanted).

struct MultiParams {
    // Tensors in this launch.
    count: u32,
    // adamw_multi: bit 0 has moments, bit 1 has a gradient scale.
    flags: u32,
    _pad2: u32,
    // sum_squares_multi: where this launch's partial sums start in slot aux_slot.
    aux_offset: u32,
    // Workgroups of this launch.
    groups: u32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    bias1: f32,
    bias2: f32,
    _pad0: u32,
    _pad1: u32,
    table: array<vec4<u32>, 13>,
}

@group(0) @binding(0) var<uniform> params: MultiParams;

// Elements per workgroup of sum_squares_multi (16 per thread).
const SQ_CHUNK: u32 = 4096u;

@compute @workgroup_size(256)
fn adamw_multi(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let wid = linear_workgroup(wg, nwg);
    if (wid >= params.groups) {
        return;
    }
    var t = 0u;
    while (t + 1u < params.count && params.table[t + 1u].y <= wid) {
        t += 1u;
    }
    let e = params.table[t];
    let i = (wid - e.y) * 256u + lid;
    if (i >= e.x) {
        return;
    }
    adamw_tensor(t, i, (params.flags & 1u) != 0u, bitcast<f32>(e.z), bitcast<f32>(e.w));
}

// (p', m', v') of one element (see the header).
fn adamw_element(p: f32, g: f32, m0: f32, v0: f32, lr: f32, weight_decay: f32) -> vec3<f32> {
    var gi = g;
    if ((params.flags & 2u) != 0u) {
        gi = gi * s1[0];
    }
    let m1 = params.beta1 * m0 + (1.0 - params.beta1) * gi;
    let v1 = params.beta2 * v0 + (1.0 - params.beta2) * (gi * gi);
    let decay = 1.0 - lr * weight_decay;
    let step = lr / params.bias1;
    return vec3<f32>(p * decay - step * m1 / (sqrt(v1 * (1.0 / params.bias2)) + params.eps), m1, v1);
}

// (len, first) of tensor t of sum_squares_multi's table.
fn sq_entry(t: u32) -> vec2<u32> {
    let e = params.table[t / 2u];
    if (t % 2u == 0u) {
        return e.xy;
    }
    return e.zw;
}

@compute @workgroup_size(256)
fn sum_squares_multi(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let wid = linear_workgroup(wg, nwg);
    let live = wid < params.groups;
    var acc = 0.0;
    if (live) {
        var t = 0u;
        while (t + 1u < params.count && sq_entry(t + 1u).y <= wid) {
            t += 1u;
        }
        let e = sq_entry(t);
        let start = (wid - e.y) * SQ_CHUNK;
        acc = sum_squares_tensor(t, start + lid, min(start + SQ_CHUNK, e.x));
    }
    let sum = workgroup_sum(lid, acc);
    if (live && lid == 0u) {
        s1[params.aux_offset + wid] = sum;
    }
}

// The problem of workgroup wid (see lowrank_*_multi above): the last whose first workgroup ≤ wid.
fn lowrank_problem(wid: u32) -> u32 {
    var t = 0u;
    while (t + 1u < params.count && params.table[2u * (t + 1u)].w <= wid) {
        t += 1u;
    }
    return t;
}

// The four ranks q0 … q0 + 3 of a lowrank_grads_multi thread, those past rank r − 1 clamped to it (read
// again, never stored).
fn four_ranks(q0: u32, r: u32) -> vec4<u32> {
    return min(vec4<u32>(q0, q0 + 1u, q0 + 2u, q0 + 3u), vec4<u32>(r - 1u));
}

// W' of one element from the kernel value w and the scaled update u = s·P.
fn lowrank_form(w: f32, u: f32, form: u32) -> f32 {
    switch form {
        case 1u: { return w + u; }
        case 2u: { return w * exp(u); }
        default: { return w * (1.0 + u); }
    }
}

// (problem, thread index within it, 1) for a thread of workgroup wid below `groups`, else (0, 0, 0).
fn lowrank_thread(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> vec3<u32> {
    let wid = linear_workgroup(wg, nwg);
    if (wid >= params.groups) {
        return vec3<u32>();
    }
    let t = lowrank_problem(wid);
    return vec3<u32>(t, (wid - params.table[2u * t].w) * 256u + lid, 1u);
}

@compute @workgroup_size(256)
fn lowrank_reparam_multi(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let p = lowrank_thread(wg, nwg, lid);
    let e = params.table[2u * p.x];
    let f = params.table[2u * p.x + 1u];
    if (p.z == 1u && p.y < e.x * ((e.z + 3u) / 4u)) {
        lowrank_reparam_problem(p.x, p.y, e.y, e.z, bitcast<f32>(f.x), f.y);
    }
}

@compute @workgroup_size(256)
fn lowrank_grads_multi(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let p = lowrank_thread(wg, nwg, lid);
    let e = params.table[2u * p.x];
    let f = params.table[2u * p.x + 1u];
    if (p.z == 1u && p.y < f.z + f.w) {
        lowrank_grads_problem(p.x, p.y, e.x, e.y, e.z, bitcast<f32>(f.x), f.y != 0u, f.z);
    }
}
