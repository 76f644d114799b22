// gemm.wgsl — the tiled matrix-product core (gemm_tile) shared by matmul.wgsl and conv2d.wgsl.
//
// C[b] = A[b]·B[b] with A[b] M×K and B[b] K×N for b < batch. The file it is combined with supplies the
// operands and the result through functions, so one tiling serves plain, transposed and implicit-GEMM
// (im2col-free convolution) products:
//   gemm_shape() -> (batch, M, N, K), gemm_splits() -> S, gemm_load_a(b, row, kk), gemm_load_b(b, kk, col),
//   gemm_store(b, split, row, col, value).
// Split-K: with S > 1 each output tile is computed by S workgroups over consecutive ranges of K, each
// storing its partial sum for split s (the host adds the S partial results), so products with few output
// tiles and a long K (weight gradients) still fill the device.
// Each workgroup of 64 threads (8×8) computes a 64×64 tile of C; each thread keeps an 8×8 block of results in
// registers, rows ty + 8·i and columns tx + 8·j (strided, so neighbouring threads read neighbouring words of
// workgroup memory). K advances 16 at a time through two workgroup-memory tiles (A as [kk][row], B as
// [kk][col], about 8 KiB in all): every value loaded from memory is used 64 times, and every value read from
// workgroup memory 8 times (16 reads per 64 FMAs; the earlier 4×4 block per thread read twice as often, and on llvmpipe its
// products were 1.6–1.9× slower).
// A's tile rows are 65 words apart, not 64: its loader's neighbouring threads walk kk (contiguous in a
// row-major A) and so store a column of the tile, which at a stride of 64 words would fall into one memory
// bank 16 times over (a 16-way conflict on GPUs with 32 banks); at 65 the 16 stores hit 16 banks. Edges
// (sizes that are not tile multiples) load zeros and skip the stores.

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;
// Threads per workgroup: 8×8, each owning an 8×8 block of the 64×64 tile.
const THREADS: u32 = 64u;
// Words between rows of tile_a (TILE_M + 1: conflict-free column stores, see above).
const A_STRIDE: u32 = 65u;

var<workgroup> tile_a: array<f32, 1040>; // TILE_K × A_STRIDE, row-major by kk
var<workgroup> tile_b: array<f32, 1024>; // TILE_K × TILE_N, row-major by kk

// A's values at rows ty + 8·i of one K step of the tile: lo for i < 4, hi for 4 ≤ i < 8.
struct ARow {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// The work of one thread of a 64-thread workgroup: `lid` loads its share of the tiles, (ty, tx) are the rows
// and columns of its 8×8 block (any bijection of the 64 threads onto 8×8), and `lane0` is passed through to
// gemm_a_values.
fn gemm_tile(wg: vec3<u32>, nwg: vec3<u32>, lid: u32, ty: u32, tx: u32, lane0: u32) {
    let shape = gemm_shape();
    let batch = shape.x;
    let m = shape.y;
    let n = shape.z;
    let k = shape.w;
    let splits = gemm_splits();
    let tiles_m = (m + TILE_M - 1u) / TILE_M;
    let tiles_n = (n + TILE_N - 1u) / TILE_N;
    let tiles = tiles_m * tiles_n;
    let wid = linear_workgroup(wg, nwg);
    let live = wid < batch * splits * tiles;
    let id = select(0u, wid, live);
    let b = id / (splits * tiles);
    let split = (id / tiles) % splits;
    let rem = id % tiles;
    let row0 = (rem / tiles_n) * TILE_M;
    let col0 = (rem % tiles_n) * TILE_N;
    // This workgroup's range of K: whole TILE_K steps, the last range possibly shorter.
    let chunk = ((k + splits - 1u) / splits + TILE_K - 1u) / TILE_K * TILE_K;
    let k_begin = min(k, split * chunk);
    // A workgroup past the launch (the grid rounds up) runs no K steps.
    let k_end = select(k_begin, min(k, k_begin + chunk), live);

    // Named accumulators rather than an array: a dynamically indexed private array would live in memory on
    // drivers that compile invocations into SIMD lanes (llvmpipe), named vectors in registers. Row ty + 8·i
    // is c{i}l (columns tx, tx + 8, tx + 16, tx + 24) and c{i}h (tx + 32 … tx + 56).
    var c0l = vec4<f32>(); var c0h = vec4<f32>();
    var c1l = vec4<f32>(); var c1h = vec4<f32>();
    var c2l = vec4<f32>(); var c2h = vec4<f32>();
    var c3l = vec4<f32>(); var c3h = vec4<f32>();
    var c4l = vec4<f32>(); var c4h = vec4<f32>();
    var c5l = vec4<f32>(); var c5h = vec4<f32>();
    var c6l = vec4<f32>(); var c6h = vec4<f32>();
    var c7l = vec4<f32>(); var c7h = vec4<f32>();
    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        // Interior tiles (the common case) skip the per-element edge tests.
        let full = live && row0 + TILE_M <= m && col0 + TILE_N <= n && k0 + TILE_K <= k_end;
        for (var r = 0u; r < 16u; r++) {
            let e = lid + r * THREADS;
            // A: consecutive threads walk kk first (contiguous in a row-major A).
            let ar = e / TILE_K;
            let ak = e % TILE_K;
            var va = 0.0;
            if (full || (live && row0 + ar < m && k0 + ak < k_end)) {
                va = gemm_load_a(b, row0 + ar, k0 + ak);
            }
            tile_a[ak * A_STRIDE + ar] = va;
            // B: consecutive threads walk columns (contiguous in a row-major B).
            let bk = e / TILE_N;
            let bc = e % TILE_N;
            var vb = 0.0;
            if (full || (live && k0 + bk < k_end && col0 + bc < n)) {
                vb = gemm_load_b(b, k0 + bk, col0 + bc);
            }
            tile_b[bk * TILE_N + bc] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a = gemm_a_values(kk * A_STRIDE + ty, tx, lane0);
            let al = a.lo;
            let ah = a.hi;
            let ib = kk * TILE_N + tx;
            let bl = vec4<f32>(tile_b[ib], tile_b[ib + 8u], tile_b[ib + 16u], tile_b[ib + 24u]);
            let bh = vec4<f32>(tile_b[ib + 32u], tile_b[ib + 40u], tile_b[ib + 48u], tile_b[ib + 56u]);
            c0l += al.x * bl; c0h += al.x * bh;
            c1l += al.y * bl; c1h += al.y * bh;
            c2l += al.z * bl; c2h += al.z * bh;
            c3l += al.w * bl; c3h += al.w * bh;
            c4l += ah.x * bl; c4h += ah.x * bh;
            c5l += ah.y * bl; c5h += ah.y * bh;
            c6l += ah.z * bl; c6h += ah.z * bh;
            c7l += ah.w * bl; c7h += ah.w * bh;
        }
        workgroupBarrier();
    }
    if (!live) {
        return;
    }
    let r = row0 + ty;
    let c = col0 + tx;
    store_row(b, split, r, c, m, n, c0l, c0h);
    store_row(b, split, r + 8u, c, m, n, c1l, c1h);
    store_row(b, split, r + 16u, c, m, n, c2l, c2h);
    store_row(b, split, r + 24u, c, m, n, c3l, c3h);
    store_row(b, split, r + 32u, c, m, n, c4l, c4h);
    store_row(b, split, r + 40u, c, m, n, c5l, c5h);
    store_row(b, split, r + 48u, c, m, n, c6l, c6h);
    store_row(b, split, r + 56u, c, m, n, c7l, c7h);
}

// Stores one thread's eight results of a row: columns col + 8·j, j < 4 from lo and 4 ≤ j < 8 from hi.
fn store_row(b: u32, split: u32, row: u32, col: u32, m: u32, n: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if (row >= m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (col + 8u * j < n) {
            gemm_store(b, split, row, col + 8u * j, lo[j]);
        }
        if (col + 32u + 8u * j < n) {
            gemm_store(b, split, row, col + 32u + 8u * j, hi[j]);
        }
    }
}
