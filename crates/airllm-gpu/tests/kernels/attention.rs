use airllm_gpu::kernels::attention::{self, Attention, AttentionShape};
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
    /// Latent attention: k-only cache, values read from the k rows.
    k_only: bool,
    /// Values per head (`head_dim` unless `k_only`).
    v_dim: u32,
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
/// qkv buffer with kv_append, runs attention, and checks both against the
/// references.
fn run(ctx: &GpuContext, rng: &mut StdRng, c: &Case, what: &str) {
    let kl = KvLayout {
        num_blocks: c.num_blocks,
        block: c.block,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
        f16: c.f16,
        k_only: c.k_only,
    };
    let step = layout(rng, c);
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
    if !c.k_only {
        ctx.queue().write_buffer(vv.buffer, vv.offset, &cache_bytes(&v_cache, c.f16));
    }
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
    let gout = ctx.upload_f32("out", &vec![3.0; out_len]);

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
    attention::launch(
        &mut rec,
        &Attention {
            layout: kl,
            rows,
            heads: c.heads,
            step: views,
            q: BufView::whole(&gqkv),
            q_stride: stride,
            q_off: 0,
            k_cache: kv,
            v_cache: vv,
            out: BufView::whole(&gout),
            out_stride,
            out_off: 2,
            scale,
            window: c.window,
            softcap: c.softcap,
            v_dim: c.v_dim,
        },
    )
    .expect("attention");
    rec.submit().expect("submit");

    kv_append::reference(&kl, &step, &qkv, stride, qw, &mut k_cache);
    let got_k = read_cache(ctx, kv, tensor, c.f16);
    assert_eq!(got_k, k_cache, "{what}: k cache");
    if c.k_only {
        // The value is the first v_dim values of each k row.
        v_cache = k_cache.clone();
    } else {
        kv_append::reference(&kl, &step, &qkv, stride, qw + kvw, &mut v_cache);
        let got_v = read_cache(ctx, vv, tensor, c.f16);
        assert_eq!(got_v, v_cache, "{what}: v cache");
    }

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
        v_dim: c.v_dim,
    };
    let mut want = vec![3.0; out_len];
    attention::reference(&shape, &step, &qkv, &k_cache, &v_cache, &mut want);
    let got = read(ctx, &gout, out_len);
    // outputs are convex combinations of v (|v| <= 1): error relative to 1
    assert_close(what, &got, &want, &vec![1.0; out_len], TOL);
}

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
                k_only: false,
                v_dim: 40,
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
                k_only: false,
                v_dim: 136,
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
                k_only: false,
                v_dim: 256,
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
                k_only: false,
                v_dim: 64,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            run(ctx, &mut rng, c, &format!("attention {name} case {i}"));
            // The same with an f16 cache (its reference rounds k and v to f16 too).
            let c16 = Case {
                f16: true,
                seqs: c.seqs.iter().map(|s| SeqCase { past: s.past, new: s.new, tree: s.tree.clone() }).collect(),
                ..*c
            };
            run(ctx, &mut rng, &c16, &format!("attention {name} case {i} f16 cache"));
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
            k_only: false,
            v_dim: 32,
        };
        run(ctx, &mut rng, &c, &format!("tree attention {name}"));
    }
}

/// Latent attention (DeepSeek's MLA, absorbed): one k-only KV head whose rows
/// are `[latent | rope key]`; the value is the first `v_dim` values of the
/// same row, the output per head `v_dim` wide. Odd widths, a prompt chunk beside
/// a decode row, f32 and f16 caches, and the wide-head variant (576, as DeepSeek-V3).
#[test]
fn attention_latent_rows() {
    let contexts = contexts();
    let mut rng = rng("attention_latent_rows");
    for (name, ctx) in &contexts {
        for (heads, head_dim, v_dim, seqs) in
            [(5u32, 42u32, 29u32, vec![seq(0, 23), seq(37, 1)]), (3, 576, 512, vec![seq(0, 70), seq(9, 1)])]
        {
            for f16 in [false, true] {
                let c = Case {
                    heads,
                    kv_heads: 1,
                    head_dim,
                    block: 16,
                    num_blocks: 12,
                    seqs: seqs.iter().map(|s| SeqCase { past: s.past, new: s.new, tree: None }).collect(),
                    window: 0,
                    softcap: 0.0,
                    f16,
                    k_only: true,
                    v_dim,
                };
                run(ctx, &mut rng, &c, &format!("latent attention {name} d{head_dim} v{v_dim} f16 {f16}"));
            }
        }
    }
}
