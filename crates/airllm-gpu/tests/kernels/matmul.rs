use airllm_gpu::kernels::matmul::{self, Matmul, MatmulShape, decode_weights, encode_weights};
use airllm_gpu::{BufView, GpuContext, WeightFormat};
use rand::rngs::StdRng;

use crate::common::*;

/// f32 accumulation error bound, relative to sum_k |x_k w_k| (+ |bias| + |y|).
const TOL: f32 = 1e-5;

struct Case {
    format: WeightFormat,
    shape: MatmulShape,
    bias: bool,
    w_offset: u64,
}

fn run_case(ctx: &GpuContext, rng: &mut StdRng, c: &Case, what: &str) {
    let s = c.shape;
    let (t, n, k) = (s.t as usize, s.n as usize, s.k as usize);
    let w_f32 = randn(rng, n * k, 1.0);
    let bytes = encode_weights(c.format, &w_f32, n, k).expect("encode");
    let w = decode_weights(c.format, &bytes, n, k).expect("decode");
    let mut wbuf = vec![0u8; c.w_offset as usize];
    wbuf.extend_from_slice(&bytes);
    let xlen = (t - 1) * s.x_stride as usize + k;
    let ylen = (t - 1) * s.y_stride as usize + s.y_off as usize + n;
    let x = randn(rng, xlen, 1.0);
    let y0 = randn(rng, ylen, 1.0);
    let b = randn(rng, n, 1.0);

    let gw = ctx.create_buffer_init("w", &wbuf);
    let gx = ctx.upload_f32("x", &x);
    let gy = ctx.upload_f32("y", &y0);
    let gb = ctx.upload_f32("b", &b);
    let mut rec = ctx.recorder("test");
    matmul::launch(
        &mut rec,
        &Matmul {
            shape: s,
            format: c.format,
            weight: BufView::new(&gw, c.w_offset, bytes.len() as u64),
            x: BufView::whole(&gx),
            y: BufView::whole(&gy),
            bias: c.bias.then(|| BufView::whole(&gb)),
        },
    )
    .expect("launch");
    rec.submit().expect("submit");
    let got = read(ctx, &gy, ylen);

    let mut want = y0.clone();
    matmul::reference(&s, &w, &x, c.bias.then_some(&b[..]), &mut want);
    // error scale: the same product on magnitudes
    let wa: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    let xa: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let ba: Vec<f32> = b.iter().map(|v| v.abs()).collect();
    let mut scale: Vec<f32> = y0.iter().map(|v| v.abs()).collect();
    let sa = MatmulShape { accumulate: true, ..s };
    matmul::reference(&sa, &wa, &xa, c.bias.then_some(&ba[..]), &mut scale);
    assert_close(what, &got, &want, &scale, TOL);
}

fn k_for(format: WeightFormat, rng: &mut StdRng) -> Vec<u32> {
    use rand::Rng;
    // odd K (padded blocks, unaligned dense rows), and an aligned K for the
    // 16-byte path; plus one random K
    let mut v = vec![32 * 3 + 5, 136];
    if !format.is_dense() {
        v.push(64 * 2 + 17);
    }
    if matches!(format, WeightFormat::Quant(c) if c.is_k_quant()) {
        // whole 256-value super-blocks (what GGUF files hold), and a partial
        // second one
        v.push(256 * 3);
        v.push(256 + 64 + 3);
    }
    v.push(rng.random_range(1..300));
    v
}

#[test]
fn gemv_all_formats() {
    let contexts = contexts();
    let mut rng = rng("gemv_all_formats");
    for (name, ctx) in &contexts {
        for format in WeightFormat::ALL {
            for k in k_for(format, &mut rng) {
                for t in [1u32, 2, 3, 8] {
                    let n = 37;
                    // odd t: x rows 16-byte aligned (vec4 loads); even t: not
                    let x_stride = k.div_ceil(4) * 4 + if t % 2 == 1 { 4 } else { 1 };
                    let shape = MatmulShape { t, n, k, x_stride, y_stride: n + 9, y_off: 5, accumulate: t % 2 == 1 };
                    let case = Case { format, shape, bias: t != 2, w_offset: 0 };
                    run_case(ctx, &mut rng, &case, &format!("gemv {name} {format} t={t} n={n} k={k}"));
                }
            }
        }
    }
}

/// GEMM cases of every format at odd sizes (partial tiles on both edges).
fn gemm_cases(ctx: &GpuContext, rng: &mut StdRng, name: &str) {
    for format in WeightFormat::ALL {
        for k in k_for(format, rng) {
            for (t, n) in [(9u32, 37u32), (70, 65), (130, 131)] {
                let shape = MatmulShape { t, n, k, x_stride: k, y_stride: n + 3, y_off: 1, accumulate: t == 70 };
                let case = Case { format, shape, bias: t != 9, w_offset: 0 };
                run_case(ctx, rng, &case, &format!("{name} {format} t={t} n={n} k={k}"));
            }
        }
    }
}

/// The tiled `gemm.wgsl` (cooperative matrices off, so it runs on every adapter).
#[test]
fn gemm_all_formats() {
    let contexts = contexts();
    let Some((_, ctx)) = contexts.first() else { return };
    let ctx = ctx.with_caps(|c| c.coop_matrix = false);
    gemm_cases(&ctx, &mut rng("gemm_all_formats"), "gemm");
}

/// `gemm_coop.wgsl` on 8x8 f32 cooperative matrices, where the adapter has
/// them (lavapipe does not: skipped with the reason printed).
#[test]
fn gemm_coop_all_formats() {
    let contexts = contexts();
    let Some((_, ctx)) = contexts.first() else { return };
    let caps = ctx.caps();
    if !matmul::gemm::coop_usable(caps) {
        let why = if !caps.coop_matrix {
            "the adapter offers no 8x8x8 f32 cooperative matrices (EXPERIMENTAL_COOPERATIVE_MATRIX)".to_string()
        } else {
            format!(
                "subgroups {}..={} (enabled: {}) do not fit its 64-thread workgroups (needs 4..=64)",
                caps.subgroup_min, caps.subgroup_max, caps.subgroup
            )
        };
        eprintln!("skipping gemm_coop on {}: {why}", caps.adapter_name);
        return;
    }
    gemm_cases(ctx, &mut rng("gemm_coop_all_formats"), "gemm_coop");
}

/// Weights at an offset inside a larger buffer (a layer slot) that is not a
/// multiple of 256: the launcher binds an aligned offset and passes the rest.
#[test]
fn weights_inside_a_slot() {
    let contexts = contexts();
    let Some((_, ctx)) = contexts.first() else { return };
    let mut rng = rng("weights_inside_a_slot");
    for format in WeightFormat::ALL {
        let off = if format.is_dense() { 16 * 5 } else { 258 };
        for t in [1u32, 12] {
            let k = if format.is_dense() { 136 } else { 101 };
            let case = Case { format, shape: MatmulShape::new(t, 19, k), bias: false, w_offset: off };
            run_case(ctx, &mut rng, &case, &format!("slot offset {off} {format} t={t}"));
        }
    }
}

/// A weight tensor larger than the (forced, 64 KiB) largest binding is split
/// by rows over several dispatches.
#[test]
fn row_split_with_small_binding() {
    let Some(base) = airllm_gpu::testing::gpu_or_skip() else { return };
    let ctx = base.with_caps(|c| c.max_binding = 64 * 1024);
    assert_eq!(ctx.caps().max_binding, 64 * 1024);
    let mut rng = rng("row_split_with_small_binding");
    for format in WeightFormat::ALL {
        // about 2.5 bindings of weights, odd row count and row length
        let k = 253u32;
        let row = format.row_bytes(u64::from(k));
        let n = ((160 * 1024) / row) as u32 | 1;
        let splits = matmul::row_splits(ctx.caps(), format, n, k).expect("splits");
        assert!(splits.len() >= 3, "{format}: {splits:?}");
        assert_eq!(splits.iter().map(|s| s.1).sum::<u32>(), n);
        // (y must fit one binding too: t x n f32 under 64 KiB)
        for t in [1u32, 5, 12] {
            let shape = MatmulShape { t, n, k, x_stride: k, y_stride: n + 2, y_off: 2, accumulate: false };
            let case = Case { format, shape, bias: true, w_offset: if format.is_dense() { 0 } else { 34 } };
            run_case(&ctx, &mut rng, &case, &format!("split {format} t={t} n={n} ({} splits)", splits.len()));
        }
    }
}

#[test]
fn rejects_bad_arguments() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let w = ctx.create_storage_buffer("w", 4096);
    let x = ctx.create_storage_buffer("x", 4096);
    let y = ctx.create_storage_buffer("y", 4096);
    let good = Matmul {
        shape: MatmulShape::new(1, 4, 64),
        format: WeightFormat::F32,
        weight: BufView::whole(&w),
        x: BufView::whole(&x),
        y: BufView::whole(&y),
        bias: None,
    };
    let mut rec = ctx.recorder("bad");
    assert!(matmul::launch(&mut rec, &good).is_ok());
    let too_big = Matmul { shape: MatmulShape::new(1, 64, 64), ..good };
    let e = matmul::launch(&mut rec, &too_big).unwrap_err().to_string();
    assert!(e.contains("weight"), "{e}");
    let same = Matmul { y: BufView::whole(&x), ..good };
    assert!(matmul::launch(&mut rec, &same).is_err());
    let misaligned = Matmul { x: BufView::new(&x, 4, 1024), ..good };
    let e = matmul::launch(&mut rec, &misaligned).unwrap_err().to_string();
    assert!(e.contains("multiple"), "{e}");
    let q = Matmul { format: WeightFormat::Quant(airllm_quant::Codec::Q4_0), weight: BufView::new(&w, 1, 100), ..good };
    assert!(matmul::launch(&mut rec, &q).is_err());
    rec.submit().expect("the valid launch still submits");
}
