//! Helpers for GPU tests and benches (also used by the facade's tests).
//!
//! The shared test context runs on the best adapter, or on the one the
//! environment names, as the CLI reads it: `AIRLLM_BACKEND=gl cargo test
//! -p airllm-gpu --test kernels` runs the kernel suite on wgpu's GL backend,
//! `AIRLLM_ADAPTER=llvmpipe` picks by name. (The library proper reads no
//! environment; this module serves tests and benches only.) On GL add
//! `-- --test-threads 1`: wgpu's GL backend serializes every call on one
//! context and panics when a thread waits more than 6 s for it, which
//! parallel tests on a software GL driver (llvmpipe) reach.

use std::sync::Arc;

use crate::device::{GpuBackend, GpuContext, GpuOptions, shared_context};
use crate::error::Result;

/// The options of the shared test context: [`GpuOptions::default`] with
/// `AIRLLM_BACKEND` (vulkan, metal, dx12, gl), `AIRLLM_ADAPTER` (name
/// substring) and `AIRLLM_STAGING` (a [`StagingKind`](crate::StagingKind):
/// `host-imported` runs the suite on a device opened through wgpu-hal with
/// the host-memory extension) applied when set, and whether any was.
pub fn test_options() -> Result<(GpuOptions, bool)> {
    let var = |name: &str| std::env::var(name).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let backend = var("AIRLLM_BACKEND").map(|s| s.parse::<GpuBackend>()).transpose()?;
    let adapter = var("AIRLLM_ADAPTER");
    let staging = var("AIRLLM_STAGING").map(|s| s.parse::<crate::StagingKind>()).transpose()?.unwrap_or_default();
    let chosen = backend.is_some() || adapter.is_some() || staging != crate::StagingKind::Mapped;
    Ok((GpuOptions { backend, adapter, staging, ..Default::default() }, chosen))
}

/// The process-wide shared GPU context, or `None` with the reason printed
/// when no adapter exists (tests then pass vacuously; CI always has
/// lavapipe). Created once, shared by every test thread.
pub fn gpu_or_skip() -> Option<Arc<GpuContext>> {
    let ctx = shared_context();
    if ctx.is_none() {
        eprintln!("no GPU adapter: skipping (install mesa-vulkan-drivers for lavapipe)");
    }
    ctx
}

/// A fresh random seed per run (from the clock), or `AIRLLM_TEST_SEED` when
/// set; printed with the test name so a failure can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("AIRLLM_TEST_SEED").ok().and_then(|s| s.trim().parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
    });
    eprintln!("{test}: seed {seed} (replay with AIRLLM_TEST_SEED={seed})");
    seed
}

/// Largest relative error `|a - b| / max(|b|, floor)` with its index; `floor`
/// keeps values near zero from dominating.
pub fn max_rel_err(got: &[f32], want: &[f32], floor: f32) -> (f32, usize) {
    let mut worst = (0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = if g.is_nan() != w.is_nan() { f32::INFINITY } else { (g - w).abs() / w.abs().max(floor) };
        if e > worst.0 || e.is_nan() {
            worst = (e, i);
        }
    }
    worst
}
