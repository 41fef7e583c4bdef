// Matrix-vector product for 1..8 tokens:
//   y[t, y_off + row0 + n] (+)= sum_k x[t, k] * W[n, k] (+ bias[row0 + n])
// W: [N, K] row-major (PyTorch Linear layout), any weight format (binding 1,
// see lib/weights.wgsl); x: [T, x_stride] f32 (binding 2, see
// lib/activations.wgsl); y: [T, y_stride] f32.
// Defines: WG (threads), ROWS (rows per workgroup), TOKENS (max T of this
// variant: 1, 2, 4 or 8), format defines, X_VEC4, SUBGROUP.
//
// Each workgroup owns ROWS consecutive rows. Its threads stride over the
// 8-value chunks of each row (adjacent threads read adjacent 16-byte pieces:
// coalesced), and every weight chunk is used for all T tokens, so the weights
// are read once per launch. Each thread keeps ROWS * TOKENS partial sums,
// reduced across the workgroup at the end.
#include common
#include weights
#include activations

struct Params {
    t: u32,          // tokens in this launch (<= TOKENS)
    n: u32,          // rows in this dispatch
    k: u32,          // columns (logical, unpadded)
    x_stride: u32,   // elements between token rows of x
    y_stride: u32,   // elements between token rows of y
    y_off: u32,      // first output column of this matmul in y
    row_bytes: u32,  // bytes per weight row (quantized: whole blocks)
    w_off: u32,      // byte offset of row 0 inside the weight binding
    row0: u32,       // first row of this dispatch (row splits)
    flags: u32,      // 1: accumulate into y, 2: add bias
    chunks: u32,     // 8-value chunks per (padded) row
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

const RT: u32 = ROWS * TOKENS;

#ifdef SUBGROUP
// one partial per (subgroup, accumulator); subgroups hold at least 4 lanes
var<workgroup> partial: array<f32, RT * (WG / 4u)>;
#else
var<workgroup> red_scratch: array<f32, WG>;
#endif

fn write_out(n0: u32, i: u32, total: f32) {
    let n = n0 + i / TOKENS;
    let t = i % TOKENS;
    if (n < P.n && t < P.t) {
        let yi = t * P.y_stride + P.y_off + P.row0 + n;
        var v = total;
        if ((P.flags & 2u) != 0u) {
            v += bias[P.row0 + n];
        }
        if ((P.flags & 1u) != 0u) {
            v += y[yi];
        }
        y[yi] = v;
    }
}

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let n0 = group_index(ids) * ROWS;
    var acc: array<f32, RT>;
    for (var r = 0u; r < ROWS; r++) {
        let n = n0 + r;
        if (n < P.n) {
            let rb = P.w_off + n * P.row_bytes;
            for (var c = ids.lid; c < P.chunks; c += WG) {
                let k0 = c * 8u;
                let wv = mask_chunk(w_chunk(rb, c), k0, P.k);
                for (var t = 0u; t < TOKENS; t++) {
                    if (t < P.t) {
                        let xv = load_x8(t * P.x_stride + k0, k0, P.k);
                        acc[r * TOKENS + t] += dot(wv.a, xv.a) + dot(wv.b, xv.b);
                    }
                }
            }
        }
    }

#ifdef SUBGROUP
    for (var i = 0u; i < RT; i++) {
        let s = subgroupAdd(acc[i]);
        if (ids.sg_lane == 0u) {
            partial[ids.sg_id * RT + i] = s;
        }
    }
    workgroupBarrier();
    if (ids.lid < RT) {
        var total = 0.0;
        for (var j = 0u; j < ids.n_sg; j++) {
            total += partial[j * RT + ids.lid];
        }
        write_out(n0, ids.lid, total);
    }
#else
    for (var i = 0u; i < RT; i++) {
        red_scratch[ids.lid] = acc[i];
        workgroupBarrier();
        for (var s = WG / 2u; s > 0u; s = s >> 1u) {
            if (ids.lid < s) {
                red_scratch[ids.lid] += red_scratch[ids.lid + s];
            }
            workgroupBarrier();
        }
        if (ids.lid == 0u) {
            write_out(n0, i, red_scratch[0]);
        }
        workgroupBarrier();
    }
#endif
}
