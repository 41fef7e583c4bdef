//! Tiled matrix-matrix kernel (`shaders/gemm.wgsl`) for prefill (more than 8
//! tokens): 128 threads compute a 64 tokens x 128 rows tile of y or, when T
//! reaches 128, 256 threads a 128 x 128 tile, 8 x 8 outputs per thread from
//! vec4 reads of k-major shared-memory tiles; weights are dequantized once
//! per tile into shared memory.
//!
//! Where the adapter offers 8x8x8 f32 cooperative matrices ([`Caps::coop_matrix`])
//! and its subgroups fit `shaders/gemm_coop.wgsl` ([`coop_usable`]), the
//! same product runs on them instead, 32 x 32 tiles per 64 threads (same
//! bindings and parameters, every weight format dequantized into shared
//! memory as here).

use crate::caps::Caps;
use crate::error::Result;
use crate::kernels::matmul::{Matmul, Split};
use crate::kernels::u32_arg;
use crate::pipeline::{GemmTile, PipelineKey};
use crate::recorder::Recorder;

/// The tile for `t` tokens (both span 128 weight rows).
pub fn tile(t: u32) -> GemmTile {
    if t >= 128 { GemmTile::T128 } else { GemmTile::T64 }
}

/// Output tile edge (tokens and rows) of the cooperative-matrix GEMM.
pub const COOP_TILE: u32 = 32;

/// Whether `caps` run `shaders/gemm_coop.wgsl`: cooperative matrices and
/// subgroups on, and every subgroup size the adapter may use in 4..=64, so
/// its 64 invocations are whole subgroups, 1 to 16 of them, whose count
/// divides the tile's 16 blocks (an unreported size range does not qualify).
pub fn coop_usable(caps: &Caps) -> bool {
    caps.coop_matrix && caps.subgroup && caps.subgroup_min >= 4 && (4..=64).contains(&caps.subgroup_max)
}

/// The variant a GEMM over `t` tokens uses on `caps`, and the (tokens, rows)
/// one workgroup covers.
pub(crate) fn key(
    caps: &Caps,
    format: crate::kernels::WeightFormat,
    t: u32,
    wide: bool,
    x_vec4: bool,
) -> (PipelineKey, u32, u32) {
    if coop_usable(caps) {
        return (PipelineKey::GemmCoop { format, wide, x_vec4 }, COOP_TILE, COOP_TILE);
    }
    let tile = tile(t);
    (PipelineKey::Gemm { format, tile, wide, x_vec4 }, tile.size(), tile.rows())
}

pub(crate) fn dispatch(rec: &mut Recorder<'_>, m: &Matmul<'_>, s: &Split<'_>) -> Result<()> {
    let (key, tokens, rows) = key(rec.ctx().caps(), m.format, m.shape.t, s.wide, s.x_vec4);
    let gx = u32_arg("matmul", "n", u64::from(s.rows.div_ceil(rows)))?;
    let gy = m.shape.t.div_ceil(tokens);
    let max = rec.ctx().caps().max_workgroups_per_dim;
    crate::kernels::ensure(gx <= max && gy <= max, "matmul", "shape", || {
        format!("{gx} x {gy} workgroups exceed the limit {max} per dimension")
    })?;
    let ctx = rec.ctx();
    let bias = m.bias.unwrap_or(crate::pool::BufView::whole(&ctx.dummy));
    let params = s.params(m);
    rec.dispatch(&key, params.bytes()?, &[(1, s.weight), (2, s.x), (3, m.y), (4, bias)], (gx, gy))
}
