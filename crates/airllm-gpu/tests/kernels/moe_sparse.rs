use airllm_gpu::BufView;
use airllm_gpu::kernels::elementwise::Mat;
use airllm_gpu::kernels::moe_sparse::{self, Group};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::common::*;

/// Random top-k routing of `t` tokens over `e` experts, grouped by expert as
/// the engine does: (index list, weight list, groups of the chosen experts).
fn routing(rng: &mut rand::rngs::StdRng, t: u32, e: u32, k: u32) -> (Vec<u32>, Vec<f32>, Vec<Group>) {
    let mut per_expert: Vec<Vec<(u32, f32)>> = vec![Vec::new(); e as usize];
    for tok in 0..t {
        let mut experts: Vec<u32> = (0..e).collect();
        experts.shuffle(rng);
        for &ex in &experts[..k as usize] {
            per_expert[ex as usize].push((tok, rng.random_range(0.05f32..1.0)));
        }
    }
    let (mut idx, mut w, mut groups) = (Vec::new(), Vec::new(), Vec::new());
    for list in per_expert {
        if list.is_empty() {
            continue;
        }
        groups.push(Group { start: idx.len() as u32, n: list.len() as u32 });
        for (tok, wt) in list {
            idx.push(tok);
            w.push(wt);
        }
    }
    (idx, w, groups)
}

/// Gather then scatter-add at odd sizes (rows, columns, strides and offsets
/// off every workgroup and subgroup multiple), against the CPU references.
#[test]
fn moe_gather_and_scatter_add() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let mut rng = rng("moe_gather_and_scatter_add");
    for (t, e, k, cols) in [(1u32, 8u32, 2u32, 64u32), (37, 8, 2, 129), (13, 60, 4, 77), (5, 128, 8, 1003)] {
        let (idx, w, groups) = routing(&mut rng, t, e, k);
        assert_eq!(idx.len() as u32, t * k);
        let src = randn(&mut rng, (t * cols) as usize, 1.0);
        let dst0 = randn(&mut rng, (t * cols) as usize, 1.0);
        let (gsrc, gdst) = (ctx.upload_f32("src", &src), ctx.upload_f32("dst", &dst0));
        let (gidx, gw) = (ctx.upload_u32("idx", &idx), ctx.upload_f32("w", &w));
        // One block, as large as the largest group, reused by every expert.
        let block_rows = groups.iter().map(|g| g.n).max().unwrap_or(1);
        let gblock = ctx.create_storage_buffer("block", u64::from(block_rows * cols) * 4);
        let mut want = dst0.clone();
        let mut block = vec![0f32; (block_rows * cols) as usize];
        let mut last_block = Vec::new();
        for (i, &g) in groups.iter().enumerate() {
            let mut rec = ctx.recorder("moe_sparse");
            let m = |b| Mat::contiguous(BufView::whole(b), cols);
            moe_sparse::gather(&mut rec, g, cols, m(&gsrc), t, m(&gblock), BufView::whole(&gidx)).expect("gather");
            moe_sparse::scatter_add(
                &mut rec,
                g,
                cols,
                m(&gblock),
                m(&gdst),
                t,
                BufView::whole(&gidx),
                BufView::whole(&gw),
            )
            .expect("scatter");
            rec.submit().expect("submit");
            moe_sparse::gather_reference(g, cols, &src, &mut block, &idx);
            moe_sparse::scatter_add_reference(g, cols, &block, &mut want, &idx, &w);
            if i + 1 == groups.len() {
                last_block = read(&ctx, &gblock, (g.n * cols) as usize);
                block.truncate((g.n * cols) as usize);
            }
        }
        // The gathered rows are copies: exact.
        assert_eq!(last_block, block, "gather t={t} e={e} k={k} cols={cols}");
        let got = read(&ctx, &gdst, want.len());
        // Same f32 multiply-add per value in the same expert order: exact too.
        assert_eq!(got, want, "scatter_add t={t} e={e} k={k} cols={cols}");
        // Untouched rows stay untouched when some tokens route nowhere in a group.
        assert!(groups.iter().all(|g| g.n <= t));
    }
}

/// A padded layout: source and destination with strides and column offsets.
#[test]
fn moe_gather_and_scatter_respect_strides() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let mut rng = rng("moe_gather_and_scatter_respect_strides");
    let (t, cols) = (11u32, 45u32);
    let (ss, so, ds, doff) = (cols + 7, 7u32, cols + 3, 2u32);
    let idx: Vec<u32> = vec![9, 0, 4, 10, 3];
    let w: Vec<f32> = vec![0.5, 1.25, -0.75, 2.0, 0.125];
    let g = Group { start: 1, n: 3 }; // rows 0, 4, 10
    let src = randn(&mut rng, (t * ss) as usize, 1.0);
    let dst0 = randn(&mut rng, (t * ds) as usize, 1.0);
    let (gsrc, gdst) = (ctx.upload_f32("src", &src), ctx.upload_f32("dst", &dst0));
    let (gidx, gw) = (ctx.upload_u32("idx", &idx), ctx.upload_f32("w", &w));
    let gblock = ctx.create_storage_buffer("block", u64::from(g.n * (cols + 1)) * 4);
    let mut rec = ctx.recorder("moe_sparse");
    let block = Mat { view: BufView::whole(&gblock), stride: cols + 1, off: 1 };
    let src_m = Mat { view: BufView::whole(&gsrc), stride: ss, off: so };
    let dst_m = Mat { view: BufView::whole(&gdst), stride: ds, off: doff };
    moe_sparse::gather(&mut rec, g, cols, src_m, t, block, BufView::whole(&gidx)).expect("gather");
    moe_sparse::scatter_add(&mut rec, g, cols, block, dst_m, t, BufView::whole(&gidx), BufView::whole(&gw))
        .expect("scatter");
    rec.submit().expect("submit");
    let got = read(&ctx, &gdst, dst0.len());
    let mut want = dst0.clone();
    for j in 0..g.n as usize {
        let p = g.start as usize + j;
        let r = idx[p] as usize;
        for c in 0..cols as usize {
            want[r * ds as usize + doff as usize + c] += w[p] * src[r * ss as usize + so as usize + c];
        }
    }
    assert_eq!(got, want);
    // Out-of-range views are refused, not run.
    let mut rec = ctx.recorder("moe_sparse");
    let short = Mat::contiguous(BufView::whole(&gsrc), cols);
    let e = moe_sparse::gather(&mut rec, Group { start: 0, n: 400 }, cols, short, t, block, BufView::whole(&gidx));
    assert!(e.is_err());
}
