use airllm_gpu::kernels::attention::{self, Attention, AttentionShape, Splits, split_scratch_bytes};
use airllm_gpu::kernels::kv_append::{self, KvAppend};
use airllm_gpu::kernels::paged::{NO_TREE, StepLayout, StepRow, StepSeq, StepViews};
use airllm_gpu::{BufView, GpuContext, KvCache, KvLayout};
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::common::*;

const TOL: f32 = 1e-5;

/// One sequence of a ragged step: `past` slots already in the cache, `new`
/// rows appended now; or, with `tree`, `new` tree nodes whose parents are
/// given (`u32::MAX`: attached to the prefix).
struct SeqCase {
    past: u32,
    new: u32,
    tree: Option<Vec<u32>>,
}

struct Case {
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    block: u32,
    num_blocks: u32,
    seqs: Vec<SeqCase>,
    window: u32,
    softcap: f32,
    /// f16 cache.
    f16: bool,
}

/// Builds the step: blocks handed out in a shuffled order (so tables are not
/// contiguous), rows of all sequences concatenated.
fn layout(rng: &mut StdRng, c: &Case) -> StepLayout {
    let mut free: Vec<u32> = (0..c.num_blocks).collect();
    free.shuffle(rng);
    let mut s = StepLayout::default();
    for (i, sq) in c.seqs.iter().enumerate() {
        let total = sq.past + sq.new;
        let nb = total.div_ceil(c.block);
        let bt_off = s.block_table.len() as u32;
        for _ in 0..nb {
            s.block_table.push(free.pop().expect("enough blocks"));
        }
        let tree_len = if sq.tree.is_some() { sq.new } else { 0 };
        s.seqs.push(StepSeq { bt_off, kv_len: total, tree_base: sq.past, tree_len });
        for j in 0..sq.new {
            let (pos, mask) = match &sq.tree {
                None => (sq.past + j, NO_TREE),
                Some(parents) => {
                    // Depth from the parent chain; the mask holds the node's ancestors and itself.
                    let words = sq.new.div_ceil(32) as usize;
                    let mut bits = vec![0u32; words];
                    let (mut n, mut depth) = (j, 0);
                    loop {
                        bits[(n / 32) as usize] |= 1 << (n % 32);
                        let p = parents[n as usize];
                        if p == u32::MAX {
                            break;
                        }
                        n = p;
                        depth += 1;
                    }
                    let off = s.tree_masks.len() as u32;
                    s.tree_masks.extend(bits);
                    (sq.past + depth, off)
                }
            };
            s.rows.push(StepRow { seq: i as u32, pos, slot: sq.past + j, mask });
        }
    }
    if s.tree_masks.is_empty() {
        s.tree_masks.push(0);
    }
    s
}

/// Fills the cache with random values, appends the step's rows from a fused
/// qkv buffer with kv_append, runs attention once per entry of `splits`
/// (each into its own output), and checks all against the references.
fn run(ctx: &GpuContext, rng: &mut StdRng, c: &Case, what: &str, splits: &[Splits]) {
    let step = layout(rng, c);
    run_step(ctx, rng, c, step, what, splits);
}

fn run_step(ctx: &GpuContext, rng: &mut StdRng, c: &Case, step: StepLayout, what: &str, splits: &[Splits]) {
    let kl =
        KvLayout { num_blocks: c.num_blocks, block: c.block, kv_heads: c.kv_heads, head_dim: c.head_dim, f16: c.f16 };
    let rows = step.rows.len() as u32;
    let d = c.head_dim;
    let (qw, kvw) = (c.heads * d, c.kv_heads * d);
    // fused [rows, q | k | v | pad] rows
    let stride = qw + 2 * kvw + 3;
    let qkv = randn(rng, (rows * stride) as usize, 1.0);
    let tensor = (kl.tensor_bytes() / kl.elem_bytes()) as usize;
    let mut k_cache = randn(rng, tensor, 1.0);
    let mut v_cache = randn(rng, tensor, 1.0);
    if c.f16 {
        for x in k_cache.iter_mut().chain(v_cache.iter_mut()) {
            *x = half::f16::from_f32(*x).to_f32();
        }
    }

    let cache = KvCache::new(ctx, 1, kl).expect("cache");
    let (kv, vv) = (cache.k(0).expect("k"), cache.v(0).expect("v"));
    ctx.queue().write_buffer(kv.buffer, kv.offset, &cache_bytes(&k_cache, c.f16));
    ctx.queue().write_buffer(vv.buffer, vv.offset, &cache_bytes(&v_cache, c.f16));
    let gqkv = ctx.upload_f32("qkv", &qkv);
    let g_rows = ctx.create_buffer_init("rows", bytemuck::cast_slice(&step.rows));
    let g_seqs = ctx.create_buffer_init("seqs", bytemuck::cast_slice(&step.seqs));
    let g_bt = ctx.upload_u32("block_table", &step.block_table);
    let g_masks = ctx.upload_u32("tree_masks", &step.tree_masks);
    let views = StepViews {
        rows: BufView::whole(&g_rows),
        seqs: BufView::whole(&g_seqs),
        block_table: BufView::whole(&g_bt),
        tree_masks: BufView::whole(&g_masks),
    };
    let out_stride = qw + 5;
    let out_len = (rows * out_stride) as usize;
    let gouts: Vec<_> = splits.iter().map(|_| ctx.upload_f32("out", &vec![3.0; out_len])).collect();
    let scratch_bytes = splits.iter().map(|&sp| split_scratch_bytes(rows, c.heads, d, sp)).max().unwrap_or(0);
    let scratch = ctx.create_storage_buffer("attention scratch", scratch_bytes.max(16));
    let max_keys = step.seqs.iter().map(|s| s.kv_len).max().unwrap_or(0);

    let mut rec = ctx.recorder("attention");
    kv_append::launch(
        &mut rec,
        &KvAppend {
            layout: kl,
            rows,
            step: views,
            k_src: BufView::whole(&gqkv),
            k_stride: stride,
            k_off: qw,
            v_src: BufView::whole(&gqkv),
            v_stride: stride,
            v_off: qw + kvw,
            k_cache: kv,
            v_cache: vv,
        },
    )
    .expect("kv_append");
    let scale = 1.0 / (d as f32).sqrt();
    let mut used = Vec::new();
    for (sp, gout) in splits.iter().zip(&gouts) {
        let a = Attention {
            layout: kl,
            rows,
            heads: c.heads,
            step: views,
            q: BufView::whole(&gqkv),
            q_stride: stride,
            q_off: 0,
            k_cache: kv,
            v_cache: vv,
            out: BufView::whole(gout),
            out_stride,
            out_off: 2,
            scale,
            window: c.window,
            softcap: c.softcap,
            max_keys,
            splits: *sp,
            scratch: Some(BufView::whole(&scratch)),
        };
        used.push(a.chunk_count());
        attention::launch(&mut rec, &a).expect("attention");
    }
    rec.submit().expect("submit");

    kv_append::reference(&kl, &step, &qkv, stride, qw, &mut k_cache);
    kv_append::reference(&kl, &step, &qkv, stride, qw + kvw, &mut v_cache);
    let got_k = read_cache(ctx, kv, tensor, c.f16);
    let got_v = read_cache(ctx, vv, tensor, c.f16);
    assert_eq!(got_k, k_cache, "{what}: k cache");
    assert_eq!(got_v, v_cache, "{what}: v cache");

    let shape = AttentionShape {
        layout: kl,
        heads: c.heads,
        q_stride: stride,
        q_off: 0,
        out_stride,
        out_off: 2,
        scale,
        window: c.window,
        softcap: c.softcap,
    };
    let mut want = vec![3.0; out_len];
    attention::reference(&shape, &step, &qkv, &k_cache, &v_cache, &mut want);
    for ((sp, gout), n) in splits.iter().zip(&gouts).zip(used) {
        let got = read(ctx, gout, out_len);
        // outputs are convex combinations of v (|v| <= 1): error relative to 1
        assert_close(&format!("{what}, {sp:?} ({n} chunks)"), &got, &want, &vec![1.0; out_len], TOL);
    }
}

/// What every ragged case runs: the one-pass kernel, the automatic choice,
/// and a forced split of 3 (rows with fewer keys than chunks included).
const RAGGED_SPLITS: [Splits; 3] = [Splits::Force(1), Splits::Auto, Splits::Force(3)];

/// Cache contents as uploaded: f32, or packed f16.
fn cache_bytes(v: &[f32], f16: bool) -> Vec<u8> {
    if f16 {
        v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()
    } else {
        bytemuck::cast_slice(v).to_vec()
    }
}

/// Cache contents read back as f32.
fn read_cache(ctx: &GpuContext, view: BufView<'_>, n: usize, f16: bool) -> Vec<f32> {
    let bytes = airllm_gpu::read_buffer_bytes(ctx, view.buffer, view.offset, if f16 { 2 * n } else { 4 * n } as u64)
        .expect("read cache");
    if f16 {
        bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
    } else {
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

fn seq(past: u32, new: u32) -> SeqCase {
    SeqCase { past, new, tree: None }
}

#[test]
fn attention_ragged_steps() {
    let contexts = contexts();
    let mut rng = rng("attention_ragged_steps");
    for (name, ctx) in &contexts {
        let cases = [
            // decode of three sequences at different positions, GQA 3:1
            Case {
                heads: 6,
                kv_heads: 2,
                head_dim: 40,
                block: 16,
                num_blocks: 12,
                seqs: vec![seq(13, 1), seq(40, 1), seq(0, 1)],
                window: 0,
                softcap: 0.0,
                f16: false,
            },
            // a prompt chunk on a cache beside a decode token, sliding window, soft-cap,
            // blocks of 5 slots (rows straddle blocks)
            Case {
                heads: 4,
                kv_heads: 4,
                head_dim: 136,
                block: 5,
                num_blocks: 12,
                seqs: vec![seq(9, 5), seq(30, 1)],
                window: 7,
                softcap: 30.0,
                f16: false,
            },
            // a long prefill from empty over several 64-key blocks, MQA, head_dim 256
            Case {
                heads: 3,
                kv_heads: 1,
                head_dim: 256,
                block: 16,
                num_blocks: 10,
                seqs: vec![seq(0, 139)],
                window: 0,
                softcap: 0.0,
                f16: false,
            },
            // mixed: two prefills and a decode, window shorter than the chunks
            Case {
                heads: 2,
                kv_heads: 1,
                head_dim: 64,
                block: 8,
                num_blocks: 40,
                seqs: vec![seq(0, 70), seq(17, 33), seq(90, 1)],
                window: 50,
                softcap: 0.0,
                f16: false,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            run(ctx, &mut rng, c, &format!("attention {name} case {i}"), &RAGGED_SPLITS);
            // The same with an f16 cache (its reference rounds k and v to f16 too).
            let c16 = Case {
                f16: true,
                seqs: c.seqs.iter().map(|s| SeqCase { past: s.past, new: s.new, tree: s.tree.clone() }).collect(),
                ..*c
            };
            run(ctx, &mut rng, &c16, &format!("attention {name} case {i} f16 cache"), &RAGGED_SPLITS);
        }
    }
}

/// Token trees: each node sees the prefix and its ancestors only, beside an
/// ordinary decode row in the same step.
#[test]
fn attention_tree_masks() {
    let contexts = contexts();
    let mut rng = rng("attention_tree_masks");
    for (name, ctx) in &contexts {
        // A random tree of 40 nodes (crossing a 32-bit mask word), node 0 the root.
        let n = 40u32;
        let mut parents = vec![u32::MAX];
        for j in 1..n {
            parents.push(rng.random_range(0..j));
        }
        let c = Case {
            heads: 4,
            kv_heads: 2,
            head_dim: 32,
            block: 16,
            num_blocks: 16,
            seqs: vec![SeqCase { past: 21, new: n, tree: Some(parents) }, seq(11, 1)],
            window: 0,
            softcap: 0.0,
            f16: false,
        };
        run(ctx, &mut rng, &c, &format!("tree attention {name}"), &[Splits::Force(1), Splits::Force(5)]);
    }
}

/// Split-K against the reference at odd sizes: forced chunk counts from 2 to
/// more chunks than keys (empty chunks), the automatic choice on a long
/// decode (where it does split), windows, soft-capping, f16 caches and trees.
#[test]
fn attention_split_k() {
    let contexts = contexts();
    let mut rng = rng("attention_split_k");
    for (name, ctx) in &contexts {
        // A long decode of one sequence beside a short one: Auto splits
        // (2 rows x 3 heads is far below the target, 1100 keys > 4 x 256).
        let long = Case {
            heads: 3,
            kv_heads: 1,
            head_dim: 72,
            block: 16,
            num_blocks: 80,
            seqs: vec![seq(1099, 1), seq(6, 1)],
            window: 0,
            softcap: 0.0,
            f16: false,
        };
        assert_eq!(attention::choose_splits(2, 3, 1100), 4, "the long case must split under Auto");
        let splits = [Splits::Auto, Splits::Force(2), Splits::Force(7), Splits::Force(64)];
        run(ctx, &mut rng, &long, &format!("split {name} long decode"), &splits);
        // f16 cache (pairs: head_dim even), soft-cap, a prompt chunk over blocks of 7
        let c = Case {
            heads: 4,
            kv_heads: 2,
            head_dim: 38,
            block: 7,
            num_blocks: 60,
            seqs: vec![seq(300, 3), seq(2, 1)],
            window: 0,
            softcap: 20.0,
            f16: true,
        };
        run(ctx, &mut rng, &c, &format!("split {name} f16 softcap"), &[Splits::Force(1), Splits::Force(6)]);
        // a sliding window shorter than the context, chunks of a few keys
        let c = Case {
            heads: 2,
            kv_heads: 2,
            head_dim: 256,
            block: 16,
            num_blocks: 30,
            seqs: vec![seq(400, 1), seq(30, 2)],
            window: 45,
            softcap: 0.0,
            f16: false,
        };
        run(ctx, &mut rng, &c, &format!("split {name} window"), &[Splits::Force(1), Splits::Force(9)]);
        // a token tree of 40 nodes over a 260-slot prefix, MQA, odd head_dim
        let n = 40u32;
        let mut parents = vec![u32::MAX];
        for j in 1..n {
            parents.push(rng.random_range(0..j));
        }
        let c = Case {
            heads: 5,
            kv_heads: 1,
            head_dim: 27,
            block: 16,
            num_blocks: 24,
            seqs: vec![SeqCase { past: 260, new: n, tree: Some(parents) }, seq(3, 1)],
            window: 0,
            softcap: 0.0,
            f16: false,
        };
        run(ctx, &mut rng, &c, &format!("split {name} tree"), &[Splits::Force(4), Splits::Force(64)]);
    }
}

/// Rows with no visible key get zeros on both paths: tree rows whose masks
/// are cleared, under a window of 1 that hides the prefix from every node
/// below the root's depth.
#[test]
fn attention_rows_without_keys() {
    let contexts = contexts();
    let mut rng = rng("attention_rows_without_keys");
    for (name, ctx) in &contexts {
        let n = 6u32;
        let c = Case {
            heads: 2,
            kv_heads: 1,
            head_dim: 16,
            block: 8,
            num_blocks: 8,
            // a chain: node j's parent is j - 1, so node j sits at depth j
            seqs: vec![SeqCase { past: 20, new: n, tree: Some((0..n).map(|j| j.wrapping_sub(1)).collect()) }],
            window: 1,
            softcap: 0.0,
            f16: false,
        };
        let mut step = layout(&mut rng, &c);
        let mut cleared = 0;
        for r in 1..step.rows.len() {
            if r % 2 == 1 {
                step.tree_masks[step.rows[r].mask as usize] = 0;
                cleared += 1;
            }
        }
        assert!((0..step.rows.len()).filter(|&r| step.visible_slots(r, c.window).is_empty()).count() == cleared);
        run_step(ctx, &mut rng, &c, step, &format!("empty rows {name}"), &[Splits::Force(1), Splits::Force(3)]);
    }
}
