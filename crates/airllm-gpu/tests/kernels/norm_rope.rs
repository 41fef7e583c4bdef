use airllm_gpu::kernels::matmul::{decode_weights, encode_weights};
use airllm_gpu::kernels::rmsnorm::{self, RmsNorm, RowView};
use airllm_gpu::kernels::rope::{self, Rope, RopeStyle};
use airllm_gpu::{BufView, WeightFormat};
use rand::Rng;

use crate::common::*;

const NORM_TOL: f32 = 1e-5;
const ROPE_TOL: f32 = 1e-5;

#[test]
fn rmsnorm_formats_views_and_forms() {
    let contexts = contexts();
    let mut rng = rng("rmsnorm_formats_views_and_forms");
    for (name, ctx) in &contexts {
        for weight_format in [WeightFormat::F32, WeightFormat::F16, WeightFormat::Bf16] {
            for (gemma, in_place) in [(false, false), (true, false), (false, true), (true, true)] {
                // hidden-state rows (heads = 1) and per-head rows over a fused buffer
                let d_rand = rng.random_range(1..700);
                for (rows, view) in [
                    (5u32, RowView::contiguous(1003)),
                    (3, RowView::contiguous(d_rand)),
                    (4 * 3, RowView { d: 72, heads: 3, stride: 3 * 72 + 40, off: 24 }),
                ] {
                    let tokens = rows.div_ceil(view.heads) as usize;
                    let n = tokens * view.stride as usize;
                    let x = randn(&mut rng, n, 2.0);
                    let w_raw = randn(&mut rng, view.d as usize, 1.5);
                    let bytes = encode_weights(weight_format, &w_raw, 1, view.d as usize).expect("encode");
                    let w = decode_weights(weight_format, &bytes, 1, view.d as usize).expect("decode");
                    let eps = 1e-6;
                    let gx = ctx.upload_f32("x", &x);
                    let gy = ctx.upload_f32("y", &vec![7.0; n]);
                    let gw = ctx.create_buffer_init("w", &bytes);
                    let mut rec = ctx.recorder("rmsnorm");
                    rmsnorm::launch(
                        &mut rec,
                        &RmsNorm {
                            rows,
                            x_rows: view,
                            x: BufView::whole(&gx),
                            y: (!in_place).then(|| (BufView::whole(&gy), view)),
                            weight: BufView::whole(&gw),
                            weight_format,
                            eps,
                            gemma,
                        },
                    )
                    .expect("launch");
                    rec.submit().expect("submit");
                    let got = read(ctx, if in_place { &gx } else { &gy }, n);
                    let mut want = if in_place { x.clone() } else { vec![7.0; n] };
                    rmsnorm::reference(rows, &view, &x, &view, &mut want, &w, eps, gemma);
                    let scale: Vec<f32> = want.iter().map(|v| v.abs().max(1e-3)).collect();
                    let what = format!(
                        "rmsnorm {name} {weight_format} gemma={gemma} in_place={in_place} rows={rows} {view:?}"
                    );
                    assert_close(&what, &got, &want, &scale, NORM_TOL);
                }
            }
        }
    }
}

#[test]
fn rope_both_styles_partial_rotary() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let mut rng = rng("rope_both_styles_partial_rotary");
    for style in [RopeStyle::Half, RopeStyle::Interleaved] {
        for (rows, heads, head_dim, rotary_dim, off, extra, max_pos, mscale) in [
            (7u32, 3u32, 40u32, 24u32, 8u32, 16u32, 5000u32, 1.0f32),
            (5, 2, 128, 128, 0, 0, 130_000, 1.0),
            (3, 5, 64, 64, 64 * 5, 64 * 3, 40, 0.9),
        ] {
            let stride = off + heads * head_dim + extra;
            let n = (rows * stride) as usize;
            let x = randn(&mut rng, n, 1.0);
            let pos: Vec<u32> = (0..rows).map(|_| rng.random_range(0..max_pos)).collect();
            let inv_freq = rope::default_inv_freq(10000.0, rotary_dim);
            let gx = ctx.upload_f32("x", &x);
            let gp = ctx.upload_u32("pos", &pos);
            let gf = ctx.upload_f32("inv_freq", &inv_freq);
            let mut rec = ctx.recorder("rope");
            rope::launch(
                &mut rec,
                &Rope {
                    x: BufView::whole(&gx),
                    rows,
                    heads,
                    head_dim,
                    rotary_dim,
                    stride,
                    off,
                    pos: BufView::whole(&gp),
                    inv_freq: BufView::whole(&gf),
                    style,
                    mscale,
                },
            )
            .expect("launch");
            rec.submit().expect("submit");
            let got = read(&ctx, &gx, n);
            let mut want = x.clone();
            rope::reference(&mut want, rows, heads, head_dim, rotary_dim, stride, off, &pos, &inv_freq, style, mscale);
            // error relative to the pair's magnitude (values near 0 after rotation)
            let scale = vec![1.0f32; n];
            let what =
                format!("rope {style:?} rows={rows} heads={heads} d={head_dim} rot={rotary_dim} max_pos={max_pos}");
            assert_close(&what, &got, &want, &scale, ROPE_TOL);
            // values outside the rotated dims are untouched
            for r in 0..rows {
                for h in 0..heads {
                    let b = (r * stride + off + h * head_dim) as usize;
                    assert_eq!(
                        got[b + rotary_dim as usize..b + head_dim as usize],
                        x[b + rotary_dim as usize..b + head_dim as usize]
                    );
                }
            }
        }
    }
}
