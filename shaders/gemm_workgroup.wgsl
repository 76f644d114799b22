// gemm_workgroup.wgsl — kernel: gemm (gemm.wgsl's tile) for every adapter, A's values read from workgroup memory.
//
// Thread lid owns rows ty = lid / 8 (+ 8·i) and the columns of tx = lid % 8 (see gemm.wgsl) of the tile.

@compute @workgroup_size(64)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    gemm_tile(wg, nwg, lid, lid / 8u, lid % 8u, 0u);
}

// The eight A values of a thread (rows ty + 8·i; `at` is row ty's index in tile_a): eight workgroup-memory
// reads, the same for the eight threads of a row.
fn gemm_a_values(at: u32, tx: u32, lane0: u32) -> ARow {
    return ARow(vec4<f32>(tile_a[at], tile_a[at + 8u], tile_a[at + 16u], tile_a[at + 24u]),
                vec4<f32>(tile_a[at + 32u], tile_a[at + 40u], tile_a[at + 48u], tile_a[at + 56u]));
}
