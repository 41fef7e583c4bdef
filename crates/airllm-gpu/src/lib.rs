//! GPU side of airllm-rs: wgpu device setup, buffer pools, a pipeline cache
//! and the WGSL kernels of a transformer layer, each with a CPU reference.
//!
//! Runs on anything wgpu drives (Vulkan, Metal, DX12; Mesa's lavapipe with
//! no GPU). [`GpuContext`] picks the adapter and records its [`Caps`]
//! (subgroups, f16, timestamps, largest binding) once; every kernel variant is
//! a typed [`PipelineKey`] derived from them, compiled once by the
//! [`PipelineCache`]. Launchers in [`kernels`] record into a [`Recorder`]
//! (a command encoder plus pooled uniform parameters):
//!
//! - [`kernels::matmul`]: `y (+)= x · Wᵀ (+ b)` for f32, f16, bf16, q8_0,
//!   q4_0, q4_1 and nf4 weights (dequantized in the kernel), GEMV for 1-8
//!   tokens and tiled GEMM for prefill, row-split when W exceeds a binding;
//! - [`kernels::rmsnorm`], [`kernels::rope`], [`kernels::kv_append`],
//!   [`kernels::attention`], [`kernels::act_mul`], [`kernels::elementwise`],
//!   [`kernels::moe`].
//!
//! Streamed weights reach VRAM through the [`Ring`] (an `airllm-io` reader
//! fills mapped staging buffers, then `copy_buffer_to_buffer` into a ring
//! slot), never `write_buffer`; [`Staging`] does the same over any
//! [`StagingKind`], including host RAM imported into Vulkan ([`host_staging`]).
//! [`read_buffer_f32`] reads results back; [`timing`] gives per-kernel GPU
//! times; [`translate`] proves every kernel variant translates for Vulkan,
//! Metal, DX12 and GL.
//!
//! ```
//! use airllm_gpu::kernels::matmul::{self, Matmul, MatmulShape};
//! use airllm_gpu::{BufView, WeightFormat, read_buffer_f32};
//!
//! # fn main() -> Result<(), airllm_gpu::GpuError> {
//! // the shared test context; `GpuContext::new(&GpuOptions::default())` in an application
//! let Some(ctx) = airllm_gpu::testing::gpu_or_skip() else { return Ok(()) };
//! let (n, k) = (4, 64);
//! let w = ctx.upload_f32("w", &vec![0.5; n * k]); // [n, k], like a Linear weight
//! let x = ctx.upload_f32("x", &vec![1.0; k]);
//! let y = ctx.create_storage_buffer("y", (n * 4) as u64);
//! let mut rec = ctx.recorder("demo");
//! matmul::launch(&mut rec, &Matmul {
//!     shape: MatmulShape::new(1, n as u32, k as u32),
//!     format: WeightFormat::F32,
//!     weight: BufView::whole(&w),
//!     x: BufView::whole(&x),
//!     y: BufView::whole(&y),
//!     bias: None,
//! })?;
//! rec.submit()?;
//! assert_eq!(read_buffer_f32(&ctx, &y, 0, n)?, vec![32.0; n]);
//! # Ok(())
//! # }
//! ```
//!
//! Non-goals: no autograd, no general tensor library or graph (the facade
//! owns model graphs, scheduling and the KV cache policy), no CPU execution
//! beyond the reference functions (which favour clarity over speed), no
//! reading of environment variables (the CLI maps `AIRLLM_ADAPTER` /
//! `AIRLLM_BACKEND` onto [`GpuOptions`]).

pub use wgpu;

pub mod bind_cache;
pub mod caps;
pub mod device;
pub mod error;
pub mod host_staging;
pub mod kernels;
pub mod memory;
pub mod pipeline;
pub mod pool;
pub mod readback;
pub mod recorder;
pub mod ring;
pub mod shaders;
pub mod testing;
pub mod timing;
pub mod translate;
pub mod upload;

pub use bind_cache::BindCacheStats;
pub use caps::{AdapterReport, Caps, list_adapters};
pub use device::{GpuBackend, GpuContext, GpuOptions};
pub use error::GpuError;
pub use host_staging::{MappedPtr, Staging, StagingKind};
pub use kernels::WeightFormat;
pub use pipeline::{Activation, GemmTile, PipelineCache, PipelineKey};
pub use pool::{BufView, KvCache, KvLayout};
pub use readback::{LogitsReadback, PendingRead, read_buffer_bytes, read_buffer_f32, read_buffer_u32};
pub use recorder::{Recorded, Recorder};
pub use ring::{Ring, RingStats};
pub use shaders::{dump_wgsl, validate_all_shaders};
pub use timing::{GpuProfile, KernelTime};
pub use upload::UploadBelt;

#[cfg(test)]
mod tests {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn shareable_across_threads() {
        send_sync::<crate::GpuContext>();
        send::<crate::Recorder<'static>>();
        send::<crate::Ring>();
    }
}
