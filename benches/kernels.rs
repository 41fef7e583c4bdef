//! kernels benches: GPU time of each kernel at real model shapes (8B/70B
//! Llama-3: 4096x4096, 14336x4096, 4096x14336, 128256x4096), per weight
//! format.
//!
//! Ids: `{adapter}/kernels/{op}/{format}/{shape}`. On a CPU (software)
//! adapter such as lavapipe the shapes shrink to 1024x1024 (shape ids end in
//! `-sw`) so the suite stays short. Each sample records a batch of launches,
//! submits, and waits for that submission (`poll(Wait)`) before the clock
//! stops. Throughput is `Bytes`: weights plus activations read and written,
//! the limit of these memory-bound kernels; the matrix-matrix groups also
//! print GFLOP/s.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airllm_gpu::kernels::act_mul::{self, ActMul, Activation};
use airllm_gpu::kernels::attention::{self, Attention};
use airllm_gpu::kernels::matmul::{self, Matmul, MatmulShape, encode_weights};
use airllm_gpu::kernels::rmsnorm::{self, RmsNorm, RowView};
use airllm_gpu::kernels::rope::{self, Rope, RopeStyle};
use airllm_gpu::{BufView, GpuContext, GpuOptions, KvCache, KvLayout, Recorder, WeightFormat};
use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Launches per submission.
const BATCH: u64 = 16;

pub fn benches(c: &mut Criterion) {
    let ctx = match GpuContext::new(&GpuOptions::default()) {
        Ok(ctx) => Arc::new(ctx),
        Err(e) => {
            eprintln!("kernels benches skipped: {e}");
            return;
        }
    };
    let sw = ctx.caps().is_software();
    let adapter = ctx.caps().adapter_slug();
    if sw {
        eprintln!("kernels: {adapter} is a CPU device: shapes shrunk to 1024x1024 (ids end in -sw)");
    }
    let shapes: Vec<(u32, u32)> =
        if sw { vec![(1024, 1024)] } else { vec![(4096, 4096), (14336, 4096), (4096, 14336), (128256, 4096)] };
    let suffix = if sw { "-sw" } else { "" };
    let mut rng = StdRng::seed_from_u64(1);

    for &(n, k) in &shapes {
        let shape = format!("{n}x{k}{suffix}");
        for format in WeightFormat::ALL {
            let weights = tiled_weights(&ctx, &mut rng, format, n, k);
            // decode: one token
            bench_matmul(c, &ctx, &adapter, "gemv", &shape, format, &weights, 1, n, k);
            // prefill: 512 tokens (128 on a software device), only at 4096x4096
            if (n, k) == shapes[0] {
                let t = if sw { 64 } else { 512 };
                bench_matmul(c, &ctx, &adapter, "gemm", &format!("{shape}-t{t}"), format, &weights, t, n, k);
            }
        }
    }

    let (t, d) = if sw { (4u32, 1024u32) } else { (8, 4096) };
    bench_rmsnorm(c, &ctx, &adapter, t, d, suffix);
    bench_rope(c, &ctx, &adapter, t, suffix);
    bench_act_mul(c, &ctx, &adapter, t, if sw { 2816 } else { 14336 }, suffix);
    bench_attention(c, &ctx, &adapter, if sw { 256 } else { 4096 }, suffix);
}

fn group<'a>(c: &'a mut Criterion, id: String, bytes: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(id);
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(bytes));
    g
}

/// Times `iters` launches recorded by `launch`, BATCH per submission, waiting
/// for the GPU before stopping the clock.
fn time_launches(ctx: &GpuContext, iters: u64, launch: &dyn Fn(&mut Recorder<'_>)) -> Duration {
    let start = Instant::now();
    let mut done = 0;
    let mut last = None;
    while done < iters {
        let mut rec = ctx.recorder("bench");
        let n = BATCH.min(iters - done);
        for _ in 0..n {
            launch(&mut rec);
        }
        last = Some(rec.submit().expect("submit"));
        done += n;
    }
    ctx.wait(last).expect("wait");
    start.elapsed()
}

/// A `[n, k]` weight tensor: 64 random rows encoded once and repeated (real
/// shapes reach 2 GB; encoding all of it would dominate the bench).
fn tiled_weights(ctx: &GpuContext, rng: &mut StdRng, format: WeightFormat, n: u32, k: u32) -> airllm_gpu::wgpu::Buffer {
    let tile_rows = 64usize;
    let w: Vec<f32> = (0..tile_rows * k as usize).map(|_| rng.random::<f32>() * 0.1 - 0.05).collect();
    let tile = encode_weights(format, &w, tile_rows, k as usize).expect("encode");
    let total = u64::from(n) * format.row_bytes(u64::from(k));
    let buffer = ctx.create_storage_buffer("bench.w", total);
    let mut off = 0u64;
    while off < total {
        let len = (tile.len() as u64).min(total - off) as usize;
        // whole multiples of 4 bytes for write_buffer (buffer sizes are padded)
        let len4 = len.div_ceil(4) * 4;
        if len4 <= tile.len() {
            ctx.queue().write_buffer(&buffer, off, &tile[..len4]);
        } else {
            let mut padded = tile[..len].to_vec();
            padded.resize(len4, 0);
            ctx.queue().write_buffer(&buffer, off, &padded);
        }
        off += len as u64;
        if off % (256 << 20) < tile.len() as u64 {
            ctx.queue().submit([]);
        }
    }
    ctx.wait(None).expect("upload");
    buffer
}

#[allow(clippy::too_many_arguments)]
fn bench_matmul(
    c: &mut Criterion,
    ctx: &GpuContext,
    adapter: &str,
    op: &str,
    shape: &str,
    format: WeightFormat,
    w: &airllm_gpu::wgpu::Buffer,
    t: u32,
    n: u32,
    k: u32,
) {
    let x = ctx.create_storage_buffer("bench.x", u64::from(t) * u64::from(k) * 4);
    let y = ctx.create_storage_buffer("bench.y", u64::from(t) * u64::from(n) * 4);
    let wbytes = u64::from(n) * format.row_bytes(u64::from(k));
    let bytes = wbytes + u64::from(t) * (u64::from(k) + u64::from(n)) * 4;
    let m = Matmul {
        shape: MatmulShape::new(t, n, k),
        format,
        weight: BufView::new(w, 0, wbytes),
        x: BufView::whole(&x),
        y: BufView::whole(&y),
        bias: None,
    };
    let spent = Cell::new((0u64, Duration::ZERO));
    let mut g = group(c, format!("{adapter}/kernels/{op}/{}/{shape}", format.name()), bytes);
    g.bench_function("run", |b| {
        b.iter_custom(|iters| {
            let d = time_launches(ctx, iters, &|rec| matmul::launch(rec, &m).expect("launch"));
            let (i, s) = spent.get();
            spent.set((i + iters, s + d));
            d
        })
    });
    g.finish();
    let (iters, secs) = spent.get();
    if op == "gemm" && iters > 0 {
        let flops = 2.0 * f64::from(t) * f64::from(n) * f64::from(k) * iters as f64;
        println!("{adapter}/kernels/{op}/{}/{shape}: {:.1} GFLOP/s", format.name(), flops / secs.as_secs_f64() / 1e9);
    }
}

fn bench_rmsnorm(c: &mut Criterion, ctx: &GpuContext, adapter: &str, t: u32, d: u32, suffix: &str) {
    let x = ctx.create_storage_buffer("x", u64::from(t * d) * 4);
    let y = ctx.create_storage_buffer("y", u64::from(t * d) * 4);
    let w = ctx.upload_f32("w", &vec![1.0; d as usize]);
    let a = RmsNorm {
        rows: t,
        x_rows: RowView::contiguous(d),
        x: BufView::whole(&x),
        y: Some((BufView::whole(&y), RowView::contiguous(d))),
        weight: BufView::whole(&w),
        weight_format: WeightFormat::F32,
        eps: 1e-5,
        gemma: false,
    };
    let mut g = group(c, format!("{adapter}/kernels/rmsnorm/f32/{t}x{d}{suffix}"), u64::from(2 * t * d + d) * 4);
    g.bench_function("run", |b| {
        b.iter_custom(|i| time_launches(ctx, i, &|rec| rmsnorm::launch(rec, &a).expect("rmsnorm")))
    });
    g.finish();
}

fn bench_rope(c: &mut Criterion, ctx: &GpuContext, adapter: &str, t: u32, suffix: &str) {
    let (heads, d) = (32u32, 128u32);
    let x = ctx.create_storage_buffer("x", u64::from(t * heads * d) * 4);
    let pos = ctx.upload_u32("pos", &(0..t).collect::<Vec<_>>());
    let f = ctx.upload_f32("inv_freq", &rope::default_inv_freq(500000.0, d));
    let a = Rope {
        x: BufView::whole(&x),
        rows: t,
        heads,
        head_dim: d,
        rotary_dim: d,
        stride: heads * d,
        off: 0,
        pos: BufView::whole(&pos),
        inv_freq: BufView::whole(&f),
        style: RopeStyle::Half,
        mscale: 1.0,
    };
    let mut g =
        group(c, format!("{adapter}/kernels/rope/f32/{t}x{heads}x{d}{suffix}"), u64::from(2 * t * heads * d) * 4);
    g.bench_function("run", |b| b.iter_custom(|i| time_launches(ctx, i, &|rec| rope::launch(rec, &a).expect("rope"))));
    g.finish();
}

fn bench_act_mul(c: &mut Criterion, ctx: &GpuContext, adapter: &str, t: u32, i: u32, suffix: &str) {
    let input = ctx.create_storage_buffer("in", u64::from(2 * t * i) * 4);
    let out = ctx.create_storage_buffer("out", u64::from(t * i) * 4);
    let a = ActMul::fused(Activation::Silu, t, i, BufView::whole(&input), BufView::whole(&out));
    let mut g = group(c, format!("{adapter}/kernels/act_mul/silu/{t}x{i}{suffix}"), u64::from(3 * t * i) * 4);
    g.bench_function("run", |b| {
        b.iter_custom(|n| time_launches(ctx, n, &|rec| act_mul::launch(rec, &a).expect("act_mul")))
    });
    g.finish();
}

/// Decode attention of one token over `past` cached positions (8B shapes:
/// 32 heads, 8 kv heads, head_dim 128).
fn bench_attention(c: &mut Criterion, ctx: &GpuContext, adapter: &str, past: u32, suffix: &str) {
    use airllm_gpu::kernels::paged::{NO_TREE, StepRow, StepSeq, StepViews};
    let block = 16u32;
    let blocks = (past + 1).div_ceil(block);
    let layout = KvLayout { num_blocks: blocks, block, kv_heads: 8, head_dim: 128, f16: false, k_only: false };
    let heads = 32u32;
    let cache = KvCache::new(ctx, 1, layout).expect("cache");
    let q = ctx.create_storage_buffer("q", u64::from(heads * 128) * 4);
    let out = ctx.create_storage_buffer("out", u64::from(heads * 128) * 4);
    // One decode row at position `past` of one sequence owning every block.
    let rows =
        ctx.create_buffer_init("rows", bytemuck::bytes_of(&StepRow { seq: 0, pos: past, slot: past, mask: NO_TREE }));
    let seqs = ctx.create_buffer_init(
        "seqs",
        bytemuck::bytes_of(&StepSeq { bt_off: 0, kv_len: past + 1, tree_base: 0, tree_len: 0 }),
    );
    let table = ctx.upload_u32("block_table", &(0..blocks).collect::<Vec<_>>());
    let masks = ctx.upload_u32("tree_masks", &[0]);
    let step = StepViews {
        rows: BufView::whole(&rows),
        seqs: BufView::whole(&seqs),
        block_table: BufView::whole(&table),
        tree_masks: BufView::whole(&masks),
    };
    let (k, v) = (cache.k(0).expect("k"), cache.v(0).expect("v"));
    let a = Attention {
        layout,
        rows: 1,
        heads,
        step,
        q: BufView::whole(&q),
        q_stride: heads * 128,
        q_off: 0,
        k_cache: k,
        v_cache: v,
        out: BufView::whole(&out),
        out_stride: heads * 128,
        out_off: 0,
        scale: 1.0 / (128f32).sqrt(),
        window: 0,
        softcap: 0.0,
        v_dim: 128,
    };
    let kv_bytes = 2 * u64::from(past + 1) * u64::from(layout.kv_heads) * 128 * 4;
    let mut g = group(c, format!("{adapter}/kernels/attention/f32/decode-{past}{suffix}"), kv_bytes);
    g.bench_function("run", |b| {
        b.iter_custom(|n| time_launches(ctx, n, &|rec| attention::launch(rec, &a).expect("attention")))
    });
    g.finish();
}
