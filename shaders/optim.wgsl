// optim.wgsl — kernel: adamw, one fused AdamW update per parameter element (one pass over memory instead of
// a dozen elementwise kernels).
//
//   m' = β₁·m + (1 − β₁)·g,   v' = β₂·v + (1 − β₂)·g²,
//   p' = p·(1 − lr·λ) − (lr/b₁)·m' / (√(v'/b₂) + ε)      with b₁ = 1 − β₁ᵗ, b₂ = 1 − β₂ᵗ
// m = v = 0 on the first step (has_moments = 0). With has_scale = 1, g is g·c with c = scale[0] (gradient
// clipping's factor, computed on the device), so clipping costs no pass of its own. Evaluated in the same
// order as the CPU backend.

struct Params {
    n: u32,
    has_moments: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bias1: f32,
    bias2: f32,
    has_scale: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> p: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> m: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read> scale: array<f32>;
@group(0) @binding(6) var<storage, read_write> p_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> m_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_out: array<f32>;

@compute @workgroup_size(256)
fn adamw(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wg, nwg) * 256u + lid;
    if (i >= params.n) {
        return;
    }
    var gi = g[i];
    if (params.has_scale != 0u) {
        gi = gi * scale[0];
    }
    var m0 = 0.0;
    var v0 = 0.0;
    if (params.has_moments != 0u) {
        m0 = m[i];
        v0 = v[i];
    }
    let m1 = params.beta1 * m0 + (1.0 - params.beta1) * gi;
    let v1 = params.beta2 * v0 + (1.0 - params.beta2) * (gi * gi);
    m_out[i] = m1;
    v_out[i] = v1;
    let decay = 1.0 - params.lr * params.weight_decay;
    let step = params.lr / params.bias1;
    p_out[i] = p[i] * decay - step * m1 / (sqrt(v1 * (1.0 / params.bias2)) + params.eps);
}
