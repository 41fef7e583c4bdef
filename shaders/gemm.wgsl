// Tiled matrix-matrix product for prefill (T > 8 tokens):
//   y[t, y_off + row0 + n] (+)= sum_k x[t, k] * W[n, k] (+ bias[row0 + n])
// Same bindings, parameters and weight formats as gemv.wgsl.
// Defines: TM, TN (outputs per thread along tokens / rows), BK (k per tile).
//
// 256 threads as 16 x 16; a workgroup computes a BM x BN = 16*TM x 16*TN tile
// (tokens x rows). Per k step each thread loads one 8-value weight chunk
// (dequantized once, into shared memory as f32) and 8 activations; shared
// memory holds BK x (BM + BN) f32 = 16 KiB for both tile shapes.
#include common
#include weights
#include activations

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

const BM: u32 = TM * 16u;
const BN: u32 = TN * 16u;
// chunks per tile row; BM * CPR == BN * CPR == 256 (one chunk per thread)
const CPR: u32 = BK / 8u;

var<workgroup> xs: array<f32, BK * BM>;
var<workgroup> ws: array<f32, BK * BN>;

@compute @workgroup_size(256)
fn main(ids: Ids) {
    let tile_n = ids.wid.x * BN;
    let tile_m = ids.wid.y * BM;
    let tx = ids.lid % 16u;
    let ty = ids.lid / 16u;
    // loader coordinates: tile row lr, chunk cc within the BK slice
    let lr = ids.lid / CPR;
    let cc = ids.lid % CPR;
    let kk0 = cc * 8u;
    let wn = tile_n + lr;
    let xm = tile_m + lr;
    let rb = P.w_off + wn * P.row_bytes;

    var acc: array<f32, TM * TN>;
    let ktiles = (P.chunks + CPR - 1u) / CPR;
    for (var kt = 0u; kt < ktiles; kt++) {
        let c = kt * CPR + cc;
        let k0 = c * 8u;
        var wv = W8(vec4<f32>(0.0), vec4<f32>(0.0));
        if (wn < P.n && c < P.chunks) {
            wv = mask_chunk(w_chunk(rb, c), k0, P.k);
        }
        var xv = W8(vec4<f32>(0.0), vec4<f32>(0.0));
        if (xm < P.t) {
            xv = load_x8(xm * P.x_stride + k0, k0, P.k);
        }
        for (var j = 0u; j < 4u; j++) {
            ws[(kk0 + j) * BN + lr] = wv.a[j];
            ws[(kk0 + 4u + j) * BN + lr] = wv.b[j];
            xs[(kk0 + j) * BM + lr] = xv.a[j];
            xs[(kk0 + 4u + j) * BM + lr] = xv.b[j];
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, TM>;
            var b: array<f32, TN>;
            for (var i = 0u; i < TM; i++) {
                a[i] = xs[kk * BM + ty + 16u * i];
            }
            for (var j = 0u; j < TN; j++) {
                b[j] = ws[kk * BN + tx + 16u * j];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let m = tile_m + ty + 16u * i;
        for (var j = 0u; j < TN; j++) {
            let n = tile_n + tx + 16u * j;
            if (m < P.t && n < P.n) {
                let yi = m * P.y_stride + P.y_off + P.row0 + n;
                var v = acc[i * TN + j];
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
