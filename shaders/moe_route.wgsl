// Mixture-of-experts routing, Mixtral semantics: per token, softmax (f32) over
// all E router logits, keep the top k (ties: lower expert index first),
// optionally renormalise the kept weights to sum 1, and write a dense
// [T, E] weight matrix (zero for unselected experts). One thread per token.
// E <= 256.
#include common

struct Params {
    t: u32,
    e: u32,
    k: u32,
    renorm: u32,
    logit_stride: u32,
    logit_off: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> weights: array<f32>;

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let t = thread_index(ids);
    if (t >= P.t) {
        return;
    }
    let lb = t * P.logit_stride + P.logit_off;
    var mx = -3.0e38;
    for (var e = 0u; e < P.e; e++) {
        mx = max(mx, logits[lb + e]);
    }
    var sum = 0.0;
    for (var e = 0u; e < P.e; e++) {
        sum += exp(logits[lb + e] - mx);
    }
    // selected experts as a 256-bit mask
    var chosen: array<u32, 8>;
    var kept = 0.0;
    for (var j = 0u; j < P.k; j++) {
        var best = 0u;
        var best_v = -3.4e38;
        var found = false;
        for (var e = 0u; e < P.e; e++) {
            let taken = (chosen[e >> 5u] >> (e & 31u)) & 1u;
            let v = logits[lb + e];
            if (taken == 0u && (!found || v > best_v)) {
                best = e;
                best_v = v;
                found = true;
            }
        }
        chosen[best >> 5u] |= 1u << (best & 31u);
        kept += exp(best_v - mx) / sum;
    }
    let ob = t * P.e;
    for (var e = 0u; e < P.e; e++) {
        let taken = (chosen[e >> 5u] >> (e & 31u)) & 1u;
        var p = exp(logits[lb + e] - mx) / sum;
        if (P.renorm != 0u) {
            p = p / kept;
        }
        weights[ob + e] = select(0.0, p, taken != 0u);
    }
}
