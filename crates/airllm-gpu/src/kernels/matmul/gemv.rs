//! Matrix-vector kernel (`shaders/gemv.wgsl`) for 1-8 tokens: a workgroup of
//! 256 threads owns 4 rows (2 for more than 2 tokens); its threads stride over
//! each row in 8-value chunks (16-byte loads for aligned dense rows), every
//! chunk is used for all tokens, and the per-thread sums are reduced with
//! subgroupAdd (any subgroup size) or a shared-memory tree.

use crate::error::Result;
use crate::kernels::matmul::{Matmul, Split};
use crate::pipeline::{GEMV_TOKEN_BUCKETS, PipelineKey};
use crate::recorder::{Recorder, grid};

/// The token bucket (variant) serving `t` tokens: 1, 2, 4 or 8.
pub fn bucket(t: u32) -> u8 {
    GEMV_TOKEN_BUCKETS.into_iter().find(|&b| u32::from(b) >= t).unwrap_or(8)
}

pub(crate) fn dispatch(rec: &mut Recorder<'_>, m: &Matmul<'_>, s: &Split<'_>) -> Result<()> {
    let ctx = rec.ctx();
    let tokens = bucket(m.shape.t);
    let key = PipelineKey::Gemv {
        format: m.format,
        tokens,
        wide: s.wide,
        x_vec4: s.x_vec4,
        subgroup: ctx.caps().subgroup,
    };
    let rows = PipelineKey::gemv_rows(tokens);
    let groups = grid(ctx, u64::from(s.rows).div_ceil(u64::from(rows)))?;
    let bias = m.bias.unwrap_or(crate::pool::BufView::whole(&ctx.dummy));
    let params = s.params(m);
    rec.dispatch(&key, params.bytes(), &[(1, s.weight), (2, s.x), (3, m.y), (4, bias)], groups)
}
