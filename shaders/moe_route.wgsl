// Mixture-of-experts routing, Mixtral semantics: per token, softmax (f32) over
// all E router logits, keep the top k (ties: lower expert index first),
// optionally renormalise the kept weights to sum 1, and write a dense
// [T, E] weight matrix (zero for unselected experts). One thread per token.
// E <= 256.
//
// SIGMOID_GROUPED (DeepSeek-V3, transformers' DeepseekV3TopkRouter): scores
// s = sigmoid(logit); experts are chosen by c = s + bias (the router's
// e_score_correction_bias): the experts split into n_group consecutive
// groups, a group scores the sum of its two best c, the topk_group best
// groups are kept (ties: lower index), then the k best c inside them (ties:
// lower index). The weights are the chosen experts' s (without the bias),
// divided by their sum + 1e-20 when renorm, times `scaling`.
#include common

#ifdef SIGMOID_GROUPED
struct Params {
    t: u32,
    e: u32,
    k: u32,
    renorm: u32,
    logit_stride: u32,
    logit_off: u32,
    n_group: u32,
    topk_group: u32,
    scaling: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}
#else
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
#endif

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> weights: array<f32>;

#ifdef SIGMOID_GROUPED
@group(0) @binding(3) var<storage, read> bias: array<f32>;

fn score(lb: u32, e: u32) -> f32 {
    return 1.0 / (1.0 + exp(-logits[lb + e]));
}

// The score experts are chosen by.
fn choice(lb: u32, e: u32) -> f32 {
    return score(lb, e) + bias[e];
}

// Sum of the two best choice scores of group g (size gs >= 2).
fn group_score(lb: u32, g: u32, gs: u32) -> f32 {
    var b1 = -3.4e38;
    var b2 = -3.4e38;
    for (var j = 0u; j < gs; j++) {
        let v = choice(lb, g * gs + j);
        if (v > b1) {
            b2 = b1;
            b1 = v;
        } else if (v > b2) {
            b2 = v;
        }
    }
    return b1 + b2;
}

@compute @workgroup_size(WG)
fn main(ids: Ids) {
    let t = thread_index(ids);
    if (t >= P.t) {
        return;
    }
    let lb = t * P.logit_stride + P.logit_off;
    let gs = P.e / P.n_group;
    // kept groups and chosen experts as 256-bit masks
    var kept_groups: array<u32, 8>;
    for (var j = 0u; j < P.topk_group; j++) {
        var best = 0u;
        var best_v = -3.4e38;
        var found = false;
        for (var g = 0u; g < P.n_group; g++) {
            let taken = (kept_groups[g >> 5u] >> (g & 31u)) & 1u;
            let v = group_score(lb, g, gs);
            if (taken == 0u && (!found || v > best_v)) {
                best = g;
                best_v = v;
                found = true;
            }
        }
        kept_groups[best >> 5u] |= 1u << (best & 31u);
    }
    var chosen: array<u32, 8>;
    var kept = 0.0;
    for (var j = 0u; j < P.k; j++) {
        var best = 0u;
        var best_v = -3.4e38;
        var found = false;
        for (var e = 0u; e < P.e; e++) {
            let g = e / gs;
            let in_group = (kept_groups[g >> 5u] >> (g & 31u)) & 1u;
            let taken = (chosen[e >> 5u] >> (e & 31u)) & 1u;
            let v = choice(lb, e);
            if (in_group == 1u && taken == 0u && (!found || v > best_v)) {
                best = e;
                best_v = v;
                found = true;
            }
        }
        chosen[best >> 5u] |= 1u << (best & 31u);
        kept += score(lb, best);
    }
    var denom = 1.0;
    if (P.renorm != 0u) {
        denom = kept + 1e-20;
    }
    let ob = t * P.e;
    for (var e = 0u; e < P.e; e++) {
        let taken = (chosen[e >> 5u] >> (e & 31u)) & 1u;
        weights[ob + e] = select(0.0, score(lb, e) / denom * P.scaling, taken != 0u);
    }
}
#else
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
#endif
