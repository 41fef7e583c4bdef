// Sparse MoE, step 1 of an expert: gather the rows of the tokens routed to it
// into a contiguous block, so the ordinary GEMV/GEMM runs on exactly those rows:
//   dst[j, dst_off + c] = src[idx[idx_off + j], src_off + c]   (j < n, c < cols)
// `idx` holds the token rows of every (token, expert) pair of the layer,
// grouped by expert; one expert's group starts at idx_off.
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
@group(0) @binding(1) var<storage, read> src: array<f32>;   // (T, src_stride)
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;  // (n, dst_stride)
@group(0) @binding(3) var<storage, read> idx: array<u32>;   // (pairs)

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let c = g % P.cols;
    let j = g / P.cols;
    if (j >= P.n) {
        return;
    }
    let r = idx[P.idx_off + j];
    dst[j * P.dst_stride + P.dst_off + c] = src[r * P.src_stride + P.src_off + c];
}
