//! Sparse mixture-of-experts: the two kernels around one expert's MLP when
//! only the tokens routed to it are computed. The host groups a layer's
//! (token, expert) pairs by expert into an index list and a weight list
//! (uploaded once per layer); then, per chosen expert,
//!
//! - [`gather`] (`shaders/moe_gather.wgsl`) copies its tokens' rows into a
//!   contiguous block, on which the ordinary matmuls run, and
//! - [`scatter_add`] (`shaders/moe_scatter.wgsl`) adds the expert's output
//!   rows, each times its routing weight, back into the tokens' rows.
//!
//! Experts no token chose cost nothing: no launch reads their weights.

use crate::error::Result;
use crate::kernels::elementwise::Mat;
use crate::kernels::{Params, ensure, groups_for};
use crate::pipeline::PipelineKey;
use crate::pool::BufView;
use crate::recorder::Recorder;

/// One expert's group of pairs: entries `[start, start + n)` of the index
/// (and weight) list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// First entry of the group.
    pub start: u32,
    /// Rows in the group.
    pub n: u32,
}

fn check_mat(op: &'static str, arg: &'static str, m: &Mat<'_>, rows: u32, cols: u32) -> Result<()> {
    ensure(u64::from(m.off) + u64::from(cols) <= u64::from(m.stride), op, arg, || "off + cols exceeds the stride".into())?;
    if rows > 0 {
        m.view.need_f32(op, arg, u64::from(rows - 1) * u64::from(m.stride) + u64::from(m.off) + u64::from(cols))?;
    }
    Ok(())
}

/// Records `dst[j, :cols] = src[idx[g.start + j], :cols]` for `j < g.n`.
/// `src_rows` bounds the row indices (checked on the host by the caller that
/// built `idx`; the kernel reads whatever `idx` says).
pub fn gather(
    rec: &mut Recorder<'_>,
    g: Group,
    cols: u32,
    src: Mat<'_>,
    src_rows: u32,
    dst: Mat<'_>,
    idx: BufView<'_>,
) -> Result<()> {
    check_mat("moe_gather", "src", &src, src_rows, cols)?;
    check_mat("moe_gather", "dst", &dst, g.n, cols)?;
    if g.n == 0 || cols == 0 {
        return Ok(());
    }
    idx.need_f32("moe_gather", "idx", u64::from(g.start) + u64::from(g.n))?;
    ensure(dst.view.buffer != src.view.buffer && dst.view.buffer != idx.buffer, "moe_gather", "dst", || {
        "dst must be a different buffer from src and idx".into()
    })?;
    let key = PipelineKey::MoeGather;
    let groups = groups_for(rec.ctx(), u64::from(g.n) * u64::from(cols), key.workgroup_size())?;
    let p = Params::default().u(g.n).u(cols).u(src.stride).u(src.off).u(dst.stride).u(dst.off).u(g.start).u(0);
    rec.dispatch(&key, p.bytes()?, &[(1, src.view), (2, dst.view), (3, idx)], groups)
}

/// Records `dst[idx[g.start + j], :cols] += w[g.start + j] * src[j, :cols]`
/// for `j < g.n`. The rows `idx` names within one group must be distinct.
#[allow(clippy::too_many_arguments)]
pub fn scatter_add(
    rec: &mut Recorder<'_>,
    g: Group,
    cols: u32,
    src: Mat<'_>,
    dst: Mat<'_>,
    dst_rows: u32,
    idx: BufView<'_>,
    w: BufView<'_>,
) -> Result<()> {
    check_mat("moe_scatter", "src", &src, g.n, cols)?;
    check_mat("moe_scatter", "dst", &dst, dst_rows, cols)?;
    if g.n == 0 || cols == 0 {
        return Ok(());
    }
    idx.need_f32("moe_scatter", "idx", u64::from(g.start) + u64::from(g.n))?;
    w.need_f32("moe_scatter", "w", u64::from(g.start) + u64::from(g.n))?;
    ensure(
        dst.view.buffer != src.view.buffer && dst.view.buffer != idx.buffer && dst.view.buffer != w.buffer,
        "moe_scatter",
        "dst",
        || "dst must be a different buffer from src, idx and w".into(),
    )?;
    let key = PipelineKey::MoeScatter;
    let groups = groups_for(rec.ctx(), u64::from(g.n) * u64::from(cols), key.workgroup_size())?;
    let p = Params::default().u(g.n).u(cols).u(src.stride).u(src.off).u(dst.stride).u(dst.off).u(g.start).u(0);
    rec.dispatch(&key, p.bytes()?, &[(1, dst.view), (2, src.view), (3, idx), (4, w)], groups)
}

/// CPU reference of [`gather`] on contiguous `[*, cols]` rows.
pub fn gather_reference(g: Group, cols: u32, src: &[f32], dst: &mut [f32], idx: &[u32]) {
    let c = cols as usize;
    for j in 0..g.n as usize {
        let r = idx[g.start as usize + j] as usize;
        dst[j * c..(j + 1) * c].copy_from_slice(&src[r * c..(r + 1) * c]);
    }
}

/// CPU reference of [`scatter_add`] on contiguous `[*, cols]` rows.
pub fn scatter_add_reference(g: Group, cols: u32, src: &[f32], dst: &mut [f32], idx: &[u32], w: &[f32]) {
    let c = cols as usize;
    for j in 0..g.n as usize {
        let p = g.start as usize + j;
        let r = idx[p] as usize;
        for i in 0..c {
            dst[r * c + i] += w[p] * src[j * c + i];
        }
    }
}
