// Mixture-of-experts combine for expert e:
//   out[t, out_off + c] += w[t * E + e] * y[t, y_off + c]
// (for an expert run densely over all tokens; tokens that did not pick expert
// e have weight 0. The engine runs experts sparsely: moe_gather/moe_scatter).
#include common

struct Params {
    t: u32,
    cols: u32,
    e_count: u32,
    expert: u32,
    out_stride: u32,
    out_off: u32,
    y_stride: u32,
    y_off: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let c = g % P.cols;
    let t = g / P.cols;
    if (t >= P.t) {
        return;
    }
    let wt = w[t * P.e_count + P.expert];
    if (wt != 0.0) {
        out[t * P.out_stride + P.out_off + c] += wt * y[t * P.y_stride + P.y_off + c];
    }
}
