// Eight consecutive f32 activations x[i .. i + 8), the ones at column
// k0 + j >= k read as 0 (so padding never meets stale data). Declares the
// activation binding 2, `x`: with X_VEC4 (row stride a multiple of 4, so
// i is) as array<vec4<f32>> for two 16-byte loads, else array<f32>.

#ifdef X_VEC4
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;

fn x_at(i: u32) -> f32 {
    return x[i >> 2u][i & 3u];
}

fn load_x8(i: u32, k0: u32, k: u32) -> W8 {
    if (k0 + 8u <= k) {
        return W8(x[i >> 2u], x[(i >> 2u) + 1u]);
    }
    var v: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        if (k0 + j < k) {
            v[j] = x_at(i + j);
        }
    }
    return W8(vec4<f32>(v[0], v[1], v[2], v[3]), vec4<f32>(v[4], v[5], v[6], v[7]));
}
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;

fn load_x8(i: u32, k0: u32, k: u32) -> W8 {
    if (k0 + 8u <= k) {
        return W8(
            vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]),
            vec4<f32>(x[i + 4u], x[i + 5u], x[i + 6u], x[i + 7u]),
        );
    }
    var v: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        if (k0 + j < k) {
            v[j] = x[i + j];
        }
    }
    return W8(vec4<f32>(v[0], v[1], v[2], v[3]), vec4<f32>(v[4], v[5], v[6], v[7]));
}
#endif
