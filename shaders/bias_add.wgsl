// Bias add: y[r, off + c] += b[c] over rows x cols.
#include common

struct Params {
    rows: u32,
    cols: u32,
    stride: u32,
    off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let c = g % P.cols;
    let r = g / P.cols;
    if (r >= P.rows) {
        return;
    }
    y[r * P.stride + P.off + c] += b[c];
}
