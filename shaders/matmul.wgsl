// matmul.wgsl — operands of the batched matrix product C[b] = op(A[b])·op(B[b]) for the gemm kernel
// (gemm.wgsl). op transposes when the specialisation constants TRANS_A / TRANS_B say so: A is stored
// M×K (or K×M transposed), B K×N (or N×K); batch strides of 0 share one operand across the batch.
// C is contiguous (batch, M, N).
//
// Fused forms for the adapters' low-rank reparameterisations (ops/reparam.rs), one launch instead of a
// product and an elementwise pass:
//   REPARAM 1, 2, 3: C = W + c·(A·B), W ⊙ exp(c·(A·B)), W ⊙ (1 + c·(A·B)) with W (aux) of C's shape: the
//     epilogue applies the same expressions as elementwise.wgsl's OP_ADD_SCALED, OP_MUL_EXP_SCALED and
//     OP_MUL_AFFINE_SCALED (so results are bit-identical). K is never split for these (the host checks).
//   SCALED_OPERAND 1 (A) or 2 (B): that operand X is read as c·X·Z (HAS_Z, Z = aux in X's layout, as
//     OP_MUL_SCALED computes it) or X·c (as OP_MUL_SCALAR): the factor gradients s·(G ⊙ Z)·Aᵀ and
//     Bᵀ·s·(G ⊙ Z) without materialising s·(G ⊙ Z).
// c is `scalar`.

struct Params {
    batch: u32,
    m: u32,
    n: u32,
    k: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    // K splits (see gemm.wgsl); split s writes its partial product at s·batch·M·N.
    splits: u32,
    scalar: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
// A and B as vec4 arrays, for gemm_load_a4 / gemm_load_b4's aligned quads; a_at and b_at read one value.
@group(0) @binding(1) var<storage, read> a_src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b_src: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> aux: array<f32>;
@group(0) @binding(6) var<storage, read_write> c_out: array<f32>;

fn gemm_shape() -> vec4<u32> {
    return vec4<u32>(params.batch, params.m, params.n, params.k);
}

fn gemm_splits() -> u32 {
    return params.splits;
}

// An operand value as the product reads it: X, or c·X·Z / X·c when it is the scaled operand.
fn operand(x: f32, which: u32, i: u32) -> f32 {
    if (SCALED_OPERAND != which) {
        return x;
    }
    if (HAS_Z) {
        return params.scalar * x * aux[i];
    }
    return x * params.scalar;
}

fn a_at(i: u32) -> f32 {
    return a_src[i >> 2u][i & 3u];
}

fn b_at(i: u32) -> f32 {
    return b_src[i >> 2u][i & 3u];
}

// The four operand values at i, i + step, i + 2·step, i + 3·step of A (which = 1) or B (2): one vec4 load
// when they are consecutive and i is a multiple of 4.
fn operand4(which: u32, i: u32, step: u32) -> vec4<f32> {
    var x: vec4<f32>;
    let whole = step == 1u && i % 4u == 0u;
    if (whole && which == 1u) {
        x = a_src[i >> 2u];
    } else if (whole) {
        x = b_src[i >> 2u];
    } else if (which == 1u) {
        x = vec4<f32>(a_at(i), a_at(i + step), a_at(i + 2u * step), a_at(i + 3u * step));
    } else {
        x = vec4<f32>(b_at(i), b_at(i + step), b_at(i + 2u * step), b_at(i + 3u * step));
    }
    return vec4<f32>(operand(x.x, which, i), operand(x.y, which, i + step),
                     operand(x.z, which, i + 2u * step), operand(x.w, which, i + 3u * step));
}

// A's index at (row, kk) of batch b, and the index step from kk to kk + 1.
fn a_index(b: u32, row: u32, kk: u32) -> vec2<u32> {
    let base = b * params.a_batch_stride;
    if (TRANS_A) {
        return vec2<u32>(base + kk * params.m + row, params.m);
    }
    return vec2<u32>(base + row * params.k + kk, 1u);
}

// B's index at (kk, col) of batch b, and the index step from col to col + 1.
fn b_index(b: u32, kk: u32, col: u32) -> vec2<u32> {
    let base = b * params.b_batch_stride;
    if (TRANS_B) {
        return vec2<u32>(base + col * params.k + kk, params.k);
    }
    return vec2<u32>(base + kk * params.n + col, 1u);
}

fn gemm_load_a(b: u32, row: u32, kk: u32) -> f32 {
    let i = a_index(b, row, kk).x;
    return operand(a_at(i), 1u, i);
}

fn gemm_load_b(b: u32, kk: u32, col: u32) -> f32 {
    let i = b_index(b, kk, col).x;
    return operand(b_at(i), 2u, i);
}

fn gemm_quads() -> bool {
    return true;
}

fn gemm_load_a4(b: u32, row: u32, kk: u32) -> vec4<f32> {
    let at = a_index(b, row, kk);
    return operand4(1u, at.x, at.y);
}

fn gemm_load_b4(b: u32, kk: u32, col: u32) -> vec4<f32> {
    let at = b_index(b, kk, col);
    return operand4(2u, at.x, at.y);
}

fn gemm_store(b: u32, split: u32, row: u32, col: u32, value: f32) {
    let at = (b * params.m + row) * params.n + col;
    let c = params.scalar;
    var v = value;
    switch REPARAM {
        case 1u: { v = aux[at] + c * value; }
        case 2u: { v = aux[at] * exp(c * value); }
        case 3u: { v = aux[at] * (1.0 + c * value); }
        default: {}
    }
    c_out[split * params.batch * params.m * params.n + at] = v;
}
