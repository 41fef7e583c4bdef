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
    // The subgroup variant keeps one partial per subgroup in WG / 4 slots
    // (shaders/gemv.wgsl), so subgroups narrower than 4 lanes would overrun it.
    if subgroup && caps.subgroup_min != 0 && caps.subgroup_min < GEMV_MIN_SUBGROUP {
        return None;
    }
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

/// Narrowest subgroup the subgroup variant handles (see [`team`]).
pub const GEMV_MIN_SUBGROUP: u32 = 4;

/// The variant a launch of `t` tokens over `n` rows of `k` columns uses on
/// `caps`: the subgroup reduction when the caps allow it and some team fits
/// the subgroups, the shared-memory one otherwise. Also returns the rows
/// one workgroup of that variant covers.
pub(crate) fn key(
    caps: &Caps,
    format: WeightFormat,
    n: u32,
    k: u32,
    t: u32,
    wide: bool,
    x_vec4: bool,
) -> (PipelineKey, u32) {
    let tokens = bucket(t);
    let team_for = |sg: bool| team(format, n, k, tokens, caps, sg);
    let (subgroup, team) = match team_for(caps.subgroup) {
        Some(t) if caps.subgroup => (true, t),
        _ => (false, team_for(false).unwrap_or(GEMV_TEAMS[0])),
    };
    (PipelineKey::Gemv { format, tokens, wide, x_vec4, subgroup, team }, PipelineKey::gemv_rows_per_group(tokens, team))
}

pub(crate) fn dispatch(rec: &mut Recorder<'_>, m: &Matmul<'_>, s: &Split<'_>) -> Result<()> {
    let ctx = rec.ctx();
    let (key, rows) = key(ctx.caps(), m.format, s.rows, m.shape.k, m.shape.t, s.wide, s.x_vec4);
    let groups = grid(ctx, u64::from(s.rows).div_ceil(u64::from(rows)))?;
    let bias = m.bias.unwrap_or(crate::pool::BufView::whole(&ctx.dummy));
    let params = s.params(m);
    rec.dispatch(&key, params.bytes()?, &[(1, s.weight), (2, s.x), (3, m.y), (4, bias)], groups)
}
