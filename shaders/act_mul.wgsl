// Gated MLP activation: out[t, out_off + i] = act(gate[t, i]) * up[t, i],
// gate at column gate_off + i and up at column up_off + i of row t of `inp`
// (one [T, 2I] buffer from a fused gate_up matmul, or two matmuls writing its
// halves). act: SILU (x * sigmoid(x)) or GELU_TANH (PyTorch approximate='tanh').
#include common
#include math

struct Params {
    t: u32,
    i: u32,
    in_stride: u32,
    gate_off: u32,
    up_off: u32,
    out_stride: u32,
    out_off: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let g = thread_index(ids);
    let i = g % P.i;
    let t = g / P.i;
    if (t >= P.t) {
        return;
    }
    let gate = inp[t * P.in_stride + P.gate_off + i];
    let up = inp[t * P.in_stride + P.up_off + i];
#ifdef GELU_TANH
    let a = gelu_tanh(gate);
#else
    let a = silu(gate);
#endif
    out[t * P.out_stride + P.out_off + i] = a * up;
}
