//! KV-cache append for a ragged step (`shaders/kv_append.wgsl`).
//!
//! Row `r` of the sources (kv head `h` at column `k_off + h * head_dim`,
//! resp. `v_off`) is written to its sequence's slot `rows[r].slot` of the
//! paged cache (layout in [`paged`](super::paged)).

use crate::error::Result;
use crate::kernels::paged::{StepLayout, StepViews};
use crate::kernels::{Params, ensure, groups_for};
use crate::pipeline::PipelineKey;
use crate::pool::{BufView, KvLayout};
use crate::recorder::Recorder;

/// Arguments of a KV append.
#[derive(Clone, Copy, Debug)]
pub struct KvAppend<'a> {
    /// Cache shape.
    pub layout: KvLayout,
    /// Token rows of the step.
    pub rows: u32,
    /// The step's rows, sequences and block tables.
    pub step: StepViews<'a>,
    /// Source of k, `[rows, k_stride]`.
    pub k_src: BufView<'a>,
    /// f32 values between rows of `k_src`.
    pub k_stride: u32,
    /// Column of kv head 0 in `k_src`.
    pub k_off: u32,
    /// Source of v (may be the same buffer as `k_src`).
    pub v_src: BufView<'a>,
    /// f32 values between rows of `v_src`.
    pub v_stride: u32,
    /// Column of kv head 0 in `v_src`.
    pub v_off: u32,
    /// The layer's k cache.
    pub k_cache: BufView<'a>,
    /// The layer's v cache (may share a buffer with `k_cache`).
    pub v_cache: BufView<'a>,
}

const OP: &str = "kv_append";

/// Records the append.
pub fn launch(rec: &mut Recorder<'_>, a: &KvAppend<'_>) -> Result<()> {
    let l = a.layout;
    let row = u64::from(l.kv_heads) * u64::from(l.head_dim);
    ensure(u64::from(a.k_off) + row <= u64::from(a.k_stride), OP, "k_stride", || {
        format!("k_off + kv_heads x head_dim exceeds {}", a.k_stride)
    })?;
    ensure(u64::from(a.v_off) + row <= u64::from(a.v_stride), OP, "v_stride", || {
        format!("v_off + kv_heads x head_dim exceeds {}", a.v_stride)
    })?;
    ensure(l.block > 0, OP, "layout", || "blocks must hold at least one slot".into())?;
    let rows = u64::from(a.rows);
    if rows == 0 || row == 0 {
        return Ok(());
    }
    a.k_src.need_f32(OP, "k_src", rows * u64::from(a.k_stride))?;
    a.k_cache.need_f32(OP, "k_cache", l.tensor_bytes() / 4)?;
    if !l.k_only {
        a.v_src.need_f32(OP, "v_src", rows * u64::from(a.v_stride))?;
        a.v_cache.need_f32(OP, "v_cache", l.tensor_bytes() / 4)?;
    }
    a.step.rows.need_f32(OP, "rows", rows * 4)?;
    for (arg, c) in [("k_cache", a.k_cache), ("v_cache", a.v_cache)] {
        ensure(c.buffer != a.k_src.buffer && c.buffer != a.v_src.buffer, OP, arg, || {
            "cache and source must be different buffers".into()
        })?;
    }
    let key = PipelineKey::KvAppend { f16: l.f16, k_only: l.k_only };
    // An f16 cache is written in packed pairs: one invocation per two values.
    let per_row = if l.f16 { row / 2 } else { row };
    let groups = groups_for(rec.ctx(), rows * per_row, key.workgroup_size())?;
    let params = Params::default()
        .u(a.rows)
        .u(l.kv_heads)
        .u(l.head_dim)
        .u(l.block)
        .u(a.k_stride)
        .u(a.k_off)
        .u(a.v_stride)
        .u(a.v_off);
    let step = [(3, a.step.rows), (4, a.step.seqs), (5, a.step.block_table), (6, a.k_cache)];
    if l.k_only {
        // No v source or v cache: the K_ONLY variant does not declare them.
        let b = [(1, a.k_src), step[0], step[1], step[2], step[3]];
        return rec.dispatch(&key, params.bytes()?, &b, groups);
    }
    let b = [(1, a.k_src), (2, a.v_src), step[0], step[1], step[2], step[3], (7, a.v_cache)];
    rec.dispatch(&key, params.bytes()?, &b, groups)
}

/// CPU reference: appends `src` rows (`[rows, stride]`, heads at `off`) into
/// a cache tensor laid out as `layout`, at each row's slot.
pub fn reference(layout: &KvLayout, step: &StepLayout, src: &[f32], stride: u32, off: u32, cache: &mut [f32]) {
    let d = layout.head_dim as usize;
    for (r, row) in step.rows.iter().enumerate() {
        let (blk, o) = step.locate(row.seq, row.slot, layout.block);
        for h in 0..layout.kv_heads {
            let dst = layout.index(blk, h, o) as usize;
            let s = r * stride as usize + off as usize + h as usize * d;
            cache[dst..dst + d].copy_from_slice(&src[s..s + d]);
            if layout.f16 {
                // The GPU stores f16: the reference keeps the rounded values.
                for v in &mut cache[dst..dst + d] {
                    *v = half::f16::from_f32(*v).to_f32();
                }
            }
        }
    }
}
