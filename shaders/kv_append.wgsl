// Appends the new tokens' k and v rows to a layer's KV cache.
// Cache layout, k and v each: [B, kv_heads, s_max, head_dim] f32.
// Source: row b * T + t of k_src / v_src (e.g. the fused qkv buffer), kv head
// h at column k_off + h * head_dim (v_off for v). Token t of sequence b goes
// to slot past + t.
#include common

struct Params {
    b: u32,
    t: u32,
    kv_heads: u32,
    head_dim: u32,
    s_max: u32,
    past: u32,
    k_stride: u32,
    k_off: u32,
    v_stride: u32,
    v_off: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> k_src: array<f32>;
@group(0) @binding(2) var<storage, read> v_src: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let d = g % P.head_dim;
    let r1 = g / P.head_dim;
    let h = r1 % P.kv_heads;
    let r2 = r1 / P.kv_heads;
    let t = r2 % P.t;
    let b = r2 / P.t;
    if (b >= P.b) {
        return;
    }
    let src = b * P.t + t;
    let dst = ((b * P.kv_heads + h) * P.s_max + P.past + t) * P.head_dim + d;
    k_cache[dst] = k_src[src * P.k_stride + P.k_off + h * P.head_dim + d];
    v_cache[dst] = v_src[src * P.v_stride + P.v_off + h * P.head_dim + d];
}
