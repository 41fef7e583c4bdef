use airllm_gpu::kernels::matmul::{self, Matmul, MatmulShape};
use airllm_gpu::{BufView, Ring, WeightFormat, list_adapters, read_buffer_bytes};

use crate::common::*;

#[test]
fn adapters_are_listed() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let list = list_adapters();
    assert!(!list.is_empty());
    for a in &list {
        eprintln!("{a}");
    }
    eprintln!("in use: {:?}", ctx.caps());
}

/// The ring streams shards from files into slots, in schedule order, pass
/// after pass, re-lending staging buffers as their copies complete.
#[test]
fn ring_streams_shards_into_slots() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let sizes = [1000usize, 3000, 20];
    let mut shards = Vec::new();
    let mut contents = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..*n).map(|j| (j as u8).wrapping_mul(7).wrapping_add(i as u8)).collect();
        let path = dir.path().join(format!("s{i}"));
        std::fs::write(&path, &data).expect("write shard");
        shards.push(airllm_io::ShardSpec::new(path, *n as u64));
        contents.push(data);
    }
    let schedule = vec![2, 0, 1];
    let mut ring =
        Ring::new(&ctx, shards, schedule.clone(), 2, 3000, 2, airllm_io::ReaderOptions::default()).expect("ring");
    for pass in 0..3 {
        assert!(ring.at_pass_start());
        for &s in &schedule {
            let mut rec = ctx.recorder("unit");
            let slot = ring.acquire(&ctx, rec.encoder(), s).expect("acquire").clone();
            rec.submit().expect("submit");
            ring.submitted();
            let got = read_buffer_bytes(&ctx, &slot, 0, sizes[s] as u64).expect("read");
            assert_eq!(got, contents[s], "pass {pass}, shard {s}");
        }
    }
    // Asking for the wrong shard is an error, not another unit's weights.
    let mut rec = ctx.recorder("unit");
    let e = ring.acquire(&ctx, rec.encoder(), 1).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("expected shard 1"), "{e}");
    let (slots, staging) = ring.bytes();
    assert_eq!((slots, staging), (2 * 3008, 2 * 3008));
    assert_eq!(ring.stats().units, 9);
}

#[test]
fn profiling_collects_kernel_times() {
    let Some(base) = airllm_gpu::testing::gpu_or_skip() else { return };
    let ctx = base.with_caps(|_| {});
    if !ctx.set_profiling(true) {
        eprintln!("no TIMESTAMP_QUERY: skipping");
        return;
    }
    let (n, k) = (64u32, 256u32);
    let w = ctx.create_storage_buffer("w", u64::from(n * k) * 2);
    let x = ctx.create_storage_buffer("x", u64::from(k) * 4 * 16);
    let y = ctx.create_storage_buffer("y", u64::from(n) * 4 * 16);
    for t in [1u32, 16] {
        let mut rec = ctx.recorder("profiled");
        for _ in 0..3 {
            matmul::launch(
                &mut rec,
                &Matmul {
                    shape: MatmulShape::new(t, n, k),
                    format: WeightFormat::F16,
                    weight: BufView::whole(&w),
                    x: BufView::whole(&x),
                    y: BufView::whole(&y),
                    bias: None,
                },
            )
            .expect("launch");
        }
        rec.submit().expect("submit");
    }
    let profile = ctx.take_profile();
    eprintln!("{profile}");
    let labels: Vec<&str> = profile.kernels.iter().map(|k| k.label.as_str()).collect();
    assert!(labels.contains(&"gemv/f16") && labels.contains(&"gemm/f16"), "{labels:?}");
    assert!(profile.kernels.iter().all(|k| k.count == 3));
    assert!(ctx.take_profile().kernels.is_empty(), "take_profile resets");
}

#[test]
fn many_dispatches_in_one_submission() {
    // more dispatches than one uniform chunk holds: parameters must not be overwritten
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let n = 600u32;
    let x = ctx.upload_f32("x", &vec![0.0; n as usize]);
    let mut rec = ctx.recorder("many");
    for i in 0..n {
        let m = airllm_gpu::kernels::elementwise::Mat { view: BufView::whole(&x), stride: n, off: i };
        airllm_gpu::kernels::elementwise::scale(&mut rec, 1, 1, m, 0.0).expect("scale");
        let b = ctx.upload_f32("b", &[i as f32]);
        airllm_gpu::kernels::elementwise::bias_add(&mut rec, 1, 1, m, BufView::whole(&b)).expect("bias");
    }
    rec.submit().expect("submit");
    let got = read(&ctx, &x, n as usize);
    let want: Vec<f32> = (0..n).map(|i| i as f32).collect();
    assert_eq!(got, want);
}

/// More workgroups than one grid dimension allows (65535): the launchers
/// fold the grid into two dimensions.
#[test]
fn large_grids_wrap_to_2d() {
    use airllm_gpu::kernels::rmsnorm::{self, RmsNorm, RowView};
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let max = ctx.caps().max_workgroups_per_dim;
    // rmsnorm: one workgroup per row
    let rows = max + 1001;
    let x: Vec<f32> = (0..rows).map(|i| (i % 7) as f32 - 3.5).collect();
    let gx = ctx.upload_f32("x", &x);
    let gy = ctx.create_storage_buffer("y", u64::from(rows) * 4);
    let gw = ctx.upload_f32("w", &[2.0]);
    // gemv: 4 rows per workgroup
    let (n, k) = (4 * max + 13, 4u32);
    let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32).collect();
    let gwm = ctx.upload_f32("wm", &w);
    let xv = ctx.upload_f32("xv", &[1.0, 2.0, 3.0, 4.0]);
    let gym = ctx.create_storage_buffer("ym", u64::from(n) * 4);
    let mut rec = ctx.recorder("grid");
    rmsnorm::launch(
        &mut rec,
        &RmsNorm {
            rows,
            x_rows: RowView::contiguous(1),
            x: BufView::whole(&gx),
            y: Some((BufView::whole(&gy), RowView::contiguous(1))),
            weight: BufView::whole(&gw),
            weight_format: WeightFormat::F32,
            eps: 0.0,
            gemma: false,
        },
    )
    .expect("rmsnorm");
    matmul::launch(
        &mut rec,
        &Matmul {
            shape: MatmulShape::new(1, n, k),
            format: WeightFormat::F32,
            weight: BufView::whole(&gwm),
            x: BufView::whole(&xv),
            y: BufView::whole(&gym),
            bias: None,
        },
    )
    .expect("gemv");
    rec.submit().expect("submit");
    let got = read(&ctx, &gy, rows as usize);
    for (i, (g, xi)) in got.iter().zip(&x).enumerate() {
        assert!((g - 2.0 * xi.signum()).abs() < 1e-5, "row {i}: {g}");
    }
    let got = read(&ctx, &gym, n as usize);
    for (r, g) in got.iter().enumerate() {
        let want: f32 = (0..k as usize).map(|j| w[r * k as usize + j] * (j + 1) as f32).sum();
        assert_eq!(*g, want, "gemv row {r}");
    }
}

#[test]
fn recordings_submit_together() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let x = ctx.upload_f32("x", &[1.0; 8]);
    let mut a = ctx.recorder("a");
    airllm_gpu::kernels::elementwise::scale(
        &mut a,
        1,
        8,
        airllm_gpu::kernels::elementwise::Mat::contiguous(BufView::whole(&x), 8),
        3.0,
    )
    .expect("a");
    let mut b = ctx.recorder("b");
    airllm_gpu::kernels::elementwise::scale(
        &mut b,
        1,
        8,
        airllm_gpu::kernels::elementwise::Mat::contiguous(BufView::whole(&x), 8),
        5.0,
    )
    .expect("b");
    let idx = ctx.submit_recorded(vec![a.finish(), b.finish()]).expect("submit");
    ctx.wait(Some(idx)).expect("wait");
    assert_eq!(read(&ctx, &x, 8), vec![15.0; 8]);
}

#[test]
fn non_storage_buffers_are_rejected() {
    let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return };
    let plain = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("plain"),
        size: 64,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut rec = ctx.recorder("bad");
    let e = airllm_gpu::kernels::elementwise::scale(
        &mut rec,
        1,
        4,
        airllm_gpu::kernels::elementwise::Mat::contiguous(BufView::whole(&plain), 4),
        2.0,
    )
    .expect_err("must fail");
    assert!(e.to_string().contains("STORAGE"), "{e}");
}

#[test]
fn wgsl_dump_writes_every_variant() {
    let dir = std::env::temp_dir().join(format!("airllm-wgsl-{}", std::process::id()));
    let n = airllm_gpu::dump_wgsl(&dir).expect("dump");
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), n);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_adapter_names_the_choices() {
    if airllm_gpu::testing::gpu_or_skip().is_none() {
        return;
    }
    let opts = airllm_gpu::GpuOptions { adapter: Some("no-such-gpu-xyz".into()), ..Default::default() };
    let e = airllm_gpu::GpuContext::new(&opts).expect_err("no such adapter");
    let msg = e.to_string();
    assert!(msg.contains("no-such-gpu-xyz") && msg.contains("AIRLLM_ADAPTER"), "{msg}");
    assert!(matches!(e, airllm_gpu::GpuError::NoAdapter { .. }));
}
