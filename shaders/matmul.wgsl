// matmul.wgsl — operands of the batched matrix product C[b] = op(A[b])·op(B[b]) for the gemm kernel
// (gemm.wgsl). op transposes when the specialisation constants TRANS_A / TRANS_B say so: A is stored
// M×K (or K×M transposed), B K×N (or N×K); batch strides of 0 share one operand across the batch.
// C is contiguous (batch, M, N).

struct Params {
    batch: u32,
    m: u32,
    n: u32,
    k: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a_src: array<f32>;
@group(0) @binding(2) var<storage, read> b_src: array<f32>;
@group(0) @binding(6) var<storage, read_write> c_out: array<f32>;

fn gemm_shape() -> vec4<u32> {
    return vec4<u32>(params.batch, params.m, params.n, params.k);
}

fn gemm_load_a(b: u32, row: u32, kk: u32) -> f32 {
    let base = b * params.a_batch_stride;
    if (TRANS_A) {
        return a_src[base + kk * params.m + row];
    }
    return a_src[base + row * params.k + kk];
}

fn gemm_load_b(b: u32, kk: u32, col: u32) -> f32 {
    let base = b * params.b_batch_stride;
    if (TRANS_B) {
        return b_src[base + col * params.k + kk];
    }
    return b_src[base + kk * params.n + col];
}

fn gemm_store(b: u32, row: u32, col: u32, value: f32) {
    c_out[(b * params.m + row) * params.n + col] = value;
}
