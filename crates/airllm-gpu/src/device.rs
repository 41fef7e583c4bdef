//! Device setup: adapter choice ([`GpuOptions`]), the limits and features the
//! kernels use, and the [`GpuContext`] that holds device, queue, [`Caps`] and
//! the shared pools.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::caps::{Caps, backend_rank, new_instance, type_rank};
use crate::error::{GpuError, Result};
use crate::host_staging::StagingKind;
use crate::pipeline::PipelineCache;
use crate::pool::UniformPool;
use crate::timing::Profiler;

/// A graphics API wgpu can drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GpuBackend {
    /// Vulkan (Linux, Windows, Android; lavapipe with no GPU).
    Vulkan,
    /// Metal (macOS, iOS).
    Metal,
    /// Direct3D 12 (Windows).
    Dx12,
    /// OpenGL / GLES (last resort: no subgroups, small limits).
    Gl,
}

impl GpuBackend {
    fn backends(self) -> wgpu::Backends {
        match self {
            GpuBackend::Vulkan => wgpu::Backends::VULKAN,
            GpuBackend::Metal => wgpu::Backends::METAL,
            GpuBackend::Dx12 => wgpu::Backends::DX12,
            GpuBackend::Gl => wgpu::Backends::GL,
        }
    }

    /// Lower-case name, as accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            GpuBackend::Vulkan => "vulkan",
            GpuBackend::Metal => "metal",
            GpuBackend::Dx12 => "dx12",
            GpuBackend::Gl => "gl",
        }
    }
}

impl FromStr for GpuBackend {
    type Err = GpuError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "vulkan" | "vk" => Ok(GpuBackend::Vulkan),
            "metal" | "mtl" => Ok(GpuBackend::Metal),
            "dx12" | "d3d12" => Ok(GpuBackend::Dx12),
            "gl" | "gles" | "opengl" => Ok(GpuBackend::Gl),
            _ => Err(GpuError::UnknownBackend(s.to_string())),
        }
    }
}

impl fmt::Display for GpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to pick and configure the device. The CLI fills it from
/// `AIRLLM_ADAPTER` / `AIRLLM_BACKEND`; this crate reads no environment.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Case-insensitive substring of the adapter name; `None` picks the
    /// highest-performance adapter (discrete > integrated > virtual > CPU).
    pub adapter: Option<String>,
    /// Only consider this backend.
    pub backend: Option<GpuBackend>,
    /// Do not use subgroup operations even when offered (tests the
    /// shared-memory reduction path).
    pub force_no_subgroup: bool,
    /// Do not enable SHADER_F16 even when offered.
    pub force_no_f16: bool,
    /// Do not enable cooperative matrices even when offered (the dense
    /// prefill GEMM then uses `shaders/gemm.wgsl`).
    pub force_no_coop_matrix: bool,
    /// Cap the largest storage binding (bytes), e.g. to test row splitting.
    pub max_binding_override: Option<u64>,
    /// Cap the largest buffer the engine plans with (bytes), e.g. to test the
    /// error for units that do not fit one buffer.
    pub max_buffer_override: Option<u64>,
    /// The memory behind staging buffers ([`Staging`](crate::Staging)):
    /// `Mapped` (default, portable), `HostImported` / `HostVisible` (host RAM
    /// through Vulkan; an error where the device cannot give it), or `Auto`.
    /// `HostImported` and `Auto` on a discrete Vulkan GPU open the device
    /// through wgpu-hal with `VK_EXT_external_memory_host` added.
    pub staging: crate::StagingKind,
}

/// The features the kernels use when the adapter has them.
fn wanted_features(opts: &GpuOptions) -> wgpu::Features {
    let mut f = wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
    if !opts.force_no_subgroup {
        f |= wgpu::Features::SUBGROUP;
    }
    if !opts.force_no_f16 {
        f |= wgpu::Features::SHADER_F16;
    }
    f
}

/// The staging kind a device on `adapter` gets for `wanted`, and whether the
/// device must be opened with `VK_EXT_external_memory_host`.
fn resolve_staging(adapter: &wgpu::Adapter, wanted: StagingKind) -> Result<(StagingKind, bool)> {
    let info = adapter.get_info();
    let vulkan = info.backend == wgpu::Backend::Vulkan;
    let import = crate::host_staging::adapter_supports_host_import(adapter);
    let refuse = |reason: String| GpuError::HostStaging { op: "choosing the staging memory", reason };
    match wanted {
        StagingKind::Mapped => Ok((StagingKind::Mapped, false)),
        StagingKind::HostImported if import => Ok((StagingKind::HostImported, true)),
        StagingKind::HostImported => Err(refuse(format!(
            "{:?} ({:?}) does not offer VK_EXT_external_memory_host on Vulkan 1.1+",
            info.name, info.backend
        ))),
        StagingKind::HostVisible if vulkan => Ok((StagingKind::HostVisible, false)),
        StagingKind::HostVisible => {
            Err(refuse(format!("host-visible staging needs Vulkan; {:?} runs on {:?}", info.name, info.backend)))
        }
        // Only a discrete card keeps mapped staging behind the BAR; elsewhere
        // mapped memory already is host RAM.
        StagingKind::Auto if import && info.device_type == wgpu::DeviceType::DiscreteGpu => {
            Ok((StagingKind::HostImported, true))
        }
        StagingKind::Auto => Ok((StagingKind::Mapped, false)),
    }
}

fn backends_for(opts: &GpuOptions) -> wgpu::Backends {
    opts.backend.map(GpuBackend::backends).unwrap_or(wgpu::Backends::all())
}

/// Device, queue and everything the kernels share: caps, pipeline cache,
/// uniform pool, profiler. Cheap to share behind an `Arc`; all methods take
/// `&self`.
pub struct GpuContext {
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    caps: Caps,
    pub(crate) pipelines: PipelineCache,
    pub(crate) uniforms: UniformPool,
    pub(crate) profiler: Profiler,
    pub(crate) bind_groups: crate::bind_cache::BindGroupCache,
    /// Bound where a kernel's optional input (e.g. bias) is absent.
    pub(crate) dummy: wgpu::Buffer,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuContext").field("caps", &self.caps).finish_non_exhaustive()
    }
}

impl GpuContext {
    /// Picks an adapter and opens a device (blocking).
    pub fn new(opts: &GpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(opts))
    }

    /// Async form of [`GpuContext::new`].
    pub async fn new_async(opts: &GpuOptions) -> Result<Self> {
        let backends = backends_for(opts);
        let instance = new_instance(backends);
        let adapters = instance.enumerate_adapters(backends).await;
        let wanted = opts.adapter.as_ref().map(|s| s.to_lowercase());
        let found: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        let adapter = adapters
            .into_iter()
            .filter(|a| wanted.as_ref().is_none_or(|w| a.get_info().name.to_lowercase().contains(w)))
            .min_by_key(|a| {
                let i = a.get_info();
                (type_rank(i.device_type), backend_rank(i.backend))
            })
            .ok_or_else(|| GpuError::NoAdapter {
                wanted: match (&opts.adapter, opts.backend) {
                    (Some(a), Some(b)) => format!("name {a:?} on backend {b}"),
                    (Some(a), None) => format!("name {a:?}"),
                    (None, Some(b)) => format!("backend {b}"),
                    (None, None) => "any adapter".to_string(),
                },
                found: if found.is_empty() { "none".to_string() } else { found.join(", ") },
            })?;
        Self::from_adapter(adapter, opts).await
    }

    /// Opens a device on a chosen adapter with the limits raised to what it
    /// allows and the helpful features it has.
    pub async fn from_adapter(adapter: wgpu::Adapter, opts: &GpuOptions) -> Result<Self> {
        let info = adapter.get_info();
        let mut features = adapter.features() & wanted_features(opts);
        // Cooperative matrices only when the adapter has the one shape the
        // coop GEMM uses (8x8x8 f32): requesting the feature otherwise would
        // enable VK_KHR_cooperative_matrix for nothing.
        if !opts.force_no_coop_matrix && crate::caps::adapter_has_coop_f32_8x8(&adapter) {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        // Ask for everything the adapter offers: the largest storage
        // bindings and buffers decide how often big tensors must be split.
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("airllm"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (staging, host_import) = resolve_staging(&adapter, opts.staging)?;
        let (device, queue) = if host_import {
            crate::host_staging::request_device_with_host_import(&adapter, &desc)?
        } else {
            adapter
                .request_device(&desc)
                .await
                .map_err(|source| GpuError::RequestDevice { adapter: info.name.clone(), source })?
        };
        let host_import_align =
            if host_import { crate::host_staging::import_alignment(&adapter).unwrap_or(4096) } else { 0 };
        let limits = device.limits();
        let features = device.features();
        let mut max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        if let Some(cap) = opts.max_binding_override {
            max_binding = max_binding.min(cap.max(1024));
        }
        let caps = Caps {
            adapter_name: info.name.clone(),
            backend: info.backend,
            device_type: info.device_type,
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroup: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min: info.subgroup_min_size,
            subgroup_max: info.subgroup_max_size,
            coop_matrix: features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_binding,
            max_buffer: opts.max_buffer_override.map_or(limits.max_buffer_size, |c| c.min(limits.max_buffer_size)),
            storage_align: u64::from(limits.min_storage_buffer_offset_alignment),
            uniform_align: u64::from(limits.min_uniform_buffer_offset_alignment),
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            vram_bytes: crate::memory::device_memory_bytes(&adapter),
            staging,
            host_import,
            host_import_align,
        };
        tracing::info!(
            adapter = %caps.adapter_name,
            backend = ?caps.backend,
            subgroup = caps.subgroup,
            coop_matrix = caps.coop_matrix,
            f16 = caps.f16,
            max_binding = caps.max_binding,
            staging = %caps.staging,
            "GPU device ready"
        );
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("airllm.dummy"),
            size: 256,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Ok(GpuContext {
            adapter,
            device,
            queue,
            caps,
            pipelines: PipelineCache::default(),
            uniforms: UniformPool::default(),
            profiler: Profiler::default(),
            bind_groups: Default::default(),
            dummy,
        })
    }

    /// The same device and queue with different caps (e.g. subgroups off, a
    /// smaller maximum binding), and its own pipeline cache. Caps can only be
    /// narrowed: a feature the device lacks stays off.
    pub fn with_caps(&self, edit: impl FnOnce(&mut Caps)) -> GpuContext {
        let mut caps = self.caps.clone();
        edit(&mut caps);
        caps.subgroup &= self.caps.subgroup;
        caps.f16 &= self.caps.f16;
        caps.timestamps &= self.caps.timestamps;
        caps.coop_matrix &= self.caps.coop_matrix;
        caps.max_binding = caps.max_binding.clamp(1024, self.caps.max_binding);
        caps.host_import &= self.caps.host_import;
        caps.host_import_align = self.caps.host_import_align;
        caps.staging = match caps.staging {
            StagingKind::HostImported if !caps.host_import => self.caps.staging,
            StagingKind::HostVisible if caps.backend != wgpu::Backend::Vulkan => self.caps.staging,
            StagingKind::Auto => self.caps.staging,
            k => k,
        };
        GpuContext {
            adapter: self.adapter.clone(),
            device: self.device.clone(),
            queue: self.queue.clone(),
            caps,
            pipelines: PipelineCache::default(),
            uniforms: UniformPool::default(),
            profiler: Profiler::default(),
            bind_groups: Default::default(),
            dummy: self.dummy.clone(),
        }
    }

    /// Time spent compiling pipelines on this context so far.
    pub fn pipeline_compile_time(&self) -> std::time::Duration {
        self.pipelines.compile_time()
    }

    /// The capabilities in use.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The wgpu adapter.
    pub fn adapter(&self) -> &wgpu::Adapter {
        &self.adapter
    }

    /// Blocks until the given submission (or, with `None`, everything
    /// submitted so far) has finished on the GPU.
    pub fn wait(&self, submission: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: submission, timeout: None })
            .map_err(GpuError::Poll)?;
        Ok(())
    }

    /// A STORAGE buffer (plus COPY_SRC and COPY_DST) of at least `size`
    /// bytes, rounded up to 16.
    pub fn create_storage_buffer(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(16).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data` (padded to 16 bytes). For small data:
    /// activations, tokens, tests. Weights go through
    /// the [`Ring`](crate::Ring) instead.
    pub fn create_buffer_init(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let buffer = self.create_storage_buffer(label, data.len() as u64);
        // write_buffer is fine for small data (it measured 3.8 GB/s, far
        // below mapped staging, which is why weights never take this path).
        if data.len().is_multiple_of(4) {
            self.queue.write_buffer(&buffer, 0, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(data.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(&buffer, 0, &padded);
        }
        buffer
    }

    /// [`create_buffer_init`](Self::create_buffer_init) for f32 values.
    pub fn upload_f32(&self, label: &str, data: &[f32]) -> wgpu::Buffer {
        self.create_buffer_init(label, bytemuck::cast_slice(data))
    }

    /// [`create_buffer_init`](Self::create_buffer_init) for u32 values.
    pub fn upload_u32(&self, label: &str, data: &[u32]) -> wgpu::Buffer {
        self.create_buffer_init(label, bytemuck::cast_slice(data))
    }

    /// Starts recording kernels (see [`Recorder`](crate::Recorder)).
    pub fn recorder(&self, label: &str) -> crate::Recorder<'_> {
        crate::Recorder::new(self, label)
    }
}

/// A shared context for tests and benches: created once per process with
/// [`test_options`](crate::testing::test_options), `None` (with the reason
/// printed) when no adapter exists. When the environment asked for a backend
/// or adapter that cannot be opened, it panics instead: a suite asked to run
/// on GL must not pass by running nothing.
pub(crate) fn shared_context() -> Option<Arc<GpuContext>> {
    use std::sync::OnceLock;
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| {
        let (opts, chosen) = match crate::testing::test_options() {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        };
        match GpuContext::new(&opts) {
            Ok(ctx) => {
                if chosen {
                    eprintln!("GPU tests on {} ({:?})", ctx.caps().adapter_name, ctx.caps().backend);
                }
                Some(Arc::new(ctx))
            }
            Err(e) if chosen => panic!("the adapter chosen by AIRLLM_BACKEND / AIRLLM_ADAPTER cannot be opened: {e}"),
            Err(e) => {
                eprintln!("skipping GPU work: {e}");
                None
            }
        }
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse() {
        for b in [GpuBackend::Vulkan, GpuBackend::Metal, GpuBackend::Dx12, GpuBackend::Gl] {
            assert_eq!(b.name().parse::<GpuBackend>().ok(), Some(b));
        }
        assert!("cuda".parse::<GpuBackend>().is_err());
    }
}
