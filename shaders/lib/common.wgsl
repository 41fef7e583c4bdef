// Invocation ids every kernel takes as its one entry-point argument.
// The subgroup ids exist only in SUBGROUP variants (Features::SUBGROUP).
// Kernels launch at most 65535 workgroups per dimension, so large grids are
// 2-D: `group_index` flattens them (the launcher guards the overshoot).
struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
#ifdef SUBGROUP
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
#endif
}

fn group_index(ids: Ids) -> u32 {
    return ids.wid.x + ids.wid.y * ids.nwg.x;
}

// Global thread index of a 1-D kernel over a 2-D grid of WG-wide groups.
fn thread_index(ids: Ids) -> u32 {
    return group_index(ids) * WG + ids.lid;
}
