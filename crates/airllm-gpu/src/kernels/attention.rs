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
//! `[rows, out_stride]` with head h at column `out_off + h * head_dim` (the
//! layout o_proj reads). head_dim <= 256. Softmax in f32 with a running max
//! (flash-attention style): nothing of size rows x keys is stored. A row
//! with no visible key gets zeros.
//!
//! # Split-K ("flash-decoding")
//!
//! The one-pass kernel runs one workgroup per (row, head). A decode step of
//! one sequence is `heads` workgroups (32 for an 8B Llama), far too few for a
//! GPU with 100+ compute units, each walking thousands of keys alone. When
//! the step is that small and its keys that many ([`choose_splits`]), each
//! (row, head)'s keys are cut into `S` chunks, one workgroup per chunk writes
//! its partial softmax state (running max, sum, unnormalised output) to a
//! scratch buffer, and `shaders/attention_combine.wgsl` merges the `S`
//! partials into `out`. The caller owns the scratch ([`Attention::scratch`],
//! sized by [`split_scratch_bytes`]) so that nothing is allocated per step.

use crate::error::Result;
use crate::kernels::paged::{StepLayout, StepViews};
use crate::kernels::{Params, ensure};
use crate::pipeline::PipelineKey;
use crate::pool::{BufView, KvLayout};
use crate::recorder::{Recorder, grid};

/// Largest head dimension the kernel supports.
pub const MAX_HEAD_DIM: u32 = 256;

/// Workgroups a launch should reach before splitting stops paying. We cannot
/// query the number of compute units through wgpu, so this is a fixed count:
/// about two per SM of an H100 (132) or per CU of a large AMD part (96-120),
/// enough for the scheduler to hide one workgroup's memory stalls behind
/// another's. A step with at least this many (row, head) pairs never splits.
pub const SPLIT_TARGET_WORKGROUPS: u32 = 256;

/// Fewest keys a chunk gets from [`choose_splits`]: below a few hundred keys
/// a chunk's fixed costs (loading q, the partial write, the combine pass)
/// outweigh the parallelism gained.
pub const MIN_KEYS_PER_SPLIT: u32 = 256;

/// Most chunks per (row, head); the combine kernel reads every chunk's
/// (max, sum) per thread, which stays cheap at this count.
pub const MAX_SPLITS: u32 = 64;

/// How many key chunks a launch cuts each (row, head) into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Splits {
    /// [`choose_splits`] decides from the shape (needs [`Attention::scratch`];
    /// without it the launch is one pass).
    #[default]
    Auto,
    /// Exactly this many chunks (1: the one-pass kernel), for tests and for
    /// comparing both paths; 1..=[`MAX_SPLITS`].
    Force(u32),
}

/// The chunk count [`Splits::Auto`] uses for `rows` rows of `heads` heads
/// whose longest visible key range is `longest_keys`: 1 (the one-pass
/// kernel) when `rows * heads` already reaches [`SPLIT_TARGET_WORKGROUPS`];
/// otherwise enough chunks to reach it, but no more than leave each chunk
/// [`MIN_KEYS_PER_SPLIT`] keys, and at most [`MAX_SPLITS`].
pub fn choose_splits(rows: u32, heads: u32, longest_keys: u32) -> u32 {
    let groups = rows.saturating_mul(heads).max(1);
    if groups >= SPLIT_TARGET_WORKGROUPS {
        return 1;
    }
    let to_fill = SPLIT_TARGET_WORKGROUPS.div_ceil(groups);
    let by_keys = longest_keys / MIN_KEYS_PER_SPLIT;
    let s = to_fill.min(by_keys).min(MAX_SPLITS);
    if s < 2 { 1 } else { s }
}

/// Bytes of the split-K scratch for launches of up to `max_rows` rows of
/// `heads` heads of `head_dim`, under `splits`: each partial holds
/// `head_dim + 2` f32. Under `Auto`, `rows * heads * choose_splits(..)` stays
/// below `2 * SPLIT_TARGET_WORKGROUPS` (the split is only taken while
/// `rows * heads` is under the target, and rounds the target up by less than
/// one `rows * heads`), whatever the context length. 0 when no launch splits.
pub fn split_scratch_bytes(max_rows: u32, heads: u32, head_dim: u32, splits: Splits) -> u64 {
    let groups = u64::from(max_rows) * u64::from(heads);
    let partials = match splits {
        Splits::Force(n) if n <= 1 => 0,
        Splits::Force(n) => groups * u64::from(n),
        Splits::Auto if groups == 0 => 0,
        // the largest rows * heads that still splits is target - 1
        Splits::Auto => (groups.min(u64::from(SPLIT_TARGET_WORKGROUPS) - 1) * u64::from(MAX_SPLITS))
            .min(2 * u64::from(SPLIT_TARGET_WORKGROUPS)),
    };
    partials * (u64::from(head_dim) + 2) * 4
}

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
    /// An upper bound on any row's visible keys, e.g. the largest `kv_len`
    /// of the step's sequences (the launcher cannot read the step buffers);
    /// only [`Splits::Auto`] reads it.
    pub max_keys: u32,
    /// Key chunks per (row, head).
    pub splits: Splits,
    /// Split-K partials, at least [`split_scratch_bytes`] for this launch's
    /// rows and splits (a buffer other than every input and `out`); `None`:
    /// never split under `Auto`, an error under `Force(n > 1)`.
    pub scratch: Option<BufView<'a>>,
}

const OP: &str = "attention";

/// The first-pass variant a launch uses on `caps` (the combine pass has one
/// variant): the workgroup reductions take subgroups whenever the device has
/// them, for any subgroup size.
pub(crate) fn key(caps: &crate::caps::Caps, f16: bool, split: bool) -> PipelineKey {
    PipelineKey::Attention { subgroup: caps.subgroup, f16, split }
}

impl Attention<'_> {
    /// The chunk count this launch uses (1: the one-pass kernel).
    pub fn chunk_count(&self) -> u32 {
        match self.splits {
            Splits::Force(n) => n,
            Splits::Auto if self.scratch.is_none() => 1,
            Splits::Auto => {
                // A window bounds a causal row's keys; a tree row adds its
                // ancestors (at most MAX_TREE) to the windowed prefix.
                let longest = if self.window > 0 {
                    self.max_keys.min(self.window.saturating_add(crate::kernels::paged::MAX_TREE))
                } else {
                    self.max_keys
                };
                choose_splits(self.rows, self.heads, longest)
            }
        }
    }
}

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
    ensure(u64::from(a.out_off) + hd <= u64::from(a.out_stride), OP, "out_stride", || {
        format!("out_off + heads x head_dim exceeds {}", a.out_stride)
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
    let splits = a.chunk_count();
    ensure((1..=MAX_SPLITS).contains(&splits), OP, "splits", || format!("{splits} must be in 1..={MAX_SPLITS}"))?;
    let ctx = rec.ctx();
    let split = splits > 1;
    let key = key(ctx.caps(), l.f16, split);
    let pairs = rows * u64::from(a.heads);
    let groups = grid(ctx, pairs * u64::from(splits))?;
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
        .u(splits);
    // The one-pass kernel writes `out`; the split one its partials.
    let target = if split {
        let scratch = a.scratch.ok_or_else(|| {
            crate::error::GpuError::arg(OP, "scratch", format!("{splits} splits need a scratch buffer"))
        })?;
        scratch.need_f32(OP, "scratch", pairs * u64::from(splits) * (u64::from(d) + 2))?;
        for (arg, v) in [("q", a.q), ("k_cache", a.k_cache), ("v_cache", a.v_cache), ("out", a.out)] {
            ensure(v.buffer != scratch.buffer, OP, arg, || "scratch must be a buffer of its own".into())?;
        }
        scratch
    } else {
        a.out
    };
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
            (8, target),
        ],
        groups,
    )?;
    if !split {
        return Ok(());
    }
    let params = Params::default().u(a.rows).u(a.heads).u(d).u(splits).u(a.out_stride).u(a.out_off);
    rec.dispatch(&PipelineKey::AttentionCombine, params.bytes()?, &[(1, target), (2, a.out)], grid(ctx, pairs)?)
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
            let o = &mut out[r * s.out_stride as usize + s.out_off as usize + h as usize * d..][..d];
            if scores.is_empty() {
                o.fill(0.0);
                continue;
            }
            let m = scores.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = scores.iter().map(|p| (p.1 - m).exp()).sum();
            let mut acc = vec![0f64; d];
            for (slot, x) in &scores {
                let p = (x - m).exp() / sum;
                let (blk, off) = step.locate(row.seq, *slot, l.block);
                let vv = &v[l.index(blk, kvh, off) as usize..][..d];
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
