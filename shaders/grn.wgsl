// grn.wgsl — kernels: grn_norms, grn_apply, grn_backward_stats, grn_backward_dx, grn_param_grads: Global
// Response Normalisation (ConvNeXt v2) of a batch of images with C channels and P = H·W positions, laid out
// channels-first (n, c, p) or channels-last (n, p, c) (the `channels_last` flag).
//
// Forward, per image n and channel c (δ = 10⁻³⁰ keeps √ differentiable at an all-zero channel):
//   G_nc = √(Σ_p x² + δ),  D_n = (1/C) Σ_c G_nc + ε,  N_nc = G_nc / D_n,
//   y = (x·N_nc)·γ_c + β_c + x.
//   grn_norms (workgroup per image; threads stride over c, each a serial loop over p): G and D.
//   grn_apply (thread per element): y.
// Backward, with S_nc = Σ_p g·x, B_nc = Σ_p g, u_nc = γ_c·S_nc:
//   ∂L/∂G_nc = (u_nc − (1/C) Σ_c' u_nc'·N_nc') / D_n,
//   ∂L/∂x = g·(1 + γ_c·N_nc) + x·k_nc  with k_nc = ∂L/∂G_nc / G_nc,
//   ∂L/∂γ_c = Σ_n S_nc·N_nc,  ∂L/∂β_c = Σ_n B_nc.
//   grn_backward_stats (workgroup per image): k, a = γ·N, and sb = (S·N for every (n, c), then B).
//   grn_backward_dx (thread per element): ∂L/∂x from g, x, a, k.
//   grn_param_grads (thread per channel): ∂L/∂γ and ∂L/∂β from sb.

struct Params {
    batch: u32,
    channels: u32,
    positions: u32,
    channels_last: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// grn_norms: x | grn_apply: x, gamma, beta, gnorm, denom | grn_backward_stats: dy, x, gamma, gnorm, denom
// | grn_backward_dx: dy, x, a, k | grn_param_grads: sb.
@group(0) @binding(1) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read> in2: array<f32>;
@group(0) @binding(3) var<storage, read> in3: array<f32>;
@group(0) @binding(4) var<storage, read> in4: array<f32>;
@group(0) @binding(5) var<storage, read> in5: array<f32>;
// grn_norms: gnorm, denom | grn_apply: y | grn_backward_stats: k, a, sb | grn_backward_dx: dx
// | grn_param_grads: dgamma, dbeta.
@group(0) @binding(6) var<storage, read_write> out1: array<f32>;
@group(0) @binding(7) var<storage, read_write> out2: array<f32>;
@group(0) @binding(8) var<storage, read_write> out3: array<f32>;

const DELTA: f32 = 1e-30;

// The index of (n, c, p) in the tensor.
fn grn_index(n: u32, c: u32, p: u32) -> u32 {
    if (params.channels_last != 0u) {
        return (n * params.positions + p) * params.channels + c;
    }
    return (n * params.channels + c) * params.positions + p;
}

// (n, c) of element j.
fn grn_image_channel(j: u32) -> vec2<u32> {
    if (params.channels_last != 0u) {
        let q = udiv(j, params.channels);
        return vec2<u32>(udiv(q, params.positions), j - q * params.channels);
    }
    let q = udiv(j, params.positions);
    let nc = udivmod(q, params.channels);
    return nc;
}

@compute @workgroup_size(256)
fn grn_norms(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let n = linear_workgroup(wg, nwg);
    let live = n < params.batch;
    var total = 0.0;
    if (live) {
        for (var c = lid; c < params.channels; c += 256u) {
            var ss = 0.0;
            for (var p = 0u; p < params.positions; p++) {
                let v = in1[grn_index(n, c, p)];
                ss += v * v;
            }
            let g = sqrt(ss + DELTA);
            out1[n * params.channels + c] = g;
            total += g;
        }
    }
    let sum = workgroup_sum(lid, total);
    if (live && lid == 0u) {
        out2[n] = sum / f32(params.channels) + params.eps;
    }
}

@compute @workgroup_size(256)
fn grn_apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let j = linear_workgroup(wg, nwg) * 256u + lid;
    if (j >= params.batch * params.channels * params.positions) {
        return;
    }
    let nc = grn_image_channel(j);
    let nrm = in4[nc.x * params.channels + nc.y] / in5[nc.x];
    let x = in1[j];
    out1[j] = (x * nrm) * in2[nc.y] + in3[nc.y] + x;
}

@compute @workgroup_size(256)
fn grn_backward_stats(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let n = linear_workgroup(wg, nwg);
    let live = n < params.batch;
    let nc0 = n * params.channels;
    let all = params.batch * params.channels;
    var un = 0.0;
    if (live) {
        let d = in5[n];
        for (var c = lid; c < params.channels; c += 256u) {
            var s = 0.0;
            var b = 0.0;
            for (var p = 0u; p < params.positions; p++) {
                let i = grn_index(n, c, p);
                s += in1[i] * in2[i];
                b += in1[i];
            }
            let nrm = in4[nc0 + c] / d;
            let u = in3[c] * s;
            un += u * nrm;
            out1[nc0 + c] = u; // k, finished below
            out2[nc0 + c] = in3[c] * nrm;
            out3[nc0 + c] = s * nrm;
            out3[all + nc0 + c] = b;
        }
    }
    let mean_un = workgroup_sum(lid, un) / f32(params.channels);
    if (live) {
        let d = in5[n];
        for (var c = lid; c < params.channels; c += 256u) {
            out1[nc0 + c] = (out1[nc0 + c] - mean_un) / d / in4[nc0 + c];
        }
    }
}

@compute @workgroup_size(256)
fn grn_backward_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let j = linear_workgroup(wg, nwg) * 256u + lid;
    if (j >= params.batch * params.channels * params.positions) {
        return;
    }
    let nc = grn_image_channel(j);
    let at = nc.x * params.channels + nc.y;
    let g = in1[j];
    out1[j] = g * (1.0 + in3[at]) + in2[j] * in4[at];
}

@compute @workgroup_size(256)
fn grn_param_grads(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let c = linear_workgroup(wg, nwg) * 256u + lid;
    if (c >= params.channels) {
        return;
    }
    let all = params.batch * params.channels;
    var dg = 0.0;
    var db = 0.0;
    for (var n = 0u; n < params.batch; n++) {
        dg += in1[n * params.channels + c];
        db += in1[all + n * params.channels + c];
    }
    out1[c] = dg;
    out2[c] = db;
}
