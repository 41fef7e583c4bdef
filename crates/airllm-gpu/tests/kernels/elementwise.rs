use airllm_gpu::BufView;
use airllm_gpu::kernels::act_mul::{self, ActMul, Activation};
use airllm_gpu::kernels::elementwise::{self, Mat, reference};
use airllm_gpu::kernels::moe::{self, Route};
use rand::Rng;

use crate::common::*;

#[test]
fn act_mul_silu_and_gelu() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let mut rng = rng("act_mul_silu_and_gelu");
    for act in [Activation::Silu, Activation::GeluTanh] {
        let (t, i) = (5u32, 1007u32);
        // fused [T, 2I] and separate halves with padding columns
        for (in_stride, gate_off, up_off) in [(2 * i, 0, i), (2 * i + 13, i + 13, 0)] {
            let input = randn(&mut rng, (t * in_stride) as usize, 8.0);
            let (out_stride, out_off) = (i + 3, 3);
            let n = (t * out_stride) as usize;
            let gi = ctx.upload_f32("in", &input);
            let go = ctx.upload_f32("out", &vec![0.5; n]);
            let mut rec = ctx.recorder("act_mul");
            act_mul::launch(
                &mut rec,
                &ActMul {
                    act,
                    t,
                    i,
                    input: BufView::whole(&gi),
                    in_stride,
                    gate_off,
                    up_off,
                    out: BufView::whole(&go),
                    out_stride,
                    out_off,
                },
            )
            .expect("launch");
            rec.submit().expect("submit");
            let got = read(&ctx, &go, n);
            let mut want = vec![0.5; n];
            act_mul::reference(act, t, i, &input, in_stride, gate_off, up_off, &mut want, out_stride, out_off);
            let scale: Vec<f32> = want.iter().map(|v| v.abs().max(1e-3)).collect();
            assert_close(&format!("act_mul {act:?} stride {in_stride}"), &got, &want, &scale, 1e-5);
        }
    }
}

#[test]
fn add_bias_scale() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let mut rng = rng("add_bias_scale");
    let (rows, cols) = (7u32, 333u32);
    let (xs, xo, ys, yo) = (cols + 5, 5u32, cols, 0u32);
    let x = randn(&mut rng, (rows * xs) as usize, 1.0);
    let y = randn(&mut rng, (rows * ys) as usize, 1.0);
    let b = randn(&mut rng, cols as usize, 1.0);
    let s = rng.random_range(0.5f32..40.0);
    let (gx, gy, gb) = (ctx.upload_f32("x", &x), ctx.upload_f32("y", &y), ctx.upload_f32("b", &b));
    let mx = Mat { view: BufView::whole(&gx), stride: xs, off: xo };
    let my = Mat { view: BufView::whole(&gy), stride: ys, off: yo };
    let mut rec = ctx.recorder("elementwise");
    elementwise::add(&mut rec, rows, cols, mx, my).expect("add");
    elementwise::bias_add(&mut rec, rows, cols, mx, BufView::whole(&gb)).expect("bias_add");
    elementwise::scale(&mut rec, rows, cols, mx, s).expect("scale");
    rec.submit().expect("submit");
    let got = read(&ctx, &gx, x.len());
    let mut want = x.clone();
    reference::add(rows, cols, &mut want, xs, xo, &y, ys, yo);
    reference::bias_add(rows, cols, &mut want, xs, xo, &b);
    reference::scale(rows, cols, &mut want, xs, xo, s);
    // same f32 operations in the same order: exact
    assert_eq!(got, want);
}

#[test]
fn moe_route_and_combine() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let mut rng = rng("moe_route_and_combine");
    for (t, e, k, renorm) in [(37u32, 8u32, 2u32, true), (9, 60, 4, false), (3, 256, 8, true)] {
        let logits = randn(&mut rng, (t * e) as usize, 4.0);
        let gl = ctx.upload_f32("logits", &logits);
        let gw = ctx.create_storage_buffer("weights", u64::from(t * e) * 4);
        let cols = 129u32;
        let y = randn(&mut rng, (t * cols) as usize, 1.0);
        let out0 = randn(&mut rng, (t * cols) as usize, 1.0);
        let (gy, go) = (ctx.upload_f32("y", &y), ctx.upload_f32("out", &out0));
        let expert = e / 2;
        let mut rec = ctx.recorder("moe");
        moe::route(
            &mut rec,
            &Route {
                t,
                experts: e,
                top_k: k,
                renormalize: renorm,
                logits: Mat::contiguous(BufView::whole(&gl), e),
                weights: BufView::whole(&gw),
            },
        )
        .expect("route");
        for ex in [expert, 0] {
            moe::combine(
                &mut rec,
                t,
                cols,
                e,
                ex,
                Mat::contiguous(BufView::whole(&go), cols),
                Mat::contiguous(BufView::whole(&gy), cols),
                BufView::whole(&gw),
            )
            .expect("combine");
        }
        rec.submit().expect("submit");
        let got_w = read(&ctx, &gw, (t * e) as usize);
        let want_w = moe::route_reference(t, e, k, renorm, &logits);
        for r in 0..t as usize {
            let nz = got_w[r * e as usize..(r + 1) * e as usize].iter().filter(|v| **v != 0.0).count();
            assert_eq!(nz, k as usize, "token {r}: {nz} experts selected, want {k}");
        }
        assert_close(&format!("moe_route t={t} e={e} k={k}"), &got_w, &want_w, &vec![1.0; got_w.len()], 1e-6);
        let mut want = out0.clone();
        for ex in [expert, 0] {
            moe::combine_reference(t, cols, e, ex, &mut want, &y, &got_w);
        }
        let got = read(&ctx, &go, want.len());
        assert_close(&format!("moe_combine t={t} e={e}"), &got, &want, &vec![1.0; want.len()], 1e-6);
    }
}

/// DeepSeek-V3 routing (sigmoid scores, correction bias, group-limited top-k,
/// scaled weights) against the f64 reference, at odd token counts, with and
/// without renormalisation; logits in a strided buffer. Also checks that the
/// bias changes the choice but not the weights' formula: a kept expert's weight
/// is its sigmoid score (renormalised), never score + bias.
#[test]
fn moe_route_sigmoid_grouped() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let mut rng = rng("moe_route_sigmoid_grouped");
    for (t, e, k, n_group, topk_group, renorm, scaling) in
        [(37u32, 8u32, 2u32, 4u32, 2u32, true, 2.5f32), (9, 64, 6, 8, 3, false, 1.0), (3, 256, 8, 8, 4, true, 2.5)]
    {
        let stride = e + 3;
        let logits = randn(&mut rng, (t * stride) as usize, 3.0);
        let bias = randn(&mut rng, e as usize, 0.5);
        let (gl, gb) = (ctx.upload_f32("logits", &logits), ctx.upload_f32("bias", &bias));
        let gw = ctx.create_storage_buffer("weights", u64::from(t * e) * 4);
        let mut rec = ctx.recorder("moe_grouped");
        moe::route_grouped(
            &mut rec,
            &moe::RouteGrouped {
                route: Route {
                    t,
                    experts: e,
                    top_k: k,
                    renormalize: renorm,
                    logits: Mat { view: BufView::whole(&gl), stride, off: 2 },
                    weights: BufView::whole(&gw),
                },
                bias: BufView::whole(&gb),
                n_group,
                topk_group,
                scaling,
            },
        )
        .expect("route_grouped");
        rec.submit().expect("submit");
        let got = read(&ctx, &gw, (t * e) as usize);
        let dense: Vec<f32> =
            (0..t as usize).flat_map(|r| logits[r * stride as usize + 2..][..e as usize].to_vec()).collect();
        let want = moe::route_grouped_reference(t, e, k, renorm, n_group, topk_group, scaling, &bias, &dense);
        let gs = (e / n_group) as usize;
        for r in 0..t as usize {
            let row = &got[r * e as usize..(r + 1) * e as usize];
            let chosen: Vec<usize> = (0..e as usize).filter(|&j| row[j] != 0.0).collect();
            assert_eq!(chosen.len(), k as usize, "token {r}: {} experts selected, want {k}", chosen.len());
            let groups: std::collections::BTreeSet<usize> = chosen.iter().map(|j| j / gs).collect();
            assert!(groups.len() <= topk_group as usize, "token {r}: experts from {} groups", groups.len());
            if renorm {
                let sum: f32 = row.iter().sum();
                assert!((sum - scaling).abs() < 1e-5, "token {r}: weights sum to {sum}, want {scaling}");
            }
        }
        assert_close(&format!("moe_route_grouped t={t} e={e} k={k}"), &got, &want, &vec![1.0; got.len()], 1e-6);
    }
}
