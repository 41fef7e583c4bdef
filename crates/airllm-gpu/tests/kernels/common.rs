//! Shared helpers of the kernel tests.

use std::sync::Arc;

use airllm_gpu::testing::{gpu_or_skip, test_seed};
use airllm_gpu::{GpuContext, read_buffer_f32};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The shared context, plus a copy with subgroups off when the adapter has
/// them (so both reduction paths run).
pub fn contexts() -> Vec<(String, Arc<GpuContext>)> {
    let Some(ctx) = gpu_or_skip() else { return Vec::new() };
    let mut v = Vec::new();
    if ctx.caps().subgroup {
        v.push(("subgroup".to_string(), ctx.clone()));
    }
    v.push(("no-subgroup".to_string(), Arc::new(ctx.with_caps(|c| c.subgroup = false))));
    v
}

pub fn rng(test: &str) -> StdRng {
    StdRng::seed_from_u64(test_seed(test))
}

pub fn randn(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect()
}

pub fn read(ctx: &GpuContext, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    read_buffer_f32(ctx, b, 0, n).expect("readback")
}

/// Asserts |got - want| <= tol * scale[i] (scale: the magnitude the error is
/// relative to, e.g. sum |x_k w_k| for a dot product), naming the worst index.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], scale: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0f32, 0usize);
    for i in 0..got.len() {
        let s = scale[i].max(1e-6);
        let e = (got[i] - want[i]).abs() / s;
        if e > worst.0 || e.is_nan() {
            worst = (e, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= tol,
        "{what}: relative error {:.3e} > {tol:.1e} at index {i}: got {}, want {} (scale {})",
        worst.0,
        got[i],
        want[i],
        scale[i]
    );
    eprintln!("{what}: max relative error {:.2e} (bound {tol:.0e})", worst.0);
}
