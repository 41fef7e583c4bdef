// Sparse MoE, last step of an expert: add its output rows, each times the
// token's routing weight for this expert, back into the tokens' rows:
//   dst[idx[idx_off + j], dst_off + c] += w[idx_off + j] * src[j, src_off + c]
// A token picks an expert at most once, so the rows of one launch are
// distinct and no two threads write the same value; experts run one launch
// after another (in expert order, as the dense combine summed them).
#include common

struct Params {
    n: u32,
    cols: u32,
    src_stride: u32,
    src_off: u32,
    dst_stride: u32,
    dst_off: u32,
    idx_off: u32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;  // (T, dst_stride)
@group(0) @binding(2) var<storage, read> src: array<f32>;   // (n, src_stride)
@group(0) @binding(3) var<storage, read> idx: array<u32>;   // (pairs)
@group(0) @binding(4) var<storage, read> w: array<f32>;     // (pairs)

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let c = g % P.cols;
    let j = g / P.cols;
    if (j >= P.n) {
        return;
    }
    let p = P.idx_off + j;
    dst[idx[p] * P.dst_stride + P.dst_off + c] += w[p] * src[j * P.src_stride + P.src_off + c];
}
