// gemm_subgroup.wgsl — kernel: gemm (gemm.wgsl's tile) on adapters with subgroups, A's values shared by broadcasts.
//
// The TX threads that share rows 8·ty + i (tx = 0 … TX − 1) need the same eight A values at every K step.
// Each aligned group of eight of them sits in one subgroup, at consecutive lanes from lane0: thread tx
// reads only row 8·ty + tx % 8 from workgroup memory and gets the other rows from its neighbours by subgroup broadcast or shuffle, one
// workgroup-memory read per K step instead of eight scalar ones (on llvmpipe such reads are gathers and
// dominated the kernel; against gemm_workgroup.wgsl's two vec4 reads this form stayed a little faster there,
// 5.0, 4.8, 5.3 against 4.8, 4.3, 4.3 GFLOP/s at 1024³).
//
// The roles come from the subgroup builtins, not from the invocation index, since WGSL does not promise how
// invocations are grouped: thread t = subgroup_id · subgroup_size + lane takes the roles ty = t / TX,
// tx = t % TX. That is a bijection onto the workgroup's threads when every subgroup is full, and an 8-lane
// group never straddles two subgroups when their size is a multiple of 8. The host uses this file only on
// adapters whose subgroup sizes are all powers of two from 8 to 64, so THREADS (64 or 256) is a multiple of
// the size, and for such workgroups
// drivers fill every subgroup (Vulkan promises it outright only with the full-subgroups flag of
// VK_EXT_subgroup_size_control, which WebGPU does not expose). A check of num_subgroups · subgroup_size
// with a workgroup-memory fallback was tried: taken per K step it cost a quarter of the subgroup form's
// speed on llvmpipe, and as separate copies of the tile it added about 3 s of shader compilation to a first
// llvmpipe step, so it is not here. Broadcasts
// need a constant lane, so 8-lane subgroups (llvmpipe) take them; wider ones shuffle from lane0 + i.

// The subgroups are 8 lanes wide (the same for the whole subgroup, so the branch on it does not diverge).
var<private> eight_lanes: bool;

@compute @workgroup_size(THREADS)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32,
        @builtin(subgroup_size) sg_size: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let t = sg * sg_size + lane;
    eight_lanes = sg_size == 8u;
    gemm_tile(wg, nwg, lid, t / TX, t % TX, lane - lane % 8u);
}

// The eight A values of a thread (rows 8·ty + i; `at` is row 8·ty's index in tile_a), from lanes lane0 + i.
fn gemm_a_values(at: u32, tx: u32, lane0: u32) -> ARow {
    let mine = tile_a[at / 4u + (tx % 8u) / 4u][tx % 4u];
    if (eight_lanes) {
        return ARow(vec4<f32>(subgroupBroadcast(mine, 0u), subgroupBroadcast(mine, 1u),
                              subgroupBroadcast(mine, 2u), subgroupBroadcast(mine, 3u)),
                    vec4<f32>(subgroupBroadcast(mine, 4u), subgroupBroadcast(mine, 5u),
                              subgroupBroadcast(mine, 6u), subgroupBroadcast(mine, 7u)));
    }
    return ARow(vec4<f32>(subgroupShuffle(mine, lane0), subgroupShuffle(mine, lane0 + 1u),
                          subgroupShuffle(mine, lane0 + 2u), subgroupShuffle(mine, lane0 + 3u)),
                vec4<f32>(subgroupShuffle(mine, lane0 + 4u), subgroupShuffle(mine, lane0 + 5u),
                          subgroupShuffle(mine, lane0 + 6u), subgroupShuffle(mine, lane0 + 7u)));
}
