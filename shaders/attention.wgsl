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
// out: row r, head h at column out_off + h * v_dim (the layout o_proj reads).
// The value of a slot is the first v_dim values of its v row (v_dim ==
// head_dim for ordinary attention). Multi-head latent attention binds the k
// cache as v as well: its rows are [latent | rope key] and the value is the
// latent, v_dim = kv_lora_rank. WIDE_HEAD: head_dim up to 1024 (else 256).
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
    v_dim: u32,      // values per head of the output (<= head_dim)
    _p0: u32,
    _p1: u32,
    _p2: u32,
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
@group(0) @binding(8) var<storage, read_write> out: array<f32>;

#ifdef WIDE_HEAD
const MAX_D: u32 = 1024u;
#else
const MAX_D: u32 = 256u;
#endif
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
    let gi = group_index(ids);
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

    var m = -3.0e38;
    var l = 0.0;
    var o: array<f32, DPT>;
    for (var blk = 0u; blk < total; blk += WG) {
        let k_i = blk + ids.lid;
        var score = -3.0e38;
        if (k_i < total) {
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
        if (k_i < total) {
            p = exp(score - m_new);
        }
        p_sh[ids.lid] = p;
        let alpha = exp(m - m_new);
        workgroupBarrier();
        let n = min(WG, total - blk);
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
                if (dd < P.v_dim) {
                    o[j] += pv * v_at(vb + dd);
                }
            }
        }
        l = l * alpha + psum;
        m = m_new;
        workgroupBarrier();
    }

    if (valid) {
        let ob = r * P.out_stride + P.out_off + h * P.v_dim;
        let inv = select(0.0, 1.0 / l, l > 0.0);
        for (var j = 0u; j < DPT; j++) {
            let dd = ids.lid + j * WG;
            if (dd < P.v_dim) {
                out[ob + dd] = o[j] * inv;
            }
        }
    }
}
