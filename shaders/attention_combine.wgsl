// Second pass of split-K attention (attention.wgsl with SPLIT): merges the
// P.splits partial states of each (row, head) into the output.
//
// partials: partial p = (r * heads + h) * splits + c at p * (head_dim + 2):
//   [m_c, l_c, o_c[0 .. head_dim)]
// where over chunk c's keys m_c = max score, l_c = sum exp(score - m_c) and
// o_c = sum exp(score - m_c) * v (unnormalised). With M = max_c m_c:
//   out = sum_c exp(m_c - M) o_c / sum_c exp(m_c - M) l_c
// An empty chunk has m_c = -3e38 and l_c = 0, so it weighs nothing; a row with
// no visible key at all (every l_c = 0) gets zeros, as in the one-pass kernel.
//
// One workgroup per (row, head); thread t handles dims t, t + WG, ... Every
// thread reads the splits' (m, l) itself: splits are few (at most 64) and this
// needs no barrier.
//
// out: row r, head h at column out_off + h * head_dim.
#include common

struct Params {
    rows: u32,
    heads: u32,
    head_dim: u32,
    splits: u32,
    out_stride: u32,
    out_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let gi = group_index(ids);
    if (gi >= P.rows * P.heads) {
        return;
    }
    let h = gi % P.heads;
    let r = gi / P.heads;
    let d = P.head_dim;
    let stride = d + 2u;
    let first = gi * P.splits * stride;

    var m_max = -3.0e38;
    for (var c = 0u; c < P.splits; c++) {
        m_max = max(m_max, partials[first + c * stride]);
    }
    var l_sum = 0.0;
    for (var c = 0u; c < P.splits; c++) {
        let pb = first + c * stride;
        l_sum += exp(partials[pb] - m_max) * partials[pb + 1u];
    }
    let inv = select(0.0, 1.0 / l_sum, l_sum > 0.0);
    let ob = r * P.out_stride + P.out_off + h * d;
    for (var dd = ids.lid; dd < d; dd += WG) {
        var acc = 0.0;
        for (var c = 0u; c < P.splits; c++) {
            let pb = first + c * stride;
            acc += exp(partials[pb] - m_max) * partials[pb + 2u + dd];
        }
        out[ob + dd] = acc * inv;
    }
}
