//! Mixture of experts: [`route`] (`shaders/moe_route.wgsl`) turns router
//! logits `[T, E]` into dense per-token expert weights `[T, E]` (softmax over
//! all experts in f32, keep the top k, optionally renormalise: Mixtral
//! semantics; unselected experts get 0), and [`combine`]
//! (`shaders/moe_combine.wgsl`) adds `w[t, e] * y[t, :]` of one expert's
//! output into the running sum. The facade runs each expert's MLP densely
//! over all tokens and combines with these weights.

use crate::error::Result;
use crate::kernels::elementwise::Mat;
use crate::kernels::{Params, ensure, groups_for};
use crate::pipeline::PipelineKey;
use crate::pool::BufView;
use crate::recorder::Recorder;

/// Most experts [`route`] handles.
pub const MAX_EXPERTS: u32 = 256;

/// Arguments of a routing launch.
#[derive(Clone, Copy, Debug)]
pub struct Route<'a> {
    /// Tokens.
    pub t: u32,
    /// Experts E.
    pub experts: u32,
    /// Experts kept per token.
    pub top_k: u32,
    /// Renormalise the kept weights to sum to 1 (Mixtral: yes).
    pub renormalize: bool,
    /// `[T, E]` router logits (row stride and column offset in `logits`).
    pub logits: Mat<'a>,
    /// `[T, E]` contiguous output weights (a different buffer).
    pub weights: BufView<'a>,
}

/// Records the routing.
pub fn route(rec: &mut Recorder<'_>, a: &Route<'_>) -> Result<()> {
    ensure(a.experts > 0 && a.experts <= MAX_EXPERTS, "moe_route", "experts", || {
        format!("{} must be in 1..={MAX_EXPERTS}", a.experts)
    })?;
    ensure(a.top_k > 0 && a.top_k <= a.experts, "moe_route", "top_k", || {
        format!("{} must be in 1..={}", a.top_k, a.experts)
    })?;
    ensure(
        u64::from(a.logits.off) + u64::from(a.experts) <= u64::from(a.logits.stride),
        "moe_route",
        "logits",
        || "off + experts exceeds the stride".into(),
    )?;
    if a.t == 0 {
        return Ok(());
    }
    a.logits.view.need_f32(
        "moe_route",
        "logits",
        u64::from(a.t - 1) * u64::from(a.logits.stride) + u64::from(a.logits.off) + u64::from(a.experts),
    )?;
    a.weights.need_f32("moe_route", "weights", u64::from(a.t) * u64::from(a.experts))?;
    ensure(a.weights.buffer != a.logits.view.buffer, "moe_route", "weights", || {
        "logits and weights must be different buffers".into()
    })?;
    let key = PipelineKey::MoeRoute;
    let groups = groups_for(rec.ctx(), u64::from(a.t), key.workgroup_size())?;
    let p = Params::default()
        .u(a.t)
        .u(a.experts)
        .u(a.top_k)
        .u(u32::from(a.renormalize))
        .u(a.logits.stride)
        .u(a.logits.off)
        .u(0)
        .u(0);
    rec.dispatch(&key, p.bytes()?, &[(1, a.logits.view), (2, a.weights)], groups)
}

// --- DeepSeek-V3 routing (sigmoid scores, correction bias, group-limited top-k) ---

/// Arguments of a DeepSeek-V3 routing launch ([`route_grouped`]).
#[derive(Clone, Copy, Debug)]
pub struct RouteGrouped<'a> {
    /// The plain routing arguments (`renormalize`: divide by the chosen scores' sum).
    pub route: Route<'a>,
    /// `[E]` f32 `e_score_correction_bias`, added to the scores for choosing only.
    pub bias: BufView<'a>,
    /// Groups the experts split into (a divisor of E leaving at least 2 per group).
    pub n_group: u32,
    /// Groups kept per token.
    pub topk_group: u32,
    /// Multiplier of the final weights (`routed_scaling_factor`).
    pub scaling: f32,
}

/// Records DeepSeek-V3's routing (`moe_route.wgsl` with `SIGMOID_GROUPED`; the
/// rule is in that file and in [`route_grouped_reference`]).
pub fn route_grouped(rec: &mut Recorder<'_>, a: &RouteGrouped<'_>) -> Result<()> {
    let r = &a.route;
    ensure(r.experts > 0 && r.experts <= MAX_EXPERTS, "moe_route", "experts", || {
        format!("{} must be in 1..={MAX_EXPERTS}", r.experts)
    })?;
    ensure(
        a.n_group > 0 && r.experts.is_multiple_of(a.n_group) && r.experts / a.n_group >= 2,
        "moe_route",
        "n_group",
        || format!("{} must divide {} experts into groups of at least 2", a.n_group, r.experts),
    )?;
    ensure(a.topk_group > 0 && a.topk_group <= a.n_group, "moe_route", "topk_group", || {
        format!("{} must be in 1..={}", a.topk_group, a.n_group)
    })?;
    ensure(r.top_k > 0 && r.top_k <= a.topk_group * (r.experts / a.n_group), "moe_route", "top_k", || {
        format!("{} must be in 1..={} (the kept groups' experts)", r.top_k, a.topk_group * (r.experts / a.n_group))
    })?;
    ensure(
        u64::from(r.logits.off) + u64::from(r.experts) <= u64::from(r.logits.stride),
        "moe_route",
        "logits",
        || "off + experts exceeds the stride".into(),
    )?;
    if r.t == 0 {
        return Ok(());
    }
    r.logits.view.need_f32(
        "moe_route",
        "logits",
        u64::from(r.t - 1) * u64::from(r.logits.stride) + u64::from(r.logits.off) + u64::from(r.experts),
    )?;
    r.weights.need_f32("moe_route", "weights", u64::from(r.t) * u64::from(r.experts))?;
    a.bias.need_f32("moe_route", "bias", u64::from(r.experts))?;
    ensure(
        r.weights.buffer != r.logits.view.buffer && r.weights.buffer != a.bias.buffer,
        "moe_route",
        "weights",
        || "weights must be a different buffer from logits and bias".into(),
    )?;
    let key = PipelineKey::MoeRouteGrouped;
    let groups = groups_for(rec.ctx(), u64::from(r.t), key.workgroup_size())?;
    let p = Params::default()
        .u(r.t)
        .u(r.experts)
        .u(r.top_k)
        .u(u32::from(r.renormalize))
        .u(r.logits.stride)
        .u(r.logits.off)
        .u(a.n_group)
        .u(a.topk_group)
        .f(a.scaling)
        .u(0)
        .u(0)
        .u(0);
    rec.dispatch(&key, p.bytes()?, &[(1, r.logits.view), (2, r.weights), (3, a.bias)], groups)
}

/// CPU reference of [`route_grouped`] on contiguous `[t, e]` logits (f64
/// sigmoid and sums; ties go to the lower index, as in the kernel): `[t, e]` weights.
#[allow(clippy::too_many_arguments)]
pub fn route_grouped_reference(
    t: u32,
    e: u32,
    k: u32,
    renormalize: bool,
    n_group: u32,
    topk_group: u32,
    scaling: f32,
    bias: &[f32],
    logits: &[f32],
) -> Vec<f32> {
    let (t, e, k, ng, kg) = (t as usize, e as usize, k as usize, n_group as usize, topk_group as usize);
    let gs = e / ng;
    let mut out = vec![0f32; t * e];
    for r in 0..t {
        let s: Vec<f64> = logits[r * e..(r + 1) * e].iter().map(|&x| 1.0 / (1.0 + (-f64::from(x)).exp())).collect();
        let c: Vec<f64> = s.iter().zip(bias).map(|(s, b)| s + f64::from(*b)).collect();
        let group_score = |g: usize| {
            let mut v: Vec<f64> = c[g * gs..(g + 1) * gs].to_vec();
            v.sort_by(|a, b| b.total_cmp(a));
            v[0] + v[1]
        };
        let mut groups: Vec<usize> = (0..ng).collect();
        // stable: equal scores keep the lower index first
        groups.sort_by(|a, b| group_score(*b).total_cmp(&group_score(*a)));
        let kept = &groups[..kg];
        let mut experts: Vec<usize> = (0..e).filter(|x| kept.contains(&(x / gs))).collect();
        experts.sort_by(|a, b| c[*b].total_cmp(&c[*a]));
        let chosen = &experts[..k];
        let sum: f64 = chosen.iter().map(|&x| s[x]).sum::<f64>() + 1e-20;
        for &x in chosen {
            let w = if renormalize { s[x] / sum } else { s[x] };
            out[r * e + x] = (w * f64::from(scaling)) as f32;
        }
    }
    out
}

/// Records `out[t, :cols] += weights[t, expert] * y[t, :cols]`.
#[allow(clippy::too_many_arguments)]
pub fn combine(
    rec: &mut Recorder<'_>,
    t: u32,
    cols: u32,
    experts: u32,
    expert: u32,
    out: Mat<'_>,
    y: Mat<'_>,
    weights: BufView<'_>,
) -> Result<()> {
    ensure(expert < experts, "moe_combine", "expert", || format!("{expert} >= {experts} experts"))?;
    for (arg, m) in [("out", out), ("y", y)] {
        ensure(u64::from(m.off) + u64::from(cols) <= u64::from(m.stride), "moe_combine", arg, || {
            "off + cols exceeds the stride".into()
        })?;
        if t > 0 {
            m.view.need_f32(
                "moe_combine",
                arg,
                u64::from(t - 1) * u64::from(m.stride) + u64::from(m.off) + u64::from(cols),
            )?;
        }
    }
    if t == 0 || cols == 0 {
        return Ok(());
    }
    weights.need_f32("moe_combine", "weights", u64::from(t) * u64::from(experts))?;
    ensure(out.view.buffer != y.view.buffer && out.view.buffer != weights.buffer, "moe_combine", "out", || {
        "out must be a different buffer from y and weights".into()
    })?;
    let key = PipelineKey::MoeCombine;
    let groups = groups_for(rec.ctx(), u64::from(t) * u64::from(cols), key.workgroup_size())?;
    let p = Params::default().u(t).u(cols).u(experts).u(expert).u(out.stride).u(out.off).u(y.stride).u(y.off);
    rec.dispatch(&key, p.bytes()?, &[(1, out.view), (2, y.view), (3, weights)], groups)
}

/// CPU reference of [`route`] on contiguous `[t, e]` logits: returns `[t, e]` weights.
pub fn route_reference(t: u32, e: u32, k: u32, renormalize: bool, logits: &[f32]) -> Vec<f32> {
    let (t, e, k) = (t as usize, e as usize, k as usize);
    let mut out = vec![0f32; t * e];
    for r in 0..t {
        let l = &logits[r * e..(r + 1) * e];
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = l.iter().map(|v| f64::from(v - m).exp()).sum();
        let p: Vec<f64> = l.iter().map(|v| f64::from(v - m).exp() / sum).collect();
        let mut idx: Vec<usize> = (0..e).collect();
        // stable: equal logits keep the lower index first
        idx.sort_by(|a, b| l[*b].total_cmp(&l[*a]));
        let kept: f64 = idx[..k].iter().map(|i| p[*i]).sum();
        for &i in &idx[..k] {
            out[r * e + i] = if renormalize { (p[i] / kept) as f32 } else { p[i] as f32 };
        }
    }
    out
}

/// CPU reference of [`combine`] on contiguous `[t, cols]` out and y.
pub fn combine_reference(t: u32, cols: u32, experts: u32, expert: u32, out: &mut [f32], y: &[f32], weights: &[f32]) {
    let c = cols as usize;
    for r in 0..t as usize {
        let w = weights[r * experts as usize + expert as usize];
        for i in 0..c {
            out[r * c + i] += w * y[r * c + i];
        }
    }
}
