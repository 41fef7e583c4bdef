//! Decode attention, one pass against split-K: one token of one sequence over
//! `past` cached positions at Llama-3-8B shapes (32 query heads, 8 kv heads,
//! head_dim 128, f32 cache), for several chunk counts. Prints the mean time
//! per launch (launches batched per submission, the device waited on at the
//! end), and the chunk count `Splits::Auto` picks.
//!
//! ```text
//! cargo run --release -p airllm-gpu --example attention_split -- [past=4096] [iters=20]
//! ```

use std::time::Instant;

use airllm_gpu::kernels::attention::{self, Attention, Splits, split_scratch_bytes};
use airllm_gpu::kernels::paged::{NO_TREE, StepRow, StepSeq, StepViews};
use airllm_gpu::testing::test_options;
use airllm_gpu::{BufView, GpuContext, KvCache, KvLayout};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let past: u32 = args.next().map_or(Ok(4096), |a| a.parse())?;
    let iters: u32 = args.next().map_or(Ok(20), |a| a.parse())?;
    let (opts, _) = test_options()?;
    let ctx = GpuContext::new(&opts)?;
    let (heads, kv_heads, d, block) = (32u32, 8u32, 128u32, 16u32);
    let layout = KvLayout { num_blocks: (past + 1).div_ceil(block), block, kv_heads, head_dim: d, f16: false };
    let cache = KvCache::new(&ctx, 1, layout)?;
    let q = ctx.upload_f32("q", &vec![0.01; (heads * d) as usize]);
    let out = ctx.create_storage_buffer("out", u64::from(heads * d) * 4);
    let rows =
        ctx.create_buffer_init("rows", bytemuck::bytes_of(&StepRow { seq: 0, pos: past, slot: past, mask: NO_TREE }));
    let seqs = ctx.create_buffer_init(
        "seqs",
        bytemuck::bytes_of(&StepSeq { bt_off: 0, kv_len: past + 1, tree_base: 0, tree_len: 0 }),
    );
    let table = ctx.upload_u32("block_table", &(0..layout.num_blocks).collect::<Vec<_>>());
    let masks = ctx.upload_u32("tree_masks", &[0]);
    let step = StepViews {
        rows: BufView::whole(&rows),
        seqs: BufView::whole(&seqs),
        block_table: BufView::whole(&table),
        tree_masks: BufView::whole(&masks),
    };
    let scratch = ctx.create_storage_buffer("scratch", split_scratch_bytes(1, heads, d, Splits::Force(64)));
    let (k, v) = (cache.k(0).expect("layer 0"), cache.v(0).expect("layer 0"));
    let base = Attention {
        layout,
        rows: 1,
        heads,
        step,
        q: BufView::whole(&q),
        q_stride: heads * d,
        q_off: 0,
        k_cache: k,
        v_cache: v,
        out: BufView::whole(&out),
        out_stride: heads * d,
        out_off: 0,
        scale: 1.0 / (d as f32).sqrt(),
        window: 0,
        softcap: 0.0,
        max_keys: past + 1,
        splits: Splits::Auto,
        scratch: Some(BufView::whole(&scratch)),
    };
    println!("{} (past {past}): Auto picks {} chunks", ctx.caps().adapter_name, base.chunk_count());
    for splits in [1u32, 2, 4, 8, 16, 64] {
        let a = Attention { splits: Splits::Force(splits), ..base };
        // warm up (pipeline compilation), then time
        let mut rec = ctx.recorder("warm");
        attention::launch(&mut rec, &a)?;
        ctx.wait(Some(rec.submit()?))?;
        let t = Instant::now();
        let mut rec = ctx.recorder("timed");
        for _ in 0..iters {
            attention::launch(&mut rec, &a)?;
        }
        ctx.wait(Some(rec.submit()?))?;
        let per = t.elapsed() / iters;
        println!("splits {splits:>2}: {:>8.3} ms per launch", per.as_secs_f64() * 1e3);
    }
    Ok(())
}
