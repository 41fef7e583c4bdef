// Matrix-matrix product for prefill on cooperative matrices (tensor cores,
// Apple simdgroup matrices), where the adapter offers 8x8x8 f32 ones
// (Features::EXPERIMENTAL_COOPERATIVE_MATRIX; the only shape naga 30 has):
//   y[t, y_off + row0 + n] (+)= sum_k x[t, k] * W[n, k] (+ bias[row0 + n])
// Same bindings, parameters and weight formats as gemm.wgsl, which is the
// fallback everywhere else.
//
// A workgroup of WG = 64 invocations computes a BM x BN = 32 tokens x 32 rows
// tile of y as 4 x 4 blocks of 8 x 8. Per k step of BK = 32:
//   1. every invocation helps copy x[tile tokens, k .. k + 32) into `xs`
//      (row-major, [token][k]) and W[tile rows, k .. k + 32) into `ws`
//      (dequantized once, [row][k]); out-of-range tokens, rows and columns
//      read as zero (rows past the end read the last row: never written);
//   2. each subgroup owns the 8 x 8 blocks b = sg_id, sg_id + n_sg, ... and,
//      per block, loads its accumulator from `cs`, multiplies-adds the four
//      8 x 8 x 8 products of this k step and stores it back.
// At the end every invocation writes `cs` to y, applying bias and the
// accumulate flag, with the same bounds checks as gemm.wgsl.
//
// Cooperative matrices belong to a subgroup, so the blocks are dealt out per
// subgroup, and how many subgroups there are is read at run time: the same
// code serves 32-lane (NVIDIA, Apple) and 64-lane (AMD) subgroups. The
// launcher takes this variant only when every subgroup size the adapter may
// use is in 4..=64: then the subgroups tile the 64 invocations exactly and
// their count (1..16) divides the 16 blocks. Accumulators live in shared
// memory between k steps because a subgroup's block count is only known at
// run time (16 / n_sg); this costs one load and store per block and k step
// against four multiply-adds.
//
// Layouts for coopLoad: A (x, tokens x k) is row-major in `xs` (coopLoadT,
// stride BK); B (W transposed, k x rows) is W's rows stored k-contiguous in
// `ws`, i.e. B column-major (coopLoad, stride BK); C (tokens x rows) is
// row-major in `cs` (coopLoadT / coopStoreT, stride BN).
enable wgpu_cooperative_matrix;
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

const BM: u32 = 32u;
const BN: u32 = 32u;
const BK: u32 = 32u;
// 8 x 8 blocks of the output tile
const BLOCKS: u32 = (BM / 8u) * (BN / 8u);
// loader items per k step: (row, 8-value chunk) and (token, k quad)
const W_ITEMS: u32 = BN * (BK / 8u);
const X_ITEMS: u32 = BM * (BK / 4u);

var<workgroup> xs: array<f32, BM * BK>;
var<workgroup> ws: array<f32, BN * BK>;
var<workgroup> cs: array<f32, BM * BN>;
var<workgroup> n_sg_shared: u32;

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
    for (var e = ids.lid; e < BM * BN; e += WG) {
        cs[e] = 0.0;
    }
    if (ids.lid == 0u) {
        n_sg_shared = ids.n_sg;
    }
    // The subgroup count as a workgroup-uniform value: the block loop below
    // must be uniform control flow for the cooperative operations in it.
    let n_sg = workgroupUniformLoad(&n_sg_shared);
    let per_sg = BLOCKS / n_sg;

    let ktiles = (P.k + BK - 1u) / BK;
    for (var kt = 0u; kt < ktiles; kt++) {
        let kb = kt * BK;
        for (var it = ids.lid; it < W_ITEMS; it += WG) {
            let r = it / (BK / 8u);
            let cc = it % (BK / 8u);
            let v = w_row_chunk(tile_n + r, kb / 8u + cc);
            let s0 = r * BK + cc * 8u;
            for (var j = 0u; j < 4u; j++) {
                ws[s0 + j] = v.a[j];
                ws[s0 + 4u + j] = v.b[j];
            }
        }
        for (var it = ids.lid; it < X_ITEMS; it += WG) {
            let m = it / (BK / 4u);
            let q = it % (BK / 4u);
            let v = x_quad(tile_m + m, kb + q * 4u);
            let s0 = m * BK + q * 4u;
            for (var j = 0u; j < 4u; j++) {
                xs[s0 + j] = v[j];
            }
        }
        workgroupBarrier();
        for (var i = 0u; i < per_sg; i++) {
            let b = ids.sg_id + i * n_sg;
            let bm = (b / (BN / 8u)) * 8u;
            let bn = (b % (BN / 8u)) * 8u;
            var acc = coopLoadT<coop_mat8x8<f32, C>>(&cs[bm * BN + bn], BN);
            for (var kk = 0u; kk < BK; kk += 8u) {
                let a = coopLoadT<coop_mat8x8<f32, A>>(&xs[bm * BK + kk], BK);
                let w = coopLoad<coop_mat8x8<f32, B>>(&ws[bn * BK + kk], BK);
                acc = coopMultiplyAdd(a, w, acc);
            }
            coopStoreT(acc, &cs[bm * BN + bn], BN);
        }
        workgroupBarrier();
    }

    for (var e = ids.lid; e < BM * BN; e += WG) {
        let m = tile_m + e / BN;
        let n = tile_n + e % BN;
        if (m < P.t && n < P.n) {
            let yi = m * P.y_stride + P.y_off + P.row0 + n;
            var v = cs[e];
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
