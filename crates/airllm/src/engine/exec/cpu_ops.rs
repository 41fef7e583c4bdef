//! The CPU executor's non-matmul ops on plain f32 slices, with the strided
//! layouts and semantics of the GPU kernels (`airllm_gpu::kernels::*`), whose
//! f64 `reference` functions the tests compare against. Matmuls are
//! `airllm_quant::dot` (SIMD, quantized activations). Work is split over the
//! pool's threads by rows (attention by row x head); nothing is allocated
//! per op.

use std::ops::Range;

use airllm_format::RopeStyle;
use airllm_gpu::KvLayout;
use airllm_gpu::kernels::paged::{MAX_TREE, NO_TREE, StepLayout};
use airllm_quant::pool::ThreadPool;

/// A mutable slice shared by pool threads that write disjoint parts of it.
pub(crate) struct Shared<'a> {
    ptr: *mut f32,
    len: usize,
    _life: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: `Shared` hands out sub-slices only through `range`, whose callers
// guarantee that concurrently used ranges are disjoint.
unsafe impl Send for Shared<'_> {}
// SAFETY: as above.
unsafe impl Sync for Shared<'_> {}

impl<'a> Shared<'a> {
    pub(crate) fn new(s: &'a mut [f32]) -> Self {
        Shared { ptr: s.as_mut_ptr(), len: s.len(), _life: std::marker::PhantomData }
    }

    /// `[start, start + n)`.
    ///
    /// # Safety
    /// No two threads may hold overlapping ranges at the same time.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, start: usize, n: usize) -> &mut [f32] {
        assert!(start + n <= self.len, "range {start}+{n} past {}", self.len);
        // SAFETY: in bounds (checked); exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), n) }
    }
}

/// Rows below this many values are not worth waking threads for.
const MIN_PARALLEL: usize = 1 << 14;

fn for_rows(pool: &ThreadPool, rows: usize, work_per_row: usize, f: impl Fn(Range<usize>) + Sync) {
    if rows * work_per_row < MIN_PARALLEL || pool.threads() == 1 {
        f(0..rows);
    } else {
        pool.parallel_for(rows, f);
    }
}

/// RMSNorm of `rows` groups of `d` values: group `r` of x starts at
/// `(r / heads) * xs + xo + (r % heads) * d` (y likewise); in place when `y`
/// is None. `gemma`: scale by `1 + w`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm(
    pool: &ThreadPool,
    rows: usize,
    d: usize,
    heads: usize,
    x: &mut [f32],
    (xs, xo): (usize, usize),
    y: Option<(&mut [f32], usize, usize)>,
    w: &[f32],
    eps: f32,
    gemma: bool,
) {
    let start = |r: usize, s: usize, o: usize| (r / heads) * s + o + (r % heads) * d;
    let norm_row = |src: &[f32], dst: &mut [f32]| {
        let ms = src.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for i in 0..d {
            let g = if gemma { 1.0 + w[i] } else { w[i] };
            dst[i] = src[i] * inv * g;
        }
    };
    match y {
        None => {
            let xsh = Shared::new(x);
            for_rows(pool, rows, d, |range| {
                for r in range {
                    // SAFETY: rows are disjoint groups of x.
                    let row = unsafe { xsh.range(start(r, xs, xo), d) };
                    let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
                    let inv = 1.0 / (ms + eps).sqrt();
                    for (i, v) in row.iter_mut().enumerate() {
                        let g = if gemma { 1.0 + w[i] } else { w[i] };
                        *v = *v * inv * g;
                    }
                }
            });
        }
        Some((yb, ys, yo)) => {
            let ysh = Shared::new(yb);
            let x: &[f32] = x;
            for_rows(pool, rows, d, |range| {
                for r in range {
                    let src = &x[start(r, xs, xo)..start(r, xs, xo) + d];
                    // SAFETY: output rows are disjoint.
                    let dst = unsafe { ysh.range(start(r, ys, yo), d) };
                    norm_row(src, dst);
                }
            });
        }
    }
}

/// RoPE in place on `heads` heads of `head_dim` per row (row r at `r * stride
/// + off`), at `pos[r]`, rotating the first `rotary_dim` values of each head.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &mut [f32],
    rows: usize,
    heads: usize,
    head_dim: usize,
    stride: usize,
    off: usize,
    pos: &[u32],
    inv_freq: &[f32],
    style: RopeStyle,
    mscale: f32,
) {
    let half = inv_freq.len();
    for (r, &p) in pos.iter().enumerate().take(rows) {
        for i in 0..half {
            // The angle in f32 as the kernels and transformers compute it;
            // cos and sin times YaRN's attention factor (1 without YaRN).
            let (s, c) = (p as f32 * inv_freq[i]).sin_cos();
            let (s, c) = (s * mscale, c * mscale);
            for h in 0..heads {
                let base = r * stride + off + h * head_dim;
                let (ia, ib) = match style {
                    RopeStyle::HalfRotation => (base + i, base + i + half),
                    RopeStyle::Interleaved => (base + 2 * i, base + 2 * i + 1),
                };
                let (a, b) = (x[ia], x[ib]);
                x[ia] = a * c - b * s;
                x[ib] = b * c + a * s;
            }
        }
    }
}

/// Writes each row's k and v (kv heads at `k_off` / `v_off` of rows `src_stride`
/// wide) to its slot of the paged cache (`[num_blocks, kv_heads, block, head_dim]`);
/// k only when the layout is `k_only` (latent attention; `v_cache` is then unused).
#[allow(clippy::too_many_arguments)]
pub fn kv_append(
    layout: &KvLayout,
    step: &StepLayout,
    src: &[f32],
    src_stride: usize,
    k_off: usize,
    v_off: usize,
    k_cache: &mut [f32],
    v_cache: &mut [f32],
) {
    let d = layout.head_dim as usize;
    for (r, row) in step.rows.iter().enumerate() {
        let (blk, o) = step.locate(row.seq, row.slot, layout.block);
        for h in 0..layout.kv_heads {
            let dst = layout.index(blk, h, o) as usize;
            let ks = r * src_stride + k_off + h as usize * d;
            let vs = r * src_stride + v_off + h as usize * d;
            k_cache[dst..dst + d].copy_from_slice(&src[ks..ks + d]);
            if !layout.k_only {
                v_cache[dst..dst + d].copy_from_slice(&src[vs..vs + d]);
            }
        }
    }
}

/// Attention shape for [`attention`].
#[derive(Clone, Copy, Debug)]
pub struct AttnArgs {
    /// Query heads.
    pub heads: usize,
    /// Query row stride and head-0 column.
    pub q: (usize, usize),
    /// Output row stride and head-0 column.
    pub out: (usize, usize),
    /// Score scale.
    pub scale: f32,
    /// Sliding window (0: none).
    pub window: u32,
    /// Soft-cap (0: none).
    pub softcap: f32,
    /// Values per head read from each v row and written per output head
    /// (`head_dim` except for latent attention, where it is `kv_lora_rank`).
    pub v_dim: usize,
}

/// Largest head dimension [`attention`] handles (the GPU kernel's too).
pub const MAX_HEAD_DIM: usize = 1024;

/// Attention of each row over its visible slots (the rule of
/// [`StepLayout::visible_slots`]), one (row, head) per task, online softmax in
/// f32 (no per-key storage).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    layout: &KvLayout,
    step: &StepLayout,
    a: &AttnArgs,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    out: &mut [f32],
) {
    let d = layout.head_dim as usize;
    let group = a.heads / layout.kv_heads as usize;
    let rows = step.rows.len();
    let osh = Shared::new(out);
    let tasks = rows * a.heads;
    let dv = a.v_dim.min(d);
    let work = |range: Range<usize>| {
        let mut acc = [0f32; MAX_HEAD_DIM];
        let mut tree = [0u32; MAX_TREE as usize];
        for task in range {
            let (r, h) = (task / a.heads, task % a.heads);
            let row = step.rows[r];
            let sq = step.seqs[row.seq as usize];
            let kvh = (h / group) as u32;
            let qv = &q[r * a.q.0 + a.q.1 + h * d..][..d];
            let lo = if a.window > 0 && row.pos + 1 > a.window { row.pos + 1 - a.window } else { 0 };
            let pre_hi = if row.mask == NO_TREE { row.slot + 1 } else { sq.tree_base };
            let mut n_tree = 0;
            if row.mask != NO_TREE {
                for j in 0..sq.tree_len.min(MAX_TREE) {
                    if step.tree_masks[(row.mask + j / 32) as usize] & (1 << (j % 32)) != 0 {
                        tree[n_tree] = sq.tree_base + j;
                        n_tree += 1;
                    }
                }
            }
            let acc = &mut acc[..dv];
            acc.fill(0.0);
            let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
            let slots = (lo.min(pre_hi)..pre_hi).chain(tree[..n_tree].iter().copied());
            for s in slots {
                let (blk, off) = step.locate(row.seq, s, layout.block);
                let base = layout.index(blk, kvh, off) as usize;
                let kv = &k_cache[base..base + d];
                let mut x = dot(qv, kv) * a.scale;
                if a.softcap > 0.0 {
                    x = a.softcap * (x / a.softcap).tanh();
                }
                // Online softmax: rescale only when the running maximum moves
                // (rarely after the first keys), so most keys cost one exp.
                let p = if x > m {
                    let alpha = (m - x).exp();
                    l *= alpha;
                    for o in acc.iter_mut() {
                        *o *= alpha;
                    }
                    m = x;
                    1.0
                } else {
                    (x - m).exp()
                };
                l += p;
                let vv = &v_cache[base..base + dv];
                for (o, v) in acc.iter_mut().zip(vv) {
                    *o += p * v;
                }
            }
            // SAFETY: each (row, head) task owns its output head slice.
            let o = unsafe { osh.range(r * a.out.0 + a.out.1 + h * dv, dv) };
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            for (oi, ai) in o.iter_mut().zip(acc.iter()) {
                *oi = ai * inv;
            }
        }
    };
    // The longest sequence bounds the keys a task reads: worth threads or not.
    let keys = step.seqs.iter().map(|s| s.kv_len as usize).max().unwrap_or(1);
    for_rows(pool, tasks, keys * d, work);
}

/// `a · b` over 8 independent partial sums (a single running sum is bound by
/// the add latency and does not vectorize; this does, and `attention` spends
/// most of its time here).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    let mut s = [0f32; 8];
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in s.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    s.iter().sum::<f32>() + tail
}

/// `out[r, out_off + i] = act(gate[r, i]) * up[r, i]`.
#[allow(clippy::too_many_arguments)]
pub fn act_mul(
    silu: bool,
    rows: usize,
    i: usize,
    input: &[f32],
    (is, gate_off, up_off): (usize, usize, usize),
    out: &mut [f32],
    (os, oo): (usize, usize),
) {
    for r in 0..rows {
        for c in 0..i {
            let g = input[r * is + gate_off + c];
            let u = input[r * is + up_off + c];
            let a = if silu {
                g / (1.0 + (-g).exp())
            } else {
                // gelu(approximate='tanh') = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
                let u2 = 2.0 * 0.797_884_6 * (g + 0.044715 * g * g * g);
                g / (1.0 + (-u2).exp())
            };
            out[r * os + oo + c] = a * u;
        }
    }
}

/// Mixtral routing: softmax over all experts, keep the top k (ties: lower
/// index), optionally renormalise; dense `[rows, experts]` weights.
pub fn moe_route(rows: usize, e: usize, k: usize, renorm: bool, logits: &[f32], ls: (usize, usize), w: &mut [f32]) {
    let mut idx = [0usize; 256];
    for r in 0..rows {
        let l = &logits[r * ls.0 + ls.1..][..e];
        let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = l.iter().map(|v| (v - m).exp()).sum();
        let idx = &mut idx[..e];
        for (j, x) in idx.iter_mut().enumerate() {
            *x = j;
        }
        idx.sort_by(|a, b| l[*b].total_cmp(&l[*a]));
        let kept: f32 = idx[..k].iter().map(|&j| (l[j] - m).exp() / sum).sum();
        let row = &mut w[r * e..(r + 1) * e];
        row.fill(0.0);
        for &j in &idx[..k] {
            let p = (l[j] - m).exp() / sum;
            row[j] = if renorm { p / kept } else { p };
        }
    }
}

// --- DeepSeek-V3 routing -------------------------------------------------------

/// The parameters of [`moe_route_grouped`] beyond Mixtral's.
#[derive(Clone, Copy, Debug)]
pub struct GroupedRoute<'a> {
    /// Groups the experts split into.
    pub n_group: usize,
    /// Groups kept per token.
    pub topk_group: usize,
    /// Multiplier of the final weights.
    pub scaling: f32,
    /// `e_score_correction_bias`, one per expert.
    pub bias: &'a [f32],
}

/// DeepSeek-V3 routing (the rule of `shaders/moe_route.wgsl`'s `SIGMOID_GROUPED`
/// and transformers' `DeepseekV3TopkRouter`), in f32 like both: sigmoid scores,
/// choose by score + bias among the `topk_group` best groups (group score: the
/// sum of its two best), weights = the chosen scores (renormalised by their
/// sum + 1e-20 if asked) times `scaling`; ties go to the lower index. Dense
/// `[rows, experts]` weights.
#[allow(clippy::too_many_arguments)]
pub fn moe_route_grouped(
    rows: usize,
    e: usize,
    k: usize,
    renorm: bool,
    g: &GroupedRoute<'_>,
    logits: &[f32],
    ls: (usize, usize),
    w: &mut [f32],
) {
    let gs = e / g.n_group;
    let mut score = [0f32; 256];
    let mut choice = [0f32; 256];
    let mut group_kept = [false; 256];
    let mut chosen = [false; 256];
    for r in 0..rows {
        let l = &logits[r * ls.0 + ls.1..][..e];
        for j in 0..e {
            score[j] = 1.0 / (1.0 + (-l[j]).exp());
            choice[j] = score[j] + g.bias[j];
        }
        let group_score = |grp: usize| {
            let (mut b1, mut b2) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
            for &v in &choice[grp * gs..(grp + 1) * gs] {
                if v > b1 {
                    b2 = b1;
                    b1 = v;
                } else if v > b2 {
                    b2 = v;
                }
            }
            b1 + b2
        };
        group_kept[..g.n_group].fill(false);
        for _ in 0..g.topk_group {
            let best = (0..g.n_group).filter(|&x| !group_kept[x]).fold(None, |best: Option<(usize, f32)>, x| {
                let v = group_score(x);
                match best {
                    Some((_, bv)) if bv >= v => best,
                    _ => Some((x, v)),
                }
            });
            if let Some((x, _)) = best {
                group_kept[x] = true;
            }
        }
        chosen[..e].fill(false);
        let mut kept = 0f32;
        for _ in 0..k {
            let best =
                (0..e).filter(|&x| group_kept[x / gs] && !chosen[x]).fold(None, |best: Option<usize>, x| match best {
                    Some(b) if choice[b] >= choice[x] => best,
                    _ => Some(x),
                });
            if let Some(x) = best {
                chosen[x] = true;
                kept += score[x];
            }
        }
        let denom = if renorm { kept + 1e-20 } else { 1.0 };
        let row = &mut w[r * e..(r + 1) * e];
        for j in 0..e {
            row[j] = if chosen[j] { score[j] / denom * g.scaling } else { 0.0 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airllm_gpu::kernels::paged::{StepRow, StepSeq};
    use airllm_gpu::kernels::{attention as gatt, rmsnorm as gnorm, rope as grope};

    fn rnd(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(d <= tol, "{what}: max abs diff {d}");
    }

    #[test]
    fn rmsnorm_matches_the_reference_at_odd_sizes() {
        let pool = ThreadPool::new(2).unwrap();
        for (rows, d, heads, gemma) in [(3, 67, 1, false), (5 * 3, 24, 3, true), (600, 64, 1, false)] {
            let stride = d * heads + 5;
            let x = rnd((rows / heads + 1) * stride, 1);
            let w = rnd(d, 2);
            let v = gnorm::RowView { d: d as u32, heads: heads as u32, stride: stride as u32, off: 3 };
            let mut want = vec![0f32; x.len()];
            gnorm::reference(rows as u32, &v, &x, &v, &mut want, &w, 1e-5, gemma);
            let mut got = vec![0f32; x.len()];
            let mut xc = x.clone();
            rmsnorm(&pool, rows, d, heads, &mut xc, (stride, 3), Some((&mut got, stride, 3)), &w, 1e-5, gemma);
            close("rmsnorm", &got, &want, 1e-5);
            let mut xi = x.clone();
            rmsnorm(&pool, rows, d, heads, &mut xi, (stride, 3), None, &w, 1e-5, gemma);
            // In place: the normed groups equal the out-of-place result.
            for r in 0..rows {
                let s = (r / heads) * stride + 3 + (r % heads) * d;
                close("rmsnorm in place", &xi[s..s + d], &want[s..s + d], 1e-5);
            }
        }
    }

    #[test]
    fn rope_matches_the_reference() {
        for style in [RopeStyle::HalfRotation, RopeStyle::Interleaved] {
            let (rows, heads, hd, rot, stride, off) = (7, 3, 24, 16, 80, 5);
            let x = rnd(rows * stride, 3);
            let pos: Vec<u32> = (0..rows as u32).map(|i| i * 37 + 2).collect();
            let inv = grope::default_inv_freq(10000.0, rot as u32);
            let mut want = x.clone();
            let gs =
                if style == RopeStyle::HalfRotation { grope::RopeStyle::Half } else { grope::RopeStyle::Interleaved };
            // A YaRN-like attention factor scales cos and sin.
            grope::reference(&mut want, rows as u32, heads, hd, rot, stride as u32, off, &pos, &inv, gs, 1.25);
            let mut got = x.clone();
            rope(&mut got, rows, heads as usize, hd as usize, stride, off as usize, &pos, &inv, style, 1.25);
            close("rope", &got, &want, 2e-5);
        }
    }

    #[test]
    fn attention_matches_the_reference_with_windows_softcap_and_trees() {
        let pool = ThreadPool::new(2).unwrap();
        let layout = KvLayout { num_blocks: 12, block: 5, kv_heads: 2, head_dim: 24, f16: false, k_only: false };
        // Sequence 0: a chunk of 4 at 9..13; sequence 1: a 5-node tree on a 7-slot prefix.
        let mut s = StepLayout::default();
        s.block_table = vec![3, 1, 7, 0, 9, 2];
        s.seqs = vec![
            StepSeq { bt_off: 0, kv_len: 13, tree_base: 0, tree_len: 0 },
            StepSeq { bt_off: 3, kv_len: 12, tree_base: 7, tree_len: 5 },
        ];
        for p in 9..13 {
            s.rows.push(StepRow { seq: 0, pos: p, slot: p, mask: NO_TREE });
        }
        let parents = [u32::MAX, 0, 0, 1, 3];
        for j in 0..5u32 {
            let (mut n, mut depth, mut bits) = (j, 0, 0u32);
            loop {
                bits |= 1 << n;
                if parents[n as usize] == u32::MAX {
                    break;
                }
                n = parents[n as usize];
                depth += 1;
            }
            s.tree_masks.push(bits);
            s.rows.push(StepRow { seq: 1, pos: 7 + depth, slot: 7 + j, mask: j });
        }
        let n = (layout.tensor_bytes() / 4) as usize;
        let (k, v) = (rnd(n, 4), rnd(n, 5));
        let (heads, d) = (4usize, 24usize);
        let q = rnd(s.rows.len() * heads * d, 6);
        for (window, softcap) in [(0u32, 0f32), (4, 0.0), (0, 2.0)] {
            let shape = gatt::AttentionShape {
                layout,
                heads: heads as u32,
                q_stride: (heads * d) as u32,
                q_off: 0,
                out_stride: (heads * d) as u32,
                out_off: 0,
                scale: 0.2,
                window,
                softcap,
                v_dim: d as u32,
            };
            let mut want = vec![0f32; q.len()];
            gatt::reference(&shape, &s, &q, &k, &v, &mut want);
            let mut got = vec![0f32; q.len()];
            let a = AttnArgs { heads, q: (heads * d, 0), out: (heads * d, 0), scale: 0.2, window, softcap, v_dim: d };
            attention(&pool, &layout, &s, &a, &q, &k, &v, &mut got);
            close("attention", &got, &want, 1e-5);
        }
    }

    /// DeepSeek-V3 routing agrees with the GPU crate's f64 reference (odd token
    /// counts, strided logits, with and without renormalisation).
    #[test]
    fn grouped_routing_matches_the_reference() {
        use airllm_gpu::kernels::moe;
        for (t, e, k, ng, kg, renorm, scaling) in [
            (7usize, 8usize, 2usize, 4usize, 2usize, true, 2.5f32),
            (5, 64, 6, 8, 3, false, 1.0),
            (3, 256, 8, 8, 4, true, 2.5),
        ] {
            let stride = e + 3;
            let logits: Vec<f32> = rnd(t * stride, 11).iter().map(|v| v * 4.0).collect();
            let bias: Vec<f32> = rnd(e, 12).iter().map(|v| v * 0.5).collect();
            let g = GroupedRoute { n_group: ng, topk_group: kg, scaling, bias: &bias };
            let mut got = vec![0f32; t * e];
            moe_route_grouped(t, e, k, renorm, &g, &logits, (stride, 2), &mut got);
            let dense: Vec<f32> = (0..t).flat_map(|r| logits[r * stride + 2..][..e].to_vec()).collect();
            let want = moe::route_grouped_reference(
                t as u32, e as u32, k as u32, renorm, ng as u32, kg as u32, scaling, &bias, &dense,
            );
            close("grouped routing", &got, &want, 1e-6);
        }
    }

    /// Latent attention on the CPU: a k-only cache whose rows also hold the
    /// value (first `v_dim` values), as the GPU reference computes it.
    #[test]
    fn latent_attention_reads_values_from_the_key_rows() {
        let pool = ThreadPool::new(2).unwrap();
        let (heads, d, dv) = (5usize, 42usize, 29usize);
        let layout = KvLayout { num_blocks: 6, block: 5, kv_heads: 1, head_dim: d as u32, f16: false, k_only: true };
        let mut s = StepLayout::default();
        s.block_table = vec![4, 0, 2, 5];
        s.seqs = vec![StepSeq { bt_off: 0, kv_len: 17, tree_base: 0, tree_len: 0 }];
        for p in 11..17 {
            s.rows.push(StepRow { seq: 0, pos: p, slot: p, mask: NO_TREE });
        }
        let k = rnd((layout.tensor_bytes() / 4) as usize, 7);
        let q = rnd(s.rows.len() * heads * d, 8);
        let shape = gatt::AttentionShape {
            layout,
            heads: heads as u32,
            q_stride: (heads * d) as u32,
            q_off: 0,
            out_stride: (heads * dv) as u32,
            out_off: 0,
            scale: 0.3,
            window: 0,
            softcap: 0.0,
            v_dim: dv as u32,
        };
        let mut want = vec![0f32; s.rows.len() * heads * dv];
        gatt::reference(&shape, &s, &q, &k, &k, &mut want);
        let mut got = vec![0f32; want.len()];
        let a =
            AttnArgs { heads, q: (heads * d, 0), out: (heads * dv, 0), scale: 0.3, window: 0, softcap: 0.0, v_dim: dv };
        attention(&pool, &layout, &s, &a, &q, &k, &k, &mut got);
        close("latent attention", &got, &want, 1e-5);
    }
}
