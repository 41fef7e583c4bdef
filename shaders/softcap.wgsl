// Soft-cap in place: x[r, off + c] = cap * tanh(x[r, off + c] / cap) over
// rows x cols (Gemma 2's final logits; attention soft-capping is inside
// attention.wgsl).
#include common
#include math

struct Params {
    rows: u32,
    cols: u32,
    stride: u32,
    off: u32,
    cap: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let c = g % P.cols;
    let r = g / P.cols;
    if (r >= P.rows) {
        return;
    }
    let i = r * P.stride + P.off + c;
    x[i] = P.cap * tanh_safe(x[i] / P.cap);
}
