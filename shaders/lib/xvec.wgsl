// Activations for the matmul kernels: binding 2, `x`, f32, read four at a
// time from an index that is a multiple of 4 (in elements from the start of
// the binding). With X_VEC4 (row stride a multiple of 4, binding whole vec4s:
// the launcher checks both) one 16-byte load, else four scalar loads.
//
// `x4m(i, k0, k)` zeroes the values at columns k0 + j >= k, so padding and
// the next row never meet the weights; its loads are unconditional (reads
// past the end of the binding are clamped by WGSL's bounds rules and then
// discarded by the select), which keeps the hot loops free of branches.

#ifdef X_VEC4
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;

fn x4(i: u32) -> vec4<f32> {
    return x[i >> 2u];
}
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;

fn x4(i: u32) -> vec4<f32> {
    return vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]);
}
#endif

fn x4m(i: u32, k0: u32, k: u32) -> vec4<f32> {
    let kk = vec4<u32>(k0) + vec4<u32>(0u, 1u, 2u, 3u);
    return select(vec4<f32>(0.0), x4(i), kk < vec4<u32>(k));
}
