// conv2d.wgsl — dense and grouped 2-D convolution (NCHW input, OIHW weight) as implicit GEMMs for the
// gemm kernel (gemm.wgsl): the patch matrix X̃ is never stored, its entries are computed where they
// are loaded. Per group g (the GEMM batch), with K_w = (C_in/groups)·kh·kw patch rows and the batch folded
// into the GEMM columns (col = n·HW + position):
//   CONV_MODE 0, forward:      Y_g  = W_g · X̃_g           (M = C_out/g, N = batch·H_out·W_out, K = K_w)
//                              plus bias[o] when HAS_BIAS; with GELU (K not split) GELU(Y) instead, and
//                              GELU′(Y) in c_out2 (a convolution and its activation in one launch, with
//                              the derivative its backward multiplies by)
//   CONV_MODE 1, input grad:   dX_g = W_gᵀ ⋆ dY_g, gathered: dx[n,c,ih,iw] = Σ_{o,p,q} w[o,c,p,q]·dy[n,o,oh,ow]
//                              over the taps with ih = oh·s_h − pad_h + p·dil_h (and likewise for w)
//                              (M = C_in/g, N = batch·H_in·W_in, K = (C_out/g)·kh·kw)
//   CONV_MODE 2, weight grad:  dW_g = dY_g · X̃_gᵀ summed over the batch
//                              (M = C_out/g, N = K_w, K = batch·H_out·W_out); with HAS_BIAS also the bias
//                              gradient db[o] = Σ_{n,pos} dy[n,o,pos], as the extra column N = K_w + 1 of a
//                              B whose column K_w is all ones, written to c_out2 (or, when K is split, after
//                              the split's dW in c_out: each split's partial result is dW then db)
//   CONV_MODE 3, input grad of a patchifying conv (stride = kernel, no padding or dilation: every input
//                              pixel is read by exactly one tap): dX̃_g = W_gᵀ · dY_g, each entry stored
//                              straight to its pixel (M = K_w, N = batch·H_out·W_out, K = C_out/g), so no
//                              K is spent on taps that cannot reach a pixel
// POINTWISE (1×1 kernel, stride 1, no padding) skips the tap arithmetic: X̃ is x itself.
// A patch entry X̃[(c, p, q), (n, oh, ow)] = x[n, c, oh·s_h − pad_h + p·dil_h, ow·s_w − pad_w + q·dil_w]
// (0 in the padding).

// The parameter block `ConvParams` (the geometry, groups, splits, has_bias, chunk) is generated from the
// Rust struct of the same name (src/backend/gpu/shaders.rs) and added to this module by the host.

@group(0) @binding(0) var<uniform> params: ConvParams;
// mode 0: weight, input, bias; mode 1: weight, dy; mode 2: dy, input.
// As vec4 arrays, for gemm_load_a4 / gemm_load_b4's aligned quads; a_at and b_at read one value.
@group(0) @binding(1) var<storage, read> a_src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b_src: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> c_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> c_out2: array<f32>;

fn a_at(i: u32) -> f32 {
    return a_src[i >> 2u][i & 3u];
}

fn b_at(i: u32) -> f32 {
    return b_src[i >> 2u][i & 3u];
}

// The values at i .. i + 3: one vec4 load when i is a multiple of 4.
fn a_quad(i: u32) -> vec4<f32> {
    if (i % 4u == 0u) {
        return a_src[i >> 2u];
    }
    return vec4<f32>(a_at(i), a_at(i + 1u), a_at(i + 2u), a_at(i + 3u));
}

fn b_quad(i: u32) -> vec4<f32> {
    if (i % 4u == 0u) {
        return b_src[i >> 2u];
    }
    return vec4<f32>(b_at(i), b_at(i + 1u), b_at(i + 2u), b_at(i + 3u));
}

fn c_in_per_group() -> u32 {
    return params.c_in / params.groups;
}
fn c_out_per_group() -> u32 {
    return params.c_out / params.groups;
}
fn taps() -> u32 {
    return params.kh * params.kw;
}

// X̃ of group g at patch row r = (c, p, q) and output position pos = oh·W_out + ow of image n
// (x is b_src in modes 0 and 2).
fn patch_entry(g: u32, r: u32, n: u32, pos: u32) -> f32 {
    if (POINTWISE) {
        // 1×1, stride 1, no padding: the patch matrix is the image itself.
        return b_at((n * params.c_in + g * c_in_per_group() + r) * params.h_in * params.w_in + pos);
    }
    let ct = udivmod(r, taps());
    let c = ct.x;
    let pq = udivmod(ct.y, params.kw);
    let hw = udivmod(pos, params.w_out);
    let ih = i32(hw.x * params.stride_h + pq.x * params.dil_h) - i32(params.pad_h);
    let iw = i32(hw.y * params.stride_w + pq.y * params.dil_w) - i32(params.pad_w);
    if (ih < 0 || iw < 0 || ih >= i32(params.h_in) || iw >= i32(params.w_in)) {
        return 0.0;
    }
    let channel = n * params.c_in + g * c_in_per_group() + c;
    return b_at((channel * params.h_in + u32(ih)) * params.w_in + u32(iw));
}

fn gemm_splits() -> u32 {
    return params.splits;
}

fn gemm_shape() -> vec4<u32> {
    let hw_out = params.h_out * params.w_out;
    switch CONV_MODE {
        case 0u: {
            return vec4<u32>(params.groups, c_out_per_group(), params.batch * hw_out, c_in_per_group() * taps());
        }
        case 1u: {
            return vec4<u32>(params.groups, c_in_per_group(), params.batch * params.h_in * params.w_in,
                             c_out_per_group() * taps());
        }
        case 3u: {
            return vec4<u32>(params.groups, c_in_per_group() * taps(), params.batch * hw_out, c_out_per_group());
        }
        default: {
            return vec4<u32>(params.groups, c_out_per_group(), c_in_per_group() * taps() + select(0u, 1u, HAS_BIAS),
                             params.batch * hw_out);
        }
    }
}

fn gemm_load_a(g: u32, row: u32, kk: u32) -> f32 {
    let hw_out = params.h_out * params.w_out;
    switch CONV_MODE {
        case 0u: {
            // w[g·og + row, kk]
            return a_at((g * c_out_per_group() + row) * c_in_per_group() * taps() + kk);
        }
        case 1u: {
            // w[g·og + o, row, t] with kk = (o, t)
            if (POINTWISE) {
                return a_at((g * c_out_per_group() + kk) * c_in_per_group() + row);
            }
            let ot = udivmod(kk, taps());
            let o = ot.x;
            let t = ot.y;
            return a_at(((g * c_out_per_group() + o) * c_in_per_group() + row) * taps() + t);
        }
        case 3u: {
            // w[g·og + kk, row] with row = (c, p, q)
            return a_at((g * c_out_per_group() + kk) * c_in_per_group() * taps() + row);
        }
        default: {
            // dy[n, g·og + row, pos] with kk = (n, pos)
            let np = udivmod(kk, hw_out);
            let n = np.x;
            let pos = np.y;
            return a_at((n * params.c_out + g * c_out_per_group() + row) * hw_out + pos);
        }
    }
}

fn gemm_load_b(g: u32, kk: u32, col: u32) -> f32 {
    let hw_out = params.h_out * params.w_out;
    switch CONV_MODE {
        case 0u: {
            let np = udivmod(col, hw_out);
            return patch_entry(g, kk, np.x, np.y);
        }
        case 1u: {
            // dy[n, g·og + o, oh, ow] for the output position that tap t of (ih, iw) came from, if any.
            let hw_in = params.h_in * params.w_in;
            let nq = udivmod(col, hw_in);
            let n = nq.x;
            if (POINTWISE) {
                return b_at((n * params.c_out + g * c_out_per_group() + kk) * hw_out + nq.y);
            }
            let ot = udivmod(kk, taps());
            let o = ot.x;
            let pq = udivmod(ot.y, params.kw);
            let hw = udivmod(nq.y, params.w_in);
            let th = i32(hw.x + params.pad_h) - i32(pq.x * params.dil_h);
            let tw = i32(hw.y + params.pad_w) - i32(pq.y * params.dil_w);
            if (th < 0 || tw < 0) {
                return 0.0;
            }
            let uh = u32(th);
            let uw = u32(tw);
            let sh = udivmod(uh, params.stride_h);
            let sw = udivmod(uw, params.stride_w);
            if (sh.y != 0u || sw.y != 0u) {
                return 0.0;
            }
            let oh = sh.x;
            let ow = sw.x;
            if (oh >= params.h_out || ow >= params.w_out) {
                return 0.0;
            }
            return b_at(((n * params.c_out + g * c_out_per_group() + o) * params.h_out + oh) * params.w_out + ow);
        }
        case 3u: {
            // dy[n, g·og + kk, pos]
            let np = udivmod(col, hw_out);
            return b_at((np.x * params.c_out + g * c_out_per_group() + kk) * hw_out + np.y);
        }
        default: {
            if (HAS_BIAS && col == c_in_per_group() * taps()) {
                return 1.0;
            }
            let np = udivmod(kk, hw_out);
            return patch_entry(g, col, np.x, np.y);
        }
    }
}

// Interior tiles load by quads where some operand has contiguous quads and no value needs the taps'
// index arithmetic: 1×1 convolutions, and the patchifying input gradient (dy's quads; the weights' are cheap).
// Other convolutions keep gemm.wgsl's value-by-value loads, which spread a quad's 4 im2col index
// computations over 4 threads (on llvmpipe the quads measured slower for a 3×3 convolution).
fn gemm_quads() -> bool {
    return POINTWISE || CONV_MODE == 3u;
}

// A at kk .. kk + 3 of a row: a quad load where those are consecutive in memory (the forward's weights; the
// weight gradient's dy within one image), else value by value.
fn gemm_load_a4(g: u32, row: u32, kk: u32) -> vec4<f32> {
    let hw_out = params.h_out * params.w_out;
    if (CONV_MODE == 0u) {
        return a_quad((g * c_out_per_group() + row) * c_in_per_group() * taps() + kk);
    }
    if (CONV_MODE == 2u) {
        let np = udivmod(kk, hw_out);
        if (np.y + 3u < hw_out) {
            return a_quad((np.x * params.c_out + g * c_out_per_group() + row) * hw_out + np.y);
        }
    }
    return vec4<f32>(gemm_load_a(g, row, kk), gemm_load_a(g, row, kk + 1u), gemm_load_a(g, row, kk + 2u),
                     gemm_load_a(g, row, kk + 3u));
}

// B at col .. col + 3 of a row: a quad load where those are consecutive in memory (a 1×1 convolution's
// input or dy, dy of the patchifying input gradient, within one image), else value by value.
fn gemm_load_b4(g: u32, kk: u32, col: u32) -> vec4<f32> {
    let hw_out = params.h_out * params.w_out;
    let pointwise_or_patchify = (POINTWISE && (CONV_MODE == 0u || CONV_MODE == 1u)) || CONV_MODE == 3u;
    if (pointwise_or_patchify) {
        // Modes 0 and 1 of a 1×1 convolution have as many input as output pixels.
        let np = udivmod(col, hw_out);
        if (np.y + 3u < hw_out) {
            var plane = np.x * params.c_in + g * c_in_per_group() + kk; // x's channel (mode 0)
            if (CONV_MODE != 0u) {
                plane = np.x * params.c_out + g * c_out_per_group() + kk; // dy's channel
            }
            return b_quad(plane * hw_out + np.y);
        }
    }
    return vec4<f32>(gemm_load_b(g, kk, col), gemm_load_b(g, kk, col + 1u), gemm_load_b(g, kk, col + 2u),
                     gemm_load_b(g, kk, col + 3u));
}

fn gemm_store(g: u32, split: u32, row: u32, col: u32, value: f32) {
    let hw_out = params.h_out * params.w_out;
    switch CONV_MODE {
        case 0u: {
            let o = g * c_out_per_group() + row;
            var v = value;
            if (HAS_BIAS && split == 0u) {
                v += bias[o];
            }
            let np = udivmod(col, hw_out);
            let at = split * params.batch * params.c_out * hw_out + (np.x * params.c_out + o) * hw_out + np.y;
            if (GELU) {
                c_out[at] = gelu(v);
                c_out2[at] = gelu_derivative(v);
            } else {
                c_out[at] = v;
            }
        }
        case 1u: {
            let hw_in = params.h_in * params.w_in;
            let nq = udivmod(col, hw_in);
            c_out[split * params.batch * params.c_in * hw_in + (nq.x * params.c_in + g * c_in_per_group() + row) * hw_in + nq.y] = value;
        }
        case 3u: {
            // Patch row (c, p, q) of output position (n, oh, ow) is pixel (oh·kh + p, ow·kw + q) of channel c.
            let ct = udivmod(row, taps());
            let pq = udivmod(ct.y, params.kw);
            let np = udivmod(col, hw_out);
            let hw = udivmod(np.y, params.w_out);
            let ih = hw.x * params.kh + pq.x;
            let iw = hw.y * params.kw + pq.y;
            let channel = np.x * params.c_in + g * c_in_per_group() + ct.x;
            c_out[split * params.batch * params.c_in * params.h_in * params.w_in
                + (channel * params.h_in + ih) * params.w_in + iw] = value;
        }
        default: {
            let k_w = c_in_per_group() * taps();
            let n_w = params.c_out * k_w;
            let o = g * c_out_per_group() + row;
            let base = split * (n_w + select(0u, params.c_out, HAS_BIAS));
            if (HAS_BIAS && col == k_w) {
                if (params.splits == 1u) {
                    c_out2[o] = value;
                } else {
                    c_out[base + n_w + o] = value;
                }
            } else {
                c_out[base + o * k_w + col] = value;
            }
        }
    }
}
