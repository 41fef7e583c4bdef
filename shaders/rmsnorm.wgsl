// RMSNorm over rows of length D, as transformers computes it in f32:
//   y = x / sqrt(mean(x^2) + eps) * w        (GEMMA: * (1 + w))
// Row r of a [rows / heads, heads, D] view: element d of row r lives at
//   (r / heads) * stride + off + (r % heads) * D + d,
// so the same kernel normalizes hidden states (heads = 1) and per-head q/k
// (heads = H over a fused qkv buffer). Weight: binding 1, dense format,
// element w_off + d. IN_PLACE variants overwrite x (binding 2); otherwise y is
// binding 3 (a different buffer).
#include common
#include reduce
#include weights

struct Params {
    rows: u32,
    d: u32,
    heads: u32,
    x_stride: u32,
    x_off: u32,
    y_stride: u32,
    y_off: u32,
    w_off: u32,      // weight offset in elements within its binding
    eps: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
#ifdef IN_PLACE
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#endif

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let r = group_index(ids);
    let valid = r < P.rows;
    let h = r % P.heads;
    let xb = (r / P.heads) * P.x_stride + P.x_off + h * P.d;
    var ss = 0.0;
    if (valid) {
        for (var i = ids.lid; i < P.d; i += WG) {
            let v = x[xb + i];
            ss += v * v;
        }
    }
    let total = wg_sum(ss, ids);
    if (!valid) {
        return;
    }
    let inv = 1.0 / sqrt(total / f32(P.d) + P.eps);
#ifdef IN_PLACE
    let yb = xb;
#else
    let yb = (r / P.heads) * P.y_stride + P.y_off + h * P.d;
#endif
    for (var i = ids.lid; i < P.d; i += WG) {
#ifdef GEMMA
        let g = 1.0 + w_elem(P.w_off + i);
#else
        let g = w_elem(P.w_off + i);
#endif
        let v = (x[xb + i] * inv) * g;
#ifdef IN_PLACE
        x[yb + i] = v;
#else
        y[yb + i] = v;
#endif
    }
}
