//! Matrix-vector kernel (`shaders/gemv.wgsl`) for 1-8 tokens: a workgroup of
//! 256 threads is split into teams of [`team`] threads; each team owns 4 rows
//! (2 for more than 2 tokens), and each thread reads one unit (8 values
//! dense, one block quantized) of all of them per step, so every activation
//! it loads serves 4 rows and every weight all tokens. Per-thread sums are
//! reduced per team with subgroupAdd (any subgroup size up to the team) or a
//! shared-memory tree.

use crate::caps::Caps;
use crate::error::Result;
use crate::kernels::WeightFormat;
use crate::kernels::matmul::{Matmul, Split};
use crate::pipeline::{GEMV_TEAMS, GEMV_TOKEN_BUCKETS, PipelineKey};
use crate::recorder::{Recorder, grid};

/// The token bucket (variant) serving `t` tokens: 1, 2, 4 or 8.
pub fn bucket(t: u32) -> u8 {
    GEMV_TOKEN_BUCKETS.into_iter().find(|&b| u32::from(b) >= t).unwrap_or(8)
}

/// Values per unit (one invocation's step along a row) of `format`: 8
/// dense, one block quantized, and 64 of a K-quant's 256-value super-block
/// (the sub-blocks that share one run of code bytes; a whole super-block
/// would hold 256 activations per token in registers). Must match `UNIT` in
/// `shaders/lib/weights*.wgsl`.
pub fn unit_values(format: WeightFormat) -> u64 {
    match format {
        WeightFormat::Quant(c) if c.is_k_quant() => 64,
        WeightFormat::Quant(c) => c.block_size() as u64,
        _ => 8,
    }
}

/// Threads per team for `n` rows of `k` columns: about two units per
/// thread (short rows would leave most of a 256-thread team idle), but
/// large enough that the launch has at least [`MIN_GROUPS`] workgroups
/// where possible (few rows, as in K and V projections, would otherwise
/// occupy a handful of a GPU's compute units), and at least the largest
/// subgroup when subgroup reductions are used (a subgroup must not span two
/// teams). `None` when no team size fits the subgroups.
pub fn team(format: WeightFormat, n: u32, k: u32, tokens: u8, caps: &Caps, subgroup: bool) -> Option<u16> {
    let units = format.padded_cols(u64::from(k)) / unit_values(format);
    // an unreported maximum counts as the largest in use (Adreno: 128)
    let sg = if caps.subgroup_max == 0 { 128 } else { caps.subgroup_max };
    let min = if subgroup { u64::from(sg) } else { 0 };
    let fits = |t: u16| u64::from(t) >= min;
    let groups = |t: u16| n.div_ceil(PipelineKey::gemv_rows_per_group(tokens, t));
    let want = units.div_ceil(2).next_power_of_two();
    let first = GEMV_TEAMS.into_iter().position(|t| u64::from(t) >= want.max(min)).or_else(|| {
        let last = GEMV_TEAMS.len() - 1;
        fits(GEMV_TEAMS[last]).then_some(last)
    })?;
    GEMV_TEAMS[first..].iter().copied().find(|&t| groups(t) >= MIN_GROUPS).or(GEMV_TEAMS.last().copied())
}

/// Workgroups a GEMV launch aims for at least (see [`team`]).
pub const MIN_GROUPS: u32 = 16;

pub(crate) fn dispatch(rec: &mut Recorder<'_>, m: &Matmul<'_>, s: &Split<'_>) -> Result<()> {
    let ctx = rec.ctx();
    let caps = ctx.caps();
    let tokens = bucket(m.shape.t);
    let team_for = |sg: bool| team(m.format, s.rows, m.shape.k, tokens, caps, sg);
    let (subgroup, team) = match team_for(caps.subgroup) {
        Some(t) if caps.subgroup => (true, t),
        _ => (false, team_for(false).unwrap_or(GEMV_TEAMS[0])),
    };
    let key = PipelineKey::Gemv { format: m.format, tokens, wide: s.wide, x_vec4: s.x_vec4, subgroup, team };
    let rows = PipelineKey::gemv_rows_per_group(tokens, team);
    let groups = grid(ctx, u64::from(s.rows).div_ceil(u64::from(rows)))?;
    let bias = m.bias.unwrap_or(crate::pool::BufView::whole(&ctx.dummy));
    let params = s.params(m);
    rec.dispatch(&key, params.bytes()?, &[(1, s.weight), (2, s.x), (3, m.y), (4, bias)], groups)
}
