// Moves slots within one layer's paged KV cache: after a token tree is
// verified, the accepted path's keys and values move down to the slots right
// after the committed prefix, and the rest of the tree is dropped.
// Cache, k and v each: [num_blocks, kv_heads, BLOCK, head_dim], copied as
// 32-bit words (f32 values, or f16 pairs), so one kernel serves both dtypes.
// Move i copies slot (moves[i].x, moves[i].y) (block, offset) to
// (moves[i].z, moves[i].w). The moves run in order inside each invocation:
// a later move may overwrite the source of an earlier one (path node k moves
// to k, node path[k] >= k), never the other way round, and every invocation
// owns one word of each slot, so no two invocations touch the same word.
#include common

struct Params {
    moves: u32,
    kv_heads: u32,
    head_words: u32,
    block: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> moves: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;
#ifdef K_ONLY
// Latent attention: only k is stored (the value is part of each k row).
#else
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;
#endif

fn word(blk: u32, h: u32, off: u32, w: u32) -> u32 {
    return ((blk * P.kv_heads + h) * P.block + off) * P.head_words + w;
}

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let w = g % P.head_words;
    let h1 = g / P.head_words;
    let h = h1 % P.kv_heads;
    let t = h1 / P.kv_heads;
#ifdef K_ONLY
    if (t >= 1u) {
        return;
    }
#else
    if (t >= 2u) {
        return;
    }
#endif
    for (var i = 0u; i < P.moves; i++) {
        let m = moves[i];
        let src = word(m.x, h, m.y, w);
        let dst = word(m.z, h, m.w, w);
#ifdef K_ONLY
        k_cache[dst] = k_cache[src];
#else
        if (t == 0u) {
            k_cache[dst] = k_cache[src];
        } else {
            v_cache[dst] = v_cache[src];
        }
#endif
    }
}
