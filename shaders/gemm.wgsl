// gemm.wgsl — the tiled matrix-product core (gemm_tile) shared by matmul.wgsl and conv2d.wgsl.
//
// C[b] = A[b]·B[b] with A[b] M×K and B[b] K×N for b < batch. The file it is combined with supplies the
// operands and the result through functions, so one tiling serves plain, transposed and implicit-GEMM
// (im2col-free convolution) products:
//   gemm_shape() -> (batch, M, N, K), gemm_splits() -> S, gemm_load_a(b, row, kk), gemm_load_b(b, kk, col),
//   gemm_quads() -> bool, gemm_load_a4(b, row, kk) (A at kk .. kk + 3 of a row), gemm_load_b4(b, kk, col)
//   (B at col .. col + 3 of a row), gemm_store(b, split, row, col, value).
// Where GEMM_QUADS (a constant the host sets: on unless turned off for comparison) and gemm_quads() say so,
// interior tiles are loaded by quads (gemm_load_quads): each thread loads 4
// quads of A's tile (4 consecutive kk of a row) and 4 of B's (4 consecutive columns), so a file computes an
// operand's index once per 4 values, and loads a quad as one vec4 where the operand is contiguous and
// 16-byte aligned there (its arrays are vec4 arrays; the host rounds every buffer to 16 bytes). Edge tiles,
// and products whose values each take their own index arithmetic (implicit im2col), load value by value.
// Split-K: with S > 1 each output tile is computed by S workgroups over consecutive ranges of K, each
// storing its partial sum for split s (the host adds the S partial results), so products with few output
// tiles and a long K (weight gradients) still fill the device.
// A workgroup computes a T×T tile of C, T = GEMM_TILE (a constant the host sets from the adapter's limits:
// 64, or 128 where a workgroup may have 256 threads and 16,640 bytes of workgroup memory), with (T/8)²
// threads; each thread keeps an 8×8 block of results in registers, rows 8·ty + i (i < 8) and columns
// 4·tx + j and T/2 + 4·tx + j (j < 4), so that a K step reads its A values and its B values as two vec4s
// each from workgroup memory (neighbouring threads read neighbouring vec4s of B; the T/8 threads of a row
// block read the same A). K advances 16 at a time through two workgroup-memory tiles (A as [kk][row], B as
// [kk][col], both in vec4s, about 8 KiB in all at T = 64, 16 KiB at 128): every value loaded from memory is
// used T times, and every value read from workgroup memory 8 times (4 vec4 reads per 64 FMAs; the earlier
// 4×4 block per thread read twice as often, and on llvmpipe its products were 1.6–1.9× slower). The rows
// and columns were strided (ty + 8·i, tx + 8·j) until the vec4 reads: 16 scalar reads per K step, and on
// llvmpipe the 1024³ matmul was 1.3–2× slower that way (README).
// A's tile rows are T + 4 words apart, not T: a multiple of 4 for the vec4 reads, and the loader's quad
// stores (threads t = 0 … 31 store quad t, word (4·(t % 4) + s)·A_STRIDE + t / 4 for its value s) then fall
// into 16 banks of 32, a 2-way conflict, where a stride of T would give 8 banks (4-way). No multiple of 4
// does better; the stores are a quarter of the tile's workgroup-memory traffic. Edges (sizes that are not
// tile multiples) load zeros and skip the stores.

const TILE_M: u32 = GEMM_TILE;
const TILE_N: u32 = GEMM_TILE;
const TILE_K: u32 = 16u;
// Threads across a row block (and row blocks): T/8, each thread owning an 8×8 block of the tile.
const TX: u32 = GEMM_TILE / 8u;
const THREADS: u32 = TX * TX;
// Words between rows of tile_a (TILE_M + 4: aligned vec4 reads, 2-way conflicts on the quad stores; see above).
const A_STRIDE: u32 = TILE_M + 4u;
// Values of each operand's tile per thread (the value-by-value loader), and quads (the quad loader).
const LOADS: u32 = TILE_M * TILE_K / THREADS;

var<workgroup> tile_a: array<vec4<f32>, TILE_K * A_STRIDE / 4u>; // row-major by kk, in vec4s
var<workgroup> tile_b: array<vec4<f32>, TILE_K * TILE_N / 4u>; // row-major by kk, 4 columns per entry

// A's values at rows 8·ty + i of one K step of the tile: lo for i < 4, hi for 4 ≤ i < 8.
struct ARow {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// The work of one thread of a THREADS-thread workgroup: `lid` loads its share of the tiles, (ty, tx) are the
// rows and columns of its 8×8 block (any bijection of the threads onto TX × TX), and `lane0` is passed
// through to gemm_a_values.
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
    // drivers that compile invocations into SIMD lanes (llvmpipe), named vectors in registers. Row 8·ty + i
    // is c{i}l (columns 4·tx … 4·tx + 3) and c{i}h (32 + 4·tx … 35 + 4·tx).
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
        if (full && GEMM_QUADS && gemm_quads()) {
            gemm_load_quads(b, lid, row0, col0, k0);
        } else {
            for (var r = 0u; r < LOADS; r++) {
                let e = lid + r * THREADS;
                // A: consecutive threads walk kk first (contiguous in a row-major A).
                let ar = e / TILE_K;
                let ak = e % TILE_K;
                var va = 0.0;
                if (full || (live && row0 + ar < m && k0 + ak < k_end)) {
                    va = gemm_load_a(b, row0 + ar, k0 + ak);
                }
                let at = ak * A_STRIDE + ar;
                tile_a[at / 4u][at % 4u] = va;
                // B: consecutive threads walk columns (contiguous in a row-major B).
                let bk = e / TILE_N;
                let bc = e % TILE_N;
                var vb = 0.0;
                if (full || (live && k0 + bk < k_end && col0 + bc < n)) {
                    vb = gemm_load_b(b, k0 + bk, col0 + bc);
                }
                tile_b[bk * (TILE_N / 4u) + bc / 4u][bc % 4u] = vb;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a = gemm_a_values(kk * A_STRIDE + 8u * ty, tx, lane0);
            let al = a.lo;
            let ah = a.hi;
            let ib = kk * (TILE_N / 4u) + tx;
            let bl = tile_b[ib];
            let bh = tile_b[ib + TX];
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
    let r = row0 + 8u * ty;
    let c = col0 + 4u * tx;
    store_row(b, split, r, c, m, n, c0l, c0h);
    store_row(b, split, r + 1u, c, m, n, c1l, c1h);
    store_row(b, split, r + 2u, c, m, n, c2l, c2h);
    store_row(b, split, r + 3u, c, m, n, c3l, c3h);
    store_row(b, split, r + 4u, c, m, n, c4l, c4h);
    store_row(b, split, r + 5u, c, m, n, c5l, c5h);
    store_row(b, split, r + 6u, c, m, n, c6l, c6h);
    store_row(b, split, r + 7u, c, m, n, c7l, c7h);
}

// Thread lid's share of an interior K step's tiles (rows row0 …, columns col0 …, kk from k0; every value
// inside the product): LOADS / 4 quads of A (4 consecutive kk of a row; consecutive threads walk kk first,
// contiguous in a row-major A) and as many of B (4 consecutive columns of a row).
fn gemm_load_quads(b: u32, lid: u32, row0: u32, col0: u32, k0: u32) {
    for (var r = 0u; r < LOADS / 4u; r++) {
        let e = lid + r * THREADS;
        let ar = e / (TILE_K / 4u);
        let ak = 4u * (e % (TILE_K / 4u));
        let va = gemm_load_a4(b, row0 + ar, k0 + ak);
        let at = ak * A_STRIDE + ar;
        tile_a[at / 4u][at % 4u] = va.x;
        tile_a[(at + A_STRIDE) / 4u][at % 4u] = va.y;
        tile_a[(at + 2u * A_STRIDE) / 4u][at % 4u] = va.z;
        tile_a[(at + 3u * A_STRIDE) / 4u][at % 4u] = va.w;
        let bk = e / (TILE_N / 4u);
        let bc = 4u * (e % (TILE_N / 4u));
        let vb = gemm_load_b4(b, k0 + bk, col0 + bc);
        let bt = bk * TILE_N + bc;
        tile_b[bt / 4u] = vb;
    }
}

// Stores one thread's eight results of a row: columns col + j from lo and col + TILE_N/2 + j from hi (j < 4).
fn store_row(b: u32, split: u32, row: u32, col: u32, m: u32, n: u32, lo: vec4<f32>, hi: vec4<f32>) {
    if (row >= m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (col + j < n) {
            gemm_store(b, split, row, col + j, lo[j]);
        }
        if (col + TILE_N / 2u + j < n) {
            gemm_store(b, split, row, col + TILE_N / 2u + j, hi[j]);
        }
    }
}
