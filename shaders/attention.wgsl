// Attention for a ragged step over a paged KV cache, with GQA/MQA, causal or
// tree masks, sliding windows and optional logit soft-capping.
//
// Rows are the step's token rows, of any number of sequences. Row r belongs to
// sequence rows[r].seq, has position rows[r].pos and its key/value were
// appended at cache slot rows[r].slot (kv_append runs first). A sequence's
// slot s lives in block block_table[seqs[q].bt_off + s / BLOCK], at offset
// s % BLOCK; each layer's cache holds, for K and for V,
//   [num_blocks, kv_heads, BLOCK, head_dim]   (f32, or f16 pairs with KV_F16)
//
// Visible keys of row r (slot positions equal token positions for every
// committed token; a tree's nodes sit at slots tree_base.. in node order):
//   mask == NONE (a prompt chunk or decode token): slots [lo, slot_r], with
//     lo = max(0, pos_r + 1 - window) when window > 0 (keys at positions
//     > pos_r - window), else 0;
//   mask != NONE (a node of a token tree): slots [lo, tree_base) plus the tree
//     slots tree_base + j whose bit j is set in tree_masks[mask + j / 32]
//     (the node's ancestors and itself). Windows apply to the prefix only:
//     a tree is far shorter than any window.
//
// One workgroup per (row, head): scores = q . k * scale (then
// softcap * tanh(score / softcap) when softcap > 0), out = softmax . v,
// flash-attention style over WG keys at a time (a running max m and sum l; the
// accumulator rescaled by exp(m_old - m_new)): nothing of size rows x keys is
// stored. f32 throughout. A row with no visible key gets zeros.
//
// q: row r of q (stride q_stride), head h at column q_off + h * head_dim.
// out: row r, head h at column out_off + h * head_dim (the layout o_proj reads).
//
// SPLIT (split-K, "flash-decoding"): with few rows, rows x heads workgroups
// leave most of a large GPU idle, so each (row, head)'s visible key list is cut
// into P.splits chunks of ceil(total / splits) keys and one workgroup runs per
// (row, head, chunk), in that order (chunk fastest). Instead of the output it
// writes its chunk's partial state to `partials`, at partial index
// p = (r * heads + h) * splits + chunk, stride head_dim + 2:
//   [m, l, o_0 .. o_{d-1}]   (running max, sum of exp(score - m), and the
//                             unnormalised sum of exp(score - m) * v)
// An empty chunk writes m = -3e38, l = 0, o = 0. attention_combine.wgsl merges
// the chunks of each (row, head) into out.
#include common
#include reduce
#include math

struct Params {
    rows: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    block: u32,      // slots per KV block
    window: u32,     // 0: none
    q_stride: u32,
    q_off: u32,
    out_stride: u32,
    out_off: u32,
    scale: f32,
    softcap: f32,    // 0: none
    splits: u32,     // chunks per (row, head) (SPLIT; 1 otherwise)
}

struct Row {
    seq: u32,
    pos: u32,
    slot: u32,
    mask: u32,       // offset of the row's tree mask words, or 0xffffffff
}

struct Seq {
    bt_off: u32,     // first entry of the sequence's block table
    kv_len: u32,     // slots filled, this step's included
    tree_base: u32,  // first slot of the tree (when the sequence has one)
    tree_len: u32,   // nodes of the tree (0: none)
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
#ifdef KV_F16
// f16 cache: two values per u32, widened in registers.
@group(0) @binding(2) var<storage, read> k_cache: array<u32>;
@group(0) @binding(3) var<storage, read> v_cache: array<u32>;

fn k_at(i: u32) -> f32 {
    let p = unpack2x16float(k_cache[i >> 1u]);
    return select(p.x, p.y, (i & 1u) == 1u);
}

fn v_at(i: u32) -> f32 {
    let p = unpack2x16float(v_cache[i >> 1u]);
    return select(p.x, p.y, (i & 1u) == 1u);
}
#else
@group(0) @binding(2) var<storage, read> k_cache: array<f32>;
@group(0) @binding(3) var<storage, read> v_cache: array<f32>;

fn k_at(i: u32) -> f32 {
    return k_cache[i];
}

fn v_at(i: u32) -> f32 {
    return v_cache[i];
}
#endif
@group(0) @binding(4) var<storage, read> rows: array<Row>;
@group(0) @binding(5) var<storage, read> seqs: array<Seq>;
@group(0) @binding(6) var<storage, read> block_table: array<u32>;
@group(0) @binding(7) var<storage, read> tree_masks: array<u32>;
#ifdef SPLIT
@group(0) @binding(8) var<storage, read_write> partials: array<f32>;
#else
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
#endif

const MAX_D: u32 = 256u;
const DPT: u32 = MAX_D / WG;
const NONE: u32 = 0xffffffffu;

var<workgroup> q_sh: array<f32, MAX_D>;
var<workgroup> p_sh: array<f32, WG>;

// Index (in values) of element 0 of slot `s` of sequence `sq`, kv head `kvh`.
fn slot_base(sq: Seq, kvh: u32, s: u32) -> u32 {
    let blk = block_table[sq.bt_off + s / P.block];
    return ((blk * P.kv_heads + kvh) * P.block + s % P.block) * P.head_dim;
}

// A tree row's visible tree slots, in order, and how many there are.
const MAX_TREE: u32 = 256u;
var<workgroup> tree_slots: array<u32, MAX_TREE>;
var<workgroup> tree_n: u32;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
#ifdef SPLIT
    let chunk = group_index(ids) % P.splits;
    let gi = group_index(ids) / P.splits;
#else
    let gi = group_index(ids);
#endif
    let h = gi % P.heads;
    let r = min(gi / P.heads, P.rows - 1u);
    let valid = gi / P.heads < P.rows;
    let row = rows[r];
    let sq = seqs[row.seq];
    let d = P.head_dim;
    let kvh = h / (P.heads / P.kv_heads);

    let qb = r * P.q_stride + P.q_off + h * d;
    for (var i = ids.lid; i < d; i += WG) {
        q_sh[i] = select(0.0, q[qb + i], valid);
    }

    // The visible key list: prefix slots [lo, pre_hi) then `n_tree` tree slots.
    var lo = 0u;
    if (P.window > 0u && row.pos + 1u > P.window) {
        lo = row.pos + 1u - P.window;
    }
    var pre_hi = row.slot + 1u;
    var n_tree = 0u;
    if (row.mask != NONE) {
        pre_hi = sq.tree_base;
        // Compact the set bits into a list (one thread; trees are small).
        if (ids.lid == 0u) {
            var n = 0u;
            for (var j = 0u; j < min(sq.tree_len, MAX_TREE); j++) {
                if ((tree_masks[row.mask + j / 32u] & (1u << (j % 32u))) != 0u) {
                    tree_slots[n] = sq.tree_base + j;
                    n++;
                }
            }
            tree_n = n;
        }
    }
    workgroupBarrier();
    if (row.mask != NONE) {
        n_tree = workgroupUniformLoad(&tree_n);
    }
    lo = min(lo, pre_hi);
    var total = (pre_hi - lo) + n_tree;
    if (!valid) {
        total = 0u;
    }
    // This workgroup walks entries [k_begin, k_end) of the visible key list.
    var k_begin = 0u;
    var k_end = total;
#ifdef SPLIT
    let per_chunk = (total + P.splits - 1u) / P.splits;
    k_begin = min(chunk * per_chunk, total);
    k_end = min(k_begin + per_chunk, total);
#endif

    var m = -3.0e38;
    var l = 0.0;
    var o: array<f32, DPT>;
    for (var blk = k_begin; blk < k_end; blk += WG) {
        let k_i = blk + ids.lid;
        var score = -3.0e38;
        if (k_i < k_end) {
            var s = lo + k_i;
            if (k_i >= pre_hi - lo) {
                s = tree_slots[k_i - (pre_hi - lo)];
            }
            let kb = slot_base(sq, kvh, s);
            var acc = 0.0;
            for (var i = 0u; i < d; i++) {
                acc += q_sh[i] * k_at(kb + i);
            }
            score = acc * P.scale;
            if (P.softcap > 0.0) {
                score = P.softcap * tanh_safe(score / P.softcap);
            }
        }
        let m_new = max(m, wg_max(score, ids));
        var p = 0.0;
        if (k_i < k_end) {
            p = exp(score - m_new);
        }
        p_sh[ids.lid] = p;
        let alpha = exp(m - m_new);
        workgroupBarrier();
        let n = min(WG, k_end - blk);
        var psum = 0.0;
        for (var j = 0u; j < DPT; j++) {
            o[j] *= alpha;
        }
        for (var si = 0u; si < n; si++) {
            let pv = p_sh[si];
            psum += pv;
            let kk = blk + si;
            var s = lo + kk;
            if (kk >= pre_hi - lo) {
                s = tree_slots[kk - (pre_hi - lo)];
            }
            let vb = slot_base(sq, kvh, s);
            for (var j = 0u; j < DPT; j++) {
                let dd = ids.lid + j * WG;
                if (dd < d) {
                    o[j] += pv * v_at(vb + dd);
                }
            }
        }
        l = l * alpha + psum;
        m = m_new;
        workgroupBarrier();
    }

#ifdef SPLIT
    if (valid) {
        let pb = (gi * P.splits + chunk) * (d + 2u);
        if (ids.lid == 0u) {
            partials[pb] = m;
            partials[pb + 1u] = l;
        }
        for (var j = 0u; j < DPT; j++) {
            let dd = ids.lid + j * WG;
            if (dd < d) {
                partials[pb + 2u + dd] = o[j];
            }
        }
    }
#else
    if (valid) {
        let ob = r * P.out_stride + P.out_off + h * d;
        let inv = select(0.0, 1.0 / l, l > 0.0);
        for (var j = 0u; j < DPT; j++) {
            let dd = ids.lid + j * WG;
            if (dd < d) {
                out[ob + dd] = o[j] * inv;
            }
        }
    }
#endif
}
