// Causal multi-head attention with GQA/MQA, left padding and an optional
// sliding window, over a KV cache of layout [B, kv_heads, s_max, head_dim].
//
// One workgroup per (sequence b, new token t, head h); query slot
// qs = past + t. Keys are slots s in [lo, hi):
//   hi = min(past + T, qs + 1)                       (causal)
//   lo = max(first_valid[b], qs + 1 - window)        (padding, sliding window)
// scores = q . k * scale (then softcap * tanh(score / softcap) when softcap > 0)
// out = softmax(scores) . v, computed flash-attention style: the keys are
// taken WG at a time (one per thread), with a running max m and sum l, and the
// output accumulator rescaled by exp(m_old - m_new): no T x S matrix is stored.
// All in f32. A query with no visible key (a padding position) gets zeros.
//
// q: row b * T + t of q (stride q_stride), head h at column q_off + h * D.
// out: row b * T + t, head h at column out_off + h * D ([B*T, H*D] for o_proj).
#include common
#include reduce
#include math

struct Params {
    b: u32,
    t: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    s_max: u32,
    past: u32,
    window: u32,     // 0: none
    q_stride: u32,
    q_off: u32,
    out_stride: u32,
    out_off: u32,
    scale: f32,
    softcap: f32,    // 0: none
    _p0: u32,
    _p1: u32,
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
@group(0) @binding(4) var<storage, read> first_valid: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const MAX_D: u32 = 256u;
const DPT: u32 = MAX_D / WG;

var<workgroup> q_sh: array<f32, MAX_D>;
var<workgroup> p_sh: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let gi = group_index(ids);
    let h = gi % P.heads;
    let bt = gi / P.heads;
    let valid = bt < P.b * P.t;
    let b = min(bt / P.t, P.b - 1u);
    let t = bt % P.t;
    let d = P.head_dim;
    let kvh = h / (P.heads / P.kv_heads);
    let qs = P.past + t;

    let qb = bt * P.q_stride + P.q_off + h * d;
    for (var i = ids.lid; i < d; i += WG) {
        q_sh[i] = select(0.0, q[qb + i], valid);
    }
    workgroupBarrier();

    var hi = min(P.past + P.t, qs + 1u);
    var lo = first_valid[b];
    if (P.window > 0u && qs + 1u > P.window) {
        lo = max(lo, qs + 1u - P.window);
    }
    if (!valid) {
        hi = lo;
    }
    let kv_base = (b * P.kv_heads + kvh) * P.s_max;

    var m = -3.0e38;
    var l = 0.0;
    var o: array<f32, DPT>;
    for (var blk = lo; blk < hi; blk += WG) {
        let s = blk + ids.lid;
        var score = -3.0e38;
        if (s < hi) {
            let kb = (kv_base + s) * d;
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
        if (s < hi) {
            p = exp(score - m_new);
        }
        p_sh[ids.lid] = p;
        let alpha = exp(m - m_new);
        workgroupBarrier();
        let n = min(WG, hi - blk);
        var psum = 0.0;
        for (var j = 0u; j < DPT; j++) {
            o[j] *= alpha;
        }
        for (var si = 0u; si < n; si++) {
            let pv = p_sh[si];
            psum += pv;
            let vb = (kv_base + blk + si) * d;
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

    if (valid) {
        let ob = bt * P.out_stride + P.out_off + h * d;
        let inv = select(0.0, 1.0 / l, l > 0.0);
        for (var j = 0u; j < DPT; j++) {
            let dd = ids.lid + j * WG;
            if (dd < d) {
                out[ob + dd] = o[j] * inv;
            }
        }
    }
}
