//! Tiled matrix-matrix kernel (`shaders/gemm.wgsl`) for prefill (more than 8
//! tokens): 128 threads compute a 64 tokens x 128 rows tile of y or, when T
//! reaches 128, 256 threads a 128 x 128 tile, 8 x 8 outputs per thread from
//! vec4 reads of k-major shared-memory tiles; weights are dequantized once
//! per tile into shared memory.

use crate::error::Result;
use crate::kernels::matmul::{Matmul, Split};
use crate::kernels::u32_arg;
use crate::pipeline::{GemmTile, PipelineKey};
use crate::recorder::Recorder;

/// The tile for `t` tokens (both span 128 weight rows).
pub fn tile(t: u32) -> GemmTile {
    if t >= 128 { GemmTile::T128 } else { GemmTile::T64 }
}

pub(crate) fn dispatch(rec: &mut Recorder<'_>, m: &Matmul<'_>, s: &Split<'_>) -> Result<()> {
    let tile = tile(m.shape.t);
    let key = PipelineKey::Gemm { format: m.format, tile, wide: s.wide, x_vec4: s.x_vec4 };
    let gx = u32_arg("matmul", "n", u64::from(s.rows.div_ceil(tile.rows())))?;
    let gy = m.shape.t.div_ceil(tile.size());
    let max = rec.ctx().caps().max_workgroups_per_dim;
    crate::kernels::ensure(gx <= max && gy <= max, "matmul", "shape", || {
        format!("{gx} x {gy} workgroups exceed the limit {max} per dimension")
    })?;
    let ctx = rec.ctx();
    let bias = m.bias.unwrap_or(crate::pool::BufView::whole(&ctx.dummy));
    let params = s.params(m);
    rec.dispatch(&key, params.bytes()?, &[(1, s.weight), (2, s.x), (3, m.y), (4, bias)], (gx, gy))
}
