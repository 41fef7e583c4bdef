//! Attention for a ragged step over a paged KV cache (`shaders/attention.wgsl`).
//!
//! For every token row `r` of the step and query head `h`:
//! `out[r, h, :] = softmax(q·kᵀ · scale) · v` over the row's visible cache
//! slots (after kv_append wrote this step's keys), with
//! - GQA/MQA: query head `h` reads kv head `h / (H / kv_heads)`;
//! - causal rows (prompt chunks, decode tokens): slots `<= rows[r].slot`;
//! - tree rows: the prefix before the tree plus the tree nodes in the row's
//!   mask (its ancestors and itself);
//! - sliding window (`window > 0`): keys at positions `> pos - window`;
//! - optional logit soft-capping (`softcap > 0`: `softcap * tanh(x / softcap)`).
//!
//! [`StepLayout::visible_slots`] spells the rule out; the shader follows it.
//! q is row `r` of a `[rows, q_stride]` buffer (head h at column
//! `q_off + h * head_dim`, so q can sit in a fused qkv buffer); out is
//! `[rows, out_stride]` with head h at column `out_off + h * v_dim` (the
//! layout o_proj reads); the value of a slot is the first `v_dim` values of
//! its v row (`v_dim == head_dim` for ordinary attention; multi-head latent
//! attention passes the k cache as `v_cache` and `v_dim = kv_lora_rank`, since
//! its rows are `[latent | rope key]` and the value is the latent).
//! head_dim <= 256, or up to 1024 with the `wide_head` variant. Softmax in f32 with a running max
//! (flash-attention style): nothing of size rows x keys is stored. A row
//! with no visible key gets zeros.

use crate::error::Result;
use crate::kernels::paged::{StepLayout, StepViews};
use crate::kernels::{Params, ensure};
use crate::pipeline::PipelineKey;
use crate::pool::{BufView, KvLayout};
use crate::recorder::{Recorder, grid};

/// Largest head dimension the kernel supports (the `wide_head` variant above 256).
pub const MAX_HEAD_DIM: u32 = 1024;

/// Largest head dimension of the ordinary variant (fewer per-thread accumulators).
pub const NARROW_HEAD_DIM: u32 = 256;

/// Arguments of an attention launch.
#[derive(Clone, Copy, Debug)]
pub struct Attention<'a> {
    /// Cache shape.
    pub layout: KvLayout,
    /// Token rows of the step.
    pub rows: u32,
    /// Query heads (a multiple of `layout.kv_heads`).
    pub heads: u32,
    /// The step's rows, sequences, block tables and tree masks.
    pub step: StepViews<'a>,
    /// Queries.
    pub q: BufView<'a>,
    /// f32 values between query rows.
    pub q_stride: u32,
    /// Column of head 0 in a query row.
    pub q_off: u32,
    /// The layer's k cache.
    pub k_cache: BufView<'a>,
    /// The layer's v cache.
    pub v_cache: BufView<'a>,
    /// Output (a different buffer from q).
    pub out: BufView<'a>,
    /// f32 values between output rows.
    pub out_stride: u32,
    /// Column of head 0 in an output row.
    pub out_off: u32,
    /// Score scale, usually `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Sliding window in positions (0: none).
    pub window: u32,
    /// Logit soft-cap (0: none).
    pub softcap: f32,
    /// Values per head of the output, read from the start of each v row
    /// (`head_dim` except for latent attention).
    pub v_dim: u32,
}

const OP: &str = "attention";

/// Records the attention.
pub fn launch(rec: &mut Recorder<'_>, a: &Attention<'_>) -> Result<()> {
    let l = a.layout;
    let d = l.head_dim;
    ensure(d > 0 && d <= MAX_HEAD_DIM, OP, "head_dim", || format!("{d} must be in 1..={MAX_HEAD_DIM}"))?;
    ensure(l.kv_heads > 0 && a.heads.is_multiple_of(l.kv_heads), OP, "heads", || {
        format!("{} query heads must be a multiple of {} kv heads", a.heads, l.kv_heads)
    })?;
    ensure(l.block > 0, OP, "layout", || "blocks must hold at least one slot".into())?;
    let hd = u64::from(a.heads) * u64::from(d);
    ensure(u64::from(a.q_off) + hd <= u64::from(a.q_stride), OP, "q_stride", || {
        format!("q_off + heads x head_dim exceeds {}", a.q_stride)
    })?;
    ensure(a.v_dim > 0 && a.v_dim <= d, OP, "v_dim", || format!("{} must be in 1..={d} (head_dim)", a.v_dim))?;
    let hv = u64::from(a.heads) * u64::from(a.v_dim);
    ensure(u64::from(a.out_off) + hv <= u64::from(a.out_stride), OP, "out_stride", || {
        format!("out_off + heads x v_dim exceeds {}", a.out_stride)
    })?;
    let rows = u64::from(a.rows);
    if rows == 0 || a.heads == 0 {
        return Ok(());
    }
    a.q.need_f32(OP, "q", rows * u64::from(a.q_stride))?;
    a.out.need_f32(OP, "out", rows * u64::from(a.out_stride))?;
    a.k_cache.need_f32(OP, "k_cache", l.tensor_bytes() / 4)?;
    a.v_cache.need_f32(OP, "v_cache", l.tensor_bytes() / 4)?;
    a.step.rows.need_f32(OP, "rows", rows * 4)?;
    for (arg, v) in [("q", a.q), ("k_cache", a.k_cache), ("v_cache", a.v_cache), ("rows", a.step.rows)] {
        ensure(v.buffer != a.out.buffer, OP, arg, || "inputs and out must be different buffers".into())?;
    }
    let ctx = rec.ctx();
    let key = PipelineKey::Attention { subgroup: ctx.caps().subgroup, f16: l.f16, wide_head: d > NARROW_HEAD_DIM };
    let groups = grid(ctx, rows * u64::from(a.heads))?;
    let params = Params::default()
        .u(a.rows)
        .u(a.heads)
        .u(l.kv_heads)
        .u(d)
        .u(l.block)
        .u(a.window)
        .u(a.q_stride)
        .u(a.q_off)
        .u(a.out_stride)
        .u(a.out_off)
        .f(a.scale)
        .f(a.softcap)
        .u(a.v_dim)
        .u(0)
        .u(0)
        .u(0);
    rec.dispatch(
        &key,
        params.bytes()?,
        &[
            (1, a.q),
            (2, a.k_cache),
            (3, a.v_cache),
            (4, a.step.rows),
            (5, a.step.seqs),
            (6, a.step.block_table),
            (7, a.step.tree_masks),
            (8, a.out),
        ],
        groups,
    )
}

/// Host-side arguments of [`reference()`] (the same fields as [`Attention`]
/// without the buffers).
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Cache shape.
    pub layout: KvLayout,
    /// Query heads.
    pub heads: u32,
    /// Query row stride.
    pub q_stride: u32,
    /// Query column offset.
    pub q_off: u32,
    /// Output row stride.
    pub out_stride: u32,
    /// Output column offset.
    pub out_off: u32,
    /// Score scale.
    pub scale: f32,
    /// Sliding window (0: none).
    pub window: u32,
    /// Soft-cap (0: none).
    pub softcap: f32,
    /// Values per head of the output (see [`Attention::v_dim`]).
    pub v_dim: u32,
}

/// CPU reference: a plain masked softmax in f64 over each row's visible slots.
pub fn reference(s: &AttentionShape, step: &StepLayout, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    let l = s.layout;
    let d = l.head_dim as usize;
    let group = s.heads / l.kv_heads;
    for (r, row) in step.rows.iter().enumerate() {
        let slots = step.visible_slots(r, s.window);
        for h in 0..s.heads {
            let kvh = h / group;
            let qv = &q[r * s.q_stride as usize + s.q_off as usize + h as usize * d..][..d];
            let mut scores = Vec::with_capacity(slots.len());
            for &slot in &slots {
                let (blk, off) = step.locate(row.seq, slot, l.block);
                let kv = &k[l.index(blk, kvh, off) as usize..][..d];
                let mut x: f64 =
                    qv.iter().zip(kv).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() * f64::from(s.scale);
                if s.softcap > 0.0 {
                    x = f64::from(s.softcap) * (x / f64::from(s.softcap)).tanh();
                }
                scores.push((slot, x));
            }
            let dv = s.v_dim as usize;
            let o = &mut out[r * s.out_stride as usize + s.out_off as usize + h as usize * dv..][..dv];
            if scores.is_empty() {
                o.fill(0.0);
                continue;
            }
            let m = scores.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|p| (p.1 - m).exp()).sum();
            let mut acc = vec![0f64; dv];
            for (slot, x) in &scores {
                let p = (x - m).exp() / sum;
                let (blk, off) = step.locate(row.seq, *slot, l.block);
                let vv = &v[l.index(blk, kvh, off) as usize..][..dv];
                for (a, vi) in acc.iter_mut().zip(vv) {
                    *a += p * f64::from(*vi);
                }
            }
            for (oi, a) in o.iter_mut().zip(acc) {
                *oi = a as f32;
            }
        }
    }
}
