// Residual add: x[r, x_off + c] += y[r, y_off + c] over rows x cols.
#include common

struct Params {
    rows: u32,
    cols: u32,
    x_stride: u32,
    x_off: u32,
    y_stride: u32,
    y_off: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let c = g % P.cols;
    let r = g / P.cols;
    if (r >= P.rows) {
        return;
    }
    x[r * P.x_stride + P.x_off + c] += y[r * P.y_stride + P.y_off + c];
}
