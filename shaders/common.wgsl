// common.wgsl — helpers prepended to every kernel family (no kernels of its own).
//
// Dispatch grids: a launch of T workgroups is spread over up to three dimensions (each at most the
// adapter's per-dimension limit, normally 65535), so kernels work with the linearised workgroup index
//   wid = wg.x + nwg.x·(wg.y + nwg.y·wg.z)
// and the host rounds T up; the few workgroups past the end do nothing (but still reach every barrier).

fn linear_workgroup(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + nwg.x * (wg.y + nwg.y * wg.z);
}
