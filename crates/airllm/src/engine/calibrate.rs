//! A short measurement of the two bandwidths the CPU-or-stream choice rests
//! on, taken at first start on a machine with a real GPU and cached per
//! (adapter, SIMD level, threads) in the user cache directory:
//! - the CPU executor's matmul over weights in RAM (one token, q4_0, 19 MB);
//! - host memory to VRAM the way the ring moves it (fill a mapped staging
//!   buffer, copy it into a storage buffer), 64 MB.
//!
//! About a tenth of a second on a real machine; never run on CPU-only or
//! software adapters, where every unit runs on the CPU anyway.

use std::path::PathBuf;
use std::time::Instant;

use airllm_gpu::{GpuContext, wgpu};
use airllm_quant::Codec;
use airllm_quant::dot::{Kernels, Matmul, MatmulShape, Scratch, WeightFormat};
use airllm_quant::pool::ThreadPool;

use crate::planner::CostModel;

fn cache_file() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("airllm").join("calibration.json"))
}

fn key(ctx: &GpuContext, pool: &ThreadPool) -> String {
    format!("{}|{}|{}t", ctx.caps().adapter_name, Kernels::best().level().name(), pool.threads())
}

/// The cached or freshly measured bandwidths.
pub fn cost_model(ctx: &GpuContext, pool: &ThreadPool) -> CostModel {
    let k = key(ctx, pool);
    let path = cache_file();
    let mut all: serde_json::Map<String, serde_json::Value> = path
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(c) = all.get(&k).and_then(|v| serde_json::from_value::<CostModel>(v.clone()).ok()) {
        return c;
    }
    let c = CostModel { cpu_gbps: cpu_gbps(pool), stream_gbps: stream_gbps(ctx).unwrap_or(1.0) };
    tracing::info!(cpu_gbps = c.cpu_gbps, stream_gbps = c.stream_gbps, "calibrated placement bandwidths");
    if let (Some(p), Ok(v)) = (path, serde_json::to_value(c)) {
        all.insert(k, v);
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Best effort: a read-only cache only means measuring again next time.
        let _ = std::fs::write(&p, serde_json::to_vec_pretty(&all).unwrap_or_default());
    }
    c
}

/// CPU matmul GB/s over a q4_0 matrix (best of 3).
pub fn cpu_gbps(pool: &ThreadPool) -> f64 {
    let (n, k) = (8192usize, 4096usize);
    let block = Codec::Q4_0.row_bytes(k);
    // Random-ish codes; the values do not matter for the timing.
    let weight: Vec<u8> = (0..n * block).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x7f).collect();
    let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.01).sin()).collect();
    let mut y = vec![0f32; n];
    let mut scratch = Scratch::new();
    let m = Matmul {
        shape: MatmulShape::new(1, n, k),
        format: WeightFormat::Quant(Codec::Q4_0),
        weight: &weight,
        x: &x,
        bias: None,
        precision: airllm_quant::dot::Precision::Exact,
    };
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        if Kernels::best().matmul(&m, &mut y, &mut scratch, pool).is_err() {
            return 1.0;
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    weight.len() as f64 / best.max(1e-9) / 1e9
}

/// Host-to-VRAM GB/s through mapped staging (best of 3).
pub fn stream_gbps(ctx: &GpuContext) -> Option<f64> {
    let size = 64u64 << 20;
    let dst = ctx.create_storage_buffer("calibrate.dst", size);
    let src = vec![7u8; size as usize];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("calibrate.staging"),
            size,
            usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        let t = Instant::now();
        {
            let mut view = staging.slice(..).get_mapped_range_mut().ok()?;
            view.slice(..).copy_from_slice(&src);
        }
        staging.unmap();
        let mut enc = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("calibrate") });
        enc.copy_buffer_to_buffer(&staging, 0, &dst, 0, size);
        let idx = ctx.queue().submit([enc.finish()]);
        ctx.wait(Some(idx)).ok()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Some(size as f64 / best.max(1e-9) / 1e9)
}
