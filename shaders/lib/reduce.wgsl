// Workgroup-wide reductions of one f32 per invocation. Requires `const WG`
// (a power of two) and the `Ids` struct. Call from uniform control flow: every
// invocation of the workgroup must reach the call (they contain barriers).
//
// With SUBGROUP, each subgroup reduces in registers (subgroupAdd/Max) and one
// lane per subgroup writes its partial to shared memory; the partials are then
// summed by every invocation. This is correct for any subgroup size (8 on
// lavapipe, 32 NVIDIA, 64 AMD) and any number of subgroups. Without it, a
// shared-memory tree does the whole reduction.

var<workgroup> red_scratch: array<f32, WG>;

fn wg_sum(v: f32, ids: Ids) -> f32 {
#ifdef SUBGROUP
    let s = subgroupAdd(v);
    if (ids.sg_lane == 0u) {
        red_scratch[ids.sg_id] = s;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < ids.n_sg; i++) {
        total += red_scratch[i];
    }
    workgroupBarrier();
    return total;
#else
    red_scratch[ids.lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (ids.lid < s) {
            red_scratch[ids.lid] += red_scratch[ids.lid + s];
        }
        workgroupBarrier();
    }
    let total = red_scratch[0];
    workgroupBarrier();
    return total;
#endif
}

fn wg_max(v: f32, ids: Ids) -> f32 {
#ifdef SUBGROUP
    let s = subgroupMax(v);
    if (ids.sg_lane == 0u) {
        red_scratch[ids.sg_id] = s;
    }
    workgroupBarrier();
    var m = red_scratch[0];
    for (var i = 1u; i < ids.n_sg; i++) {
        m = max(m, red_scratch[i]);
    }
    workgroupBarrier();
    return m;
#else
    red_scratch[ids.lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (ids.lid < s) {
            red_scratch[ids.lid] = max(red_scratch[ids.lid], red_scratch[ids.lid + s]);
        }
        workgroupBarrier();
    }
    let m = red_scratch[0];
    workgroupBarrier();
    return m;
#endif
}
