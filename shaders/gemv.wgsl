// Matrix-vector product for 1..8 tokens:
//   y[t, y_off + row0 + n] (+)= sum_k x[t, k] * W[n, k] (+ bias[row0 + n])
// W: [N, K] row-major (PyTorch Linear layout), any weight format (binding 1,
// see lib/weights.wgsl); x: [T, x_stride] f32 (binding 2, lib/xvec.wgsl);
// y: [T, y_stride] f32.
// Defines: WG (threads), TEAM (threads per row group, a power of two
// dividing WG), ROWS (rows per invocation), TOKENS (max T of this variant:
// 1, 2, 4 or 8), format defines, X_VEC4, SUBGROUP.
//
// The workgroup is WG / TEAM teams; a team owns ROWS consecutive rows, so a
// workgroup owns WG / TEAM * ROWS rows. The threads of a team stride over
// the units of its rows (8 values dense, one block quantized: adjacent
// threads read adjacent pieces of a row). Per unit a thread reads each
// token's activations once and uses them for all ROWS rows, and each row's
// unit once for all tokens: weights are read once per launch, activations
// once per ROWS rows. Each thread keeps ROWS * TOKENS partial sums, reduced
// across its team at the end. The launcher sizes TEAM to the row length
// (about two units per thread), so short rows (K = 576) do not leave most of
// a workgroup idle, and keeps enough workgroups for small N.
#include common
#include weights
#include xvec

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

const TEAMS: u32 = WG / TEAM;
const RT: u32 = ROWS * TOKENS;
const XV: u32 = UNIT / 4u;

#ifdef SUBGROUP
// one partial per (subgroup, accumulator); subgroups hold at least 4 lanes
var<workgroup> partial: array<f32, RT * (WG / 4u)>;
#else
// tree reduction of 4 accumulators at a time (RT is a multiple of 4)
var<workgroup> red: array<f32, 4u * WG>;
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

// Token t's UNIT activations from column k0 (zero at and past K; tokens
// past T repeat the last one, whose sums are never written) and their sum.
struct XU {
    v: array<vec4<f32>, XV>,
    s: f32,
}

fn x_unit(t: u32, k0: u32) -> XU {
    let xi = min(t, P.t - 1u) * P.x_stride + k0;
    var r: XU;
    for (var j = 0u; j < XV; j++) {
        let v = x4m(xi + 4u * j, k0 + 4u * j, P.k);
        r.v[j] = v;
        r.s += v.x + v.y + v.z + v.w;
    }
    return r;
}

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let team = ids.lid / TEAM;
    let tl = ids.lid % TEAM;
    let g0 = group_index(ids) * (TEAMS * ROWS);
    let n0 = g0 + team * ROWS;
    let units = P.chunks / (UNIT / 8u);
    // rows past the end read the last row (in bounds) and are not written
    var rb: array<u32, ROWS>;
    for (var r = 0u; r < ROWS; r++) {
        rb[r] = P.w_off + min(n0 + r, P.n - 1u) * P.row_bytes;
    }
    var acc: array<f32, RT>;
    for (var u = tl; u < units; u += TEAM) {
        let k0 = u * UNIT;
        if (TOKENS <= 2u) {
            // few tokens: every token's activations for the unit first (few
            // registers), then each row's unit, used for every token
            var xb: array<XU, TOKENS>;
            for (var t = 0u; t < TOKENS; t++) {
                xb[t] = x_unit(t, k0);
            }
            for (var r = 0u; r < ROWS; r++) {
                let wu = wu_load(rb[r], u);
                for (var t = 0u; t < TOKENS; t++) {
                    acc[r * TOKENS + t] += wu_dot(wu, xb[t].v, xb[t].s, k0, P.k);
                }
            }
        } else {
            // many tokens: the rows' units first, then one token at a time
            var wu: array<WU, ROWS>;
            for (var r = 0u; r < ROWS; r++) {
                wu[r] = wu_load(rb[r], u);
            }
            for (var t = 0u; t < TOKENS; t++) {
                let xb = x_unit(t, k0);
                for (var r = 0u; r < ROWS; r++) {
                    acc[r * TOKENS + t] += wu_dot(wu[r], xb.v, xb.s, k0, P.k);
                }
            }
        }
    }

#ifdef SUBGROUP
    // TEAM is a multiple of the subgroup size (launcher) and subgroups are
    // runs of consecutive invocations, so each subgroup lies in one team.
    for (var i = 0u; i < RT; i++) {
        let s = subgroupAdd(acc[i]);
        if (ids.sg_lane == 0u) {
            partial[ids.sg_id * RT + i] = s;
        }
    }
    workgroupBarrier();
    if (ids.lid < TEAMS * RT) {
        let tm = ids.lid / RT;
        let i = ids.lid % RT;
        let per_team = ids.n_sg / TEAMS;
        var total = 0.0;
        for (var j = 0u; j < per_team; j++) {
            total += partial[(tm * per_team + j) * RT + i];
        }
        write_out(g0 + tm * ROWS, i, total);
    }
#else
    for (var b = 0u; b < RT; b += 4u) {
        for (var j = 0u; j < 4u; j++) {
            red[j * WG + ids.lid] = acc[b + j];
        }
        workgroupBarrier();
        for (var s = TEAM / 2u; s > 0u; s = s >> 1u) {
            if (tl < s) {
                for (var j = 0u; j < 4u; j++) {
                    red[j * WG + ids.lid] += red[j * WG + ids.lid + s];
                }
            }
            workgroupBarrier();
        }
        if (ids.lid < TEAMS * 4u) {
            let tm = ids.lid / 4u;
            let j = ids.lid % 4u;
            write_out(g0 + tm * ROWS, b + j, red[j * WG + tm * TEAM]);
        }
        workgroupBarrier();
    }
#endif
}
