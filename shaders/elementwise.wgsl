// elementwise.wgsl — kernels: fill, unary, binary (one thread per output element).
//
// fill:   y[i] = value
// unary:  y[i] = f(x[i]) for f selected by the specialisation constant OP, one of
//         OP_EXP, OP_LOG (ln), OP_NEG, OP_SQRT, OP_GELU (x/2·(1 + erf(x/√2))), OP_GELU_DERIVATIVE
//         (GELU′(x) = Φ(x) + x·φ(x)), OP_ADD_SCALAR (x + c), OP_MUL_SCALAR (c·x), OP_POW_SCALAR (x^c),
//         OP_MIN_SCALAR (min(x, c), NaN kept)
// binary: y[i] = f(a[offset_a(i)], b[offset_b(i)]) with per-operand strides over up to 8 merged output
//         dimensions (stride 0 on broadcast axes); OP: OP_ADD, OP_SUB, OP_MUL, OP_DIV,
//         OP_GELU_BACKWARD (a·GELU′(b) with GELU′(x) = Φ(x) + x·φ(x)); with the scalar c (the adapters'
//         fused weights): OP_ADD_SCALED (a + c·b), OP_MUL_EXP_SCALED (a·exp(c·b)),
//         OP_MUL_AFFINE_SCALED (a·(1 + c·b)), OP_MUL_SCALED (c·a·b), OP_MIN_SCALAR_BACKWARD (a where
//         b ≤ c, else 0).
// The OP_* constants are generated from the Rust op tables (UnaryOp, BinaryOp in src/backend/mod.rs, via
// src/backend/op_codes.rs) and added to this module by the host: each is its enum variant's name in
// SCREAMING_SNAKE_CASE, and cases name them, never a bare number.
// erf_as and gelu are in common.wgsl (Abramowitz & Stegun 7.1.26 for erf, the same formula as the CPU
// backend, so both agree to rounding).

struct Params {
    n: u32,
    rank: u32,
    scalar: f32,
    _pad: u32,
    dims: array<vec4<u32>, 2>,
    a_strides: array<vec4<u32>, 2>,
    b_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

// x^c with Rust's powf conventions where WGSL's pow is undefined (x ≤ 0): integer exponents of negative
// bases keep their sign, x^0 = 1, 0^c = 0 (c > 0) or +∞ (c < 0); non-integer powers of negatives are NaN.
fn powf(x: f32, c: f32) -> f32 {
    if (c == 0.0) {
        return 1.0;
    }
    if (x == 0.0) {
        return select(0.0, bitcast<f32>(0x7f800000u), c < 0.0);
    }
    if (x > 0.0) {
        return pow(x, c);
    }
    if (c != floor(c)) {
        return bitcast<f32>(0x7fc00000u);
    }
    let m = pow(-x, c);
    let odd = (abs(c) % 2.0) == 1.0;
    return select(m, -m, odd);
}

fn unary_fn(x: f32, c: f32) -> f32 {
    switch OP {
        case OP_EXP: { return exp(x); }
        case OP_LOG: { return log(x); }
        case OP_NEG: { return -x; }
        case OP_SQRT: { return sqrt(x); }
        case OP_GELU: { return gelu(x); }
        case OP_GELU_DERIVATIVE: { return gelu_derivative(x); }
        case OP_ADD_SCALAR: { return x + c; }
        case OP_MUL_SCALAR: { return c * x; }
        case OP_POW_SCALAR: { return powf(x, c); }
        case OP_MIN_SCALAR: { return select(x, c, x > c); }
        default: { return x; }
    }
}

fn binary_fn(u: f32, v: f32, c: f32) -> f32 {
    switch OP {
        case OP_ADD: { return u + v; }
        case OP_SUB: { return u - v; }
        case OP_MUL: { return u * v; }
        case OP_DIV: { return u / v; }
        case OP_GELU_BACKWARD: { return u * gelu_derivative(v); }
        case OP_ADD_SCALED: { return u + c * v; }
        case OP_MUL_EXP_SCALED: { return u * exp(c * v); }
        case OP_MUL_AFFINE_SCALED: { return u * (1.0 + c * v); }
        case OP_MUL_SCALED: { return c * u * v; }
        case OP_MIN_SCALAR_BACKWARD: { return select(u, 0.0, v > c); }
        default: { return u; }
    }
}

@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wg, nwg) * 256u + lid;
    if (i < params.n) {
        y[i] = params.scalar;
    }
}

@compute @workgroup_size(256)
fn unary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wg, nwg) * 256u + lid;
    if (i < params.n) {
        y[i] = unary_fn(a[i], params.scalar);
    }
}

@compute @workgroup_size(256)
fn binary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_workgroup(wg, nwg) * 256u + lid;
    if (i >= params.n) {
        return;
    }
    // Decode the output index innermost axis first, accumulating each operand's offset.
    var rem = i;
    var oa = 0u;
    var ob = 0u;
    for (var k = 0u; k < params.rank; k++) {
        let ax = params.rank - 1u - k;
        let d = params.dims[ax / 4u][ax % 4u];
        let qr = udivmod(rem, d);
        let idx = qr.y;
        rem = qr.x;
        oa += idx * params.a_strides[ax / 4u][ax % 4u];
        ob += idx * params.b_strides[ax / 4u][ax % 4u];
    }
    y[i] = binary_fn(a[oa], b[ob], params.scalar);
}
