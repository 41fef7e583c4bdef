// Rotary position embedding, in place on a [rows, heads, head_dim] view:
// head h of row r starts at r * stride + off + h * head_dim (so it can act on
// the q or k columns of a fused qkv buffer). Only the first rotary_dim values
// of each head rotate. Angle = f32(pos[r]) * inv_freq[i] in f32 (inv_freq is
// host-computed, already scaled, rotary_dim / 2 values), then cos/sin, both
// times mscale (1 unless the scaling scheme says otherwise).
// Pairs: HF rotate_half (i, i + rotary_dim/2), or INTERLEAVED (2i, 2i + 1)
// as GLM and ggml.
#include common
#include math

struct Params {
    rows: u32,
    heads: u32,
    head_dim: u32,
    half_rot: u32,   // rotary_dim / 2
    stride: u32,
    off: u32,
    mscale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<u32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let i = g % P.half_rot;
    let rh = g / P.half_rot;
    let h = rh % P.heads;
    let r = rh / P.heads;
    if (r >= P.rows) {
        return;
    }
    let base = r * P.stride + P.off + h * P.head_dim;
    let angle = f32(pos[r]) * inv_freq[i];
    let sc = sincos(angle) * P.mscale;
#ifdef INTERLEAVED
    let ia = base + 2u * i;
    let ib = ia + 1u;
#else
    let ia = base + i;
    let ib = ia + P.half_rot;
#endif
    let a = x[ia];
    let b = x[ib];
    x[ia] = a * sc.y - b * sc.x;
    x[ib] = b * sc.y + a * sc.x;
}
