// Appends the new tokens' k and v rows to a layer's KV cache.
// Cache layout, k and v each: [B, kv_heads, s_max, head_dim] f32, or with
// KV_F16 the same in f16, two values packed per u32 (head_dim even); then one
// invocation writes one pair, so no two invocations share a word.
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
#ifdef KV_F16
@group(0) @binding(3) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<u32>;
const PER: u32 = 2u;
#else
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;
const PER: u32 = 1u;
#endif

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let per_head = P.head_dim / PER;
    let d = (g % per_head) * PER;
    let r1 = g / per_head;
    let h = r1 % P.kv_heads;
    let r2 = r1 / P.kv_heads;
    let t = r2 % P.t;
    let b = r2 / P.t;
    if (b >= P.b) {
        return;
    }
    let src = b * P.t + t;
    let dst = ((b * P.kv_heads + h) * P.s_max + P.past + t) * P.head_dim + d;
    let ks = src * P.k_stride + P.k_off + h * P.head_dim + d;
    let vs = src * P.v_stride + P.v_off + h * P.head_dim + d;
#ifdef KV_F16
    k_cache[dst / 2u] = pack2x16float(vec2<f32>(k_src[ks], k_src[ks + 1u]));
    v_cache[dst / 2u] = pack2x16float(vec2<f32>(v_src[vs], v_src[vs + 1u]));
#else
    k_cache[dst] = k_src[ks];
    v_cache[dst] = v_src[vs];
#endif
}
