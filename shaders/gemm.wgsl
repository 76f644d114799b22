// gemm.wgsl — kernel: gemm, the tiled matrix-product core shared by matmul.wgsl and conv2d.wgsl.
//
// C[b] = A[b]·B[b] with A[b] M×K and B[b] K×N for b < batch. The file it is combined with supplies the
// operands and the result through functions, so one tiling serves plain, transposed and implicit-GEMM
// (im2col-free convolution) products:
//   gemm_shape() -> (batch, M, N, K), gemm_load_a(b, row, kk), gemm_load_b(b, kk, col),
//   gemm_store(b, row, col, value).
// Each workgroup of 256 threads computes a 64×64 tile of C; each thread keeps a 4×4 block in registers.
// K advances 16 at a time through two workgroup-memory tiles (A as [kk][row], B as [kk][col], 8 KiB in
// all), so every loaded value is reused 64 times. Edges (sizes that are not tile multiples) load zeros
// and skip the stores.

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;

var<workgroup> tile_a: array<vec4<f32>, 256>; // TILE_K × TILE_M, row-major by kk
var<workgroup> tile_b: array<vec4<f32>, 256>; // TILE_K × TILE_N, row-major by kk

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let shape = gemm_shape();
    let batch = shape.x;
    let m = shape.y;
    let n = shape.z;
    let k = shape.w;
    let tiles_m = (m + TILE_M - 1u) / TILE_M;
    let tiles_n = (n + TILE_N - 1u) / TILE_N;
    let wid = linear_workgroup(wg, nwg);
    let live = wid < batch * tiles_m * tiles_n;
    let tile = select(0u, wid, live);
    let b = tile / (tiles_m * tiles_n);
    let rem = tile % (tiles_m * tiles_n);
    let row0 = (rem / tiles_n) * TILE_M;
    let col0 = (rem % tiles_n) * TILE_N;
    let tx = lid % 16u;
    let ty = lid / 16u;

    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < k; k0 += TILE_K) {
        for (var r = 0u; r < 4u; r++) {
            let e = lid + r * 256u;
            // A: consecutive threads walk kk first (contiguous in a row-major A).
            let ar = e / TILE_K;
            let ak = e % TILE_K;
            var va = 0.0;
            if (live && row0 + ar < m && k0 + ak < k) {
                va = gemm_load_a(b, row0 + ar, k0 + ak);
            }
            let ia = ak * TILE_M + ar;
            tile_a[ia / 4u][ia % 4u] = va;
            // B: consecutive threads walk columns (contiguous in a row-major B).
            let bk = e / TILE_N;
            let bc = e % TILE_N;
            var vb = 0.0;
            if (live && k0 + bk < k && col0 + bc < n) {
                vb = gemm_load_b(b, k0 + bk, col0 + bc);
            }
            let ib = bk * TILE_N + bc;
            tile_b[ib / 4u][ib % 4u] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let av = tile_a[kk * (TILE_M / 4u) + ty];
            let bv = tile_b[kk * (TILE_N / 4u) + tx];
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }
    if (!live) {
        return;
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + ty * 4u + i;
        if (row < m) {
            for (var j = 0u; j < 4u; j++) {
                let col = col0 + tx * 4u + j;
                if (col < n) {
                    gemm_store(b, row, col, acc[i][j]);
                }
            }
        }
    }
}
