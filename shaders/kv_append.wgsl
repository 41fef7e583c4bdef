// Appends a ragged step's k and v rows to a layer's paged KV cache.
// Cache, k and v each: [num_blocks, kv_heads, BLOCK, head_dim] f32, or with
// KV_F16 the same in f16, two values packed per u32 (head_dim even); then one
// invocation writes one pair, so no two invocations share a word.
// Row r (of sequence rows[r].seq) goes to that sequence's slot rows[r].slot:
// block block_table[seqs[seq].bt_off + slot / BLOCK], offset slot % BLOCK.
// Source: row r of k_src / v_src (e.g. the fused qkv buffer), kv head h at
// column k_off + h * head_dim (v_off for v).
// K_ONLY (multi-head latent attention): only k is stored; the value is read
// from the k rows by attention, so there is no v source and no v cache.
#include common

struct Params {
    rows: u32,
    kv_heads: u32,
    head_dim: u32,
    block: u32,
    k_stride: u32,
    k_off: u32,
    v_stride: u32,
    v_off: u32,
}

struct Row {
    seq: u32,
    pos: u32,
    slot: u32,
    mask: u32,
}

struct Seq {
    bt_off: u32,
    kv_len: u32,
    tree_base: u32,
    tree_len: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> k_src: array<f32>;
#ifndef K_ONLY
@group(0) @binding(2) var<storage, read> v_src: array<f32>;
#endif
@group(0) @binding(3) var<storage, read> rows: array<Row>;
@group(0) @binding(4) var<storage, read> seqs: array<Seq>;
@group(0) @binding(5) var<storage, read> block_table: array<u32>;
#ifdef KV_F16
@group(0) @binding(6) var<storage, read_write> k_cache: array<u32>;
#ifndef K_ONLY
@group(0) @binding(7) var<storage, read_write> v_cache: array<u32>;
#endif
const PER: u32 = 2u;
#else
@group(0) @binding(6) var<storage, read_write> k_cache: array<f32>;
#ifndef K_ONLY
@group(0) @binding(7) var<storage, read_write> v_cache: array<f32>;
#endif
const PER: u32 = 1u;
#endif

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let per_head = P.head_dim / PER;
    let d = (g % per_head) * PER;
    let r1 = g / per_head;
    let h = r1 % P.kv_heads;
    let r = r1 / P.kv_heads;
    if (r >= P.rows) {
        return;
    }
    let row = rows[r];
    let sq = seqs[row.seq];
    let blk = block_table[sq.bt_off + row.slot / P.block];
    let dst = ((blk * P.kv_heads + h) * P.block + row.slot % P.block) * P.head_dim + d;
    let ks = r * P.k_stride + P.k_off + h * P.head_dim + d;
#ifdef KV_F16
    k_cache[dst / 2u] = pack2x16float(vec2<f32>(k_src[ks], k_src[ks + 1u]));
#else
    k_cache[dst] = k_src[ks];
#endif
#ifndef K_ONLY
    let vs = r * P.v_stride + P.v_off + h * P.head_dim + d;
#ifdef KV_F16
    v_cache[dst / 2u] = pack2x16float(vec2<f32>(v_src[vs], v_src[vs + 1u]));
#else
    v_cache[dst] = v_src[vs];
#endif
#endif
}
