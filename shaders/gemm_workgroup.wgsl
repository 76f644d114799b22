// gemm_workgroup.wgsl — kernel: gemm (gemm.wgsl's tile) for every adapter, A's values read from workgroup memory.
//
// Thread lid owns the rows of ty = lid / TX and the columns of tx = lid % TX (see gemm.wgsl) of the tile.

@compute @workgroup_size(THREADS)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    gemm_tile(wg, nwg, lid, lid / TX, lid % TX, 0u);
}

// The eight A values of a thread (rows 8·ty + i; `at`, a multiple of 4, is row 8·ty's index in tile_a): two
// vec4 reads of workgroup memory, the same for the TX threads of a row block.
fn gemm_a_values(at: u32, tx: u32, lane0: u32) -> ARow {
    return ARow(tile_a[at / 4u], tile_a[at / 4u + 1u]);
}
