// Tiled matrix-matrix product for prefill (T > 8 tokens):
//   y[t, y_off + row0 + n] (+)= sum_k x[t, k] * W[n, k] (+ bias[row0 + n])
// Same bindings, parameters and weight formats as gemv.wgsl.
// Defines: WG = 16 * TY threads, BK (k per tile, a multiple of 8); each
// thread computes TM x TN = 8 x 8 outputs.
//
// The threads form 16 (rows) x TY (tokens); a workgroup computes a BM x BN =
// TY*TM x 16*TN tile (tokens x rows). Per k step the threads copy a BK-wide
// slice of x and of W (8-value chunks, dequantized once) into shared
// memory, k-major, as vec4s along tokens / rows: a loader item takes four
// rows (or tokens) at once and transposes them in registers, so every
// shared-memory store is a whole vec4. Then each thread reads, per k, TM/4
// + TN/4 vec4s and does TM x TN multiply-adds into vec4 accumulators.
// Thread (tx, ty) owns the row quads tx + 16 j and the token quads ty + TY i,
// so the 16 threads of one ty read 16 consecutive vec4s (no bank conflicts)
// and threads of one ty share theirs. Shared memory: BK * (BM + BN) f32.
#include common
#include weights
#include xvec

struct Params {
    t: u32,
    n: u32,
    k: u32,
    x_stride: u32,
    y_stride: u32,
    y_off: u32,
    row_bytes: u32,
    w_off: u32,
    row0: u32,
    flags: u32,
    chunks: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

const TM: u32 = 8u;
const TN: u32 = 8u;
const TY: u32 = WG / 16u;
const BM: u32 = TM * TY;
const BN: u32 = TN * 16u;
const BM4: u32 = BM / 4u;
const BN4: u32 = BN / 4u;
// loader items per k step: (row quad, 8-value chunk) and (token quad, k quad)
const W_ITEMS: u32 = BN4 * (BK / 8u);
const X_ITEMS: u32 = BM4 * (BK / 4u);

// k-major: element (kk, m) at xs[kk * BM4 + m / 4][m % 4]
var<workgroup> xs: array<vec4<f32>, BK * BM4>;
var<workgroup> ws: array<vec4<f32>, BK * BN4>;

// Chunk c of row n, the columns at and past K as zero; rows past the end
// read the last row (in bounds; their outputs are never written).
fn w_row_chunk(n: u32, c: u32) -> W8 {
    let rb = P.w_off + min(n, P.n - 1u) * P.row_bytes;
    return mask_chunk(w_chunk(rb, c), c * 8u, P.k);
}

// x[m, k .. k + 4), zero past K and for tokens past T.
fn x_quad(m: u32, k: u32) -> vec4<f32> {
    let v = x4m(min(m, P.t - 1u) * P.x_stride + k, k, P.k);
    return select(vec4<f32>(0.0), v, m < P.t);
}

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let tile_n = ids.wid.x * BN;
    let tile_m = ids.wid.y * BM;
    let tx = ids.lid % 16u;
    let ty = ids.lid / 16u;

    // accumulators as named matrices (arrays would live in memory on some
    // drivers): cij[c] holds the rows of quad tx + 16 j for token c of quad
    // ty + TY i
    var c00 = mat4x4<f32>();
    var c01 = mat4x4<f32>();
    var c10 = mat4x4<f32>();
    var c11 = mat4x4<f32>();
    let ktiles = (P.k + BK - 1u) / BK;
    for (var kt = 0u; kt < ktiles; kt++) {
        let kb = kt * BK;
        // W: four rows' chunk; rows past the end read the last row (in
        // bounds, never written), columns at and past K read as zero
        for (var it = ids.lid; it < W_ITEMS; it += WG) {
            let rq = it / (BK / 8u);
            let c = kb / 8u + it % (BK / 8u);
            let v0 = w_row_chunk(tile_n + rq * 4u, c);
            let v1 = w_row_chunk(tile_n + rq * 4u + 1u, c);
            let v2 = w_row_chunk(tile_n + rq * 4u + 2u, c);
            let v3 = w_row_chunk(tile_n + rq * 4u + 3u, c);
            let lo = transpose(mat4x4<f32>(v0.a, v1.a, v2.a, v3.a));
            let hi = transpose(mat4x4<f32>(v0.b, v1.b, v2.b, v3.b));
            let s0 = (it % (BK / 8u)) * 8u * BN4 + rq;
            ws[s0] = lo[0];
            ws[s0 + BN4] = lo[1];
            ws[s0 + 2u * BN4] = lo[2];
            ws[s0 + 3u * BN4] = lo[3];
            ws[s0 + 4u * BN4] = hi[0];
            ws[s0 + 5u * BN4] = hi[1];
            ws[s0 + 6u * BN4] = hi[2];
            ws[s0 + 7u * BN4] = hi[3];
        }
        // x: four tokens' quad; tokens past T read as zero
        for (var it = ids.lid; it < X_ITEMS; it += WG) {
            let m = tile_m + (it / (BK / 4u)) * 4u;
            let kq = kb + (it % (BK / 4u)) * 4u;
            let v = transpose(mat4x4<f32>(x_quad(m, kq), x_quad(m + 1u, kq), x_quad(m + 2u, kq), x_quad(m + 3u, kq)));
            let s0 = (it % (BK / 4u)) * 4u * BM4 + it / (BK / 4u);
            xs[s0] = v[0];
            xs[s0 + BM4] = v[1];
            xs[s0 + 2u * BM4] = v[2];
            xs[s0 + 3u * BM4] = v[3];
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = xs[kk * BM4 + ty];
            let a1 = xs[kk * BM4 + ty + TY];
            let b0 = ws[kk * BN4 + tx];
            let b1 = ws[kk * BN4 + tx + 16u];
            c00 += mat4x4<f32>(b0 * a0.x, b0 * a0.y, b0 * a0.z, b0 * a0.w);
            c01 += mat4x4<f32>(b1 * a0.x, b1 * a0.y, b1 * a0.z, b1 * a0.w);
            c10 += mat4x4<f32>(b0 * a1.x, b0 * a1.y, b0 * a1.z, b0 * a1.w);
            c11 += mat4x4<f32>(b1 * a1.x, b1 * a1.y, b1 * a1.z, b1 * a1.w);
        }
        workgroupBarrier();
    }

    store_quad(tile_m + ty * 4u, tile_n + tx * 4u, c00);
    store_quad(tile_m + ty * 4u, tile_n + (tx + 16u) * 4u, c01);
    store_quad(tile_m + (ty + TY) * 4u, tile_n + tx * 4u, c10);
    store_quad(tile_m + (ty + TY) * 4u, tile_n + (tx + 16u) * 4u, c11);
}

// Writes acc[c][r] to token m0 + c, row n0 + r (those in range).
fn store_quad(m0: u32, n0: u32, acc: mat4x4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        for (var r = 0u; r < 4u; r++) {
            let m = m0 + c;
            let n = n0 + r;
            if (m < P.t && n < P.n) {
                let yi = m * P.y_stride + P.y_off + P.row0 + n;
                var v = acc[c][r];
                if ((P.flags & 2u) != 0u) {
                    v += bias[P.row0 + n];
                }
                if ((P.flags & 1u) != 0u) {
                    v += y[yi];
                }
                y[yi] = v;
            }
        }
    }
}
