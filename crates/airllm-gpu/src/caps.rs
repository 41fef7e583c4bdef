//! [`Caps`]: what the device can do, measured once at setup and read by
//! every [`PipelineKey`](crate::PipelineKey) and launcher; and
//! [`list_adapters`] / [`AdapterReport`] for `airllm info`.

use std::fmt;

/// What the device can do, measured once at setup. Every pipeline key and
/// launcher decision reads it.
#[derive(Clone, Debug)]
pub struct Caps {
    /// Adapter name.
    pub adapter_name: String,
    /// Backend in use.
    pub backend: wgpu::Backend,
    /// Adapter type (a `Cpu` device is a software rasterizer such as lavapipe).
    pub device_type: wgpu::DeviceType,
    /// Driver name and version info.
    pub driver: String,
    /// SHADER_F16 enabled. The kernels do not need it (f16 weights are
    /// widened with `unpack2x16float`); reported for planning.
    pub f16: bool,
    /// SUBGROUP enabled: reductions use subgroupAdd/Max.
    pub subgroup: bool,
    /// Smallest subgroup size the adapter may use.
    pub subgroup_min: u32,
    /// Largest subgroup size the adapter may use.
    pub subgroup_max: u32,
    /// EXPERIMENTAL_COOPERATIVE_MATRIX enabled, with an 8x8x8 f32 x f32 -> f32
    /// configuration (the one naga 30 can express): the dense prefill GEMM
    /// uses `shaders/gemm_coop.wgsl`.
    pub coop_matrix: bool,
    /// TIMESTAMP_QUERY enabled (GPU kernel timing, see [`crate::timing`]).
    pub timestamps: bool,
    /// Largest storage buffer binding in bytes (after any override).
    pub max_binding: u64,
    /// Largest buffer in bytes.
    pub max_buffer: u64,
    /// Storage binding offsets must be multiples of this (usually 256).
    pub storage_align: u64,
    /// Uniform binding offsets must be multiples of this (usually 256).
    pub uniform_align: u64,
    /// Workgroups per dispatch dimension.
    pub max_workgroups_per_dim: u32,
    /// Shared memory per workgroup in bytes.
    pub max_workgroup_storage: u32,
    /// Device-local memory in bytes, when the backend reports it (Vulkan).
    pub vram_bytes: Option<u64>,
    /// The memory staging buffers use ([`GpuOptions::staging`](crate::GpuOptions)
    /// resolved for this device; never `Auto`).
    pub staging: crate::StagingKind,
    /// The device was opened with `VK_EXT_external_memory_host`.
    pub host_import: bool,
    /// Alignment of imported host pointers and sizes (bytes; 0 without `host_import`).
    pub host_import_align: u64,
}

impl Caps {
    /// Whether this is a CPU (software) device, where benches shrink shapes.
    pub fn is_software(&self) -> bool {
        self.device_type == wgpu::DeviceType::Cpu
    }

    /// Adapter name reduced to `[a-z0-9_-]`, for bench and profile ids.
    pub fn adapter_slug(&self) -> String {
        slug(&self.adapter_name)
    }
}

#[cfg(test)]
impl Caps {
    /// Caps of a made-up adapter with subgroups of `min..=max` lanes, for
    /// unit tests of launch-shape choices.
    pub(crate) fn for_tests(subgroup_min: u32, subgroup_max: u32) -> Caps {
        Caps {
            adapter_name: format!("test adapter, subgroups {subgroup_min}..={subgroup_max}"),
            backend: wgpu::Backend::Vulkan,
            device_type: wgpu::DeviceType::DiscreteGpu,
            driver: String::new(),
            f16: true,
            subgroup: true,
            subgroup_min,
            subgroup_max,
            coop_matrix: false,
            timestamps: true,
            max_binding: 2 << 30,
            max_buffer: 4 << 30,
            storage_align: 256,
            uniform_align: 256,
            max_workgroups_per_dim: 65535,
            max_workgroup_storage: 32 << 10,
            vram_bytes: None,
            staging: crate::StagingKind::Mapped,
            host_import: false,
            host_import_align: 0,
        }
    }
}

/// Whether `adapter` offers 8x8x8 f32 cooperative matrices: the feature and
/// that configuration among its properties (wgpu 30 itself supports no other
/// shape, and a device may offer the feature for f16 shapes only).
pub(crate) fn adapter_has_coop_f32_8x8(adapter: &wgpu::Adapter) -> bool {
    use wgpu::CooperativeScalarType as T;
    adapter.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        && adapter
            .cooperative_matrix_properties()
            .iter()
            .any(|p| (p.m_size, p.n_size, p.k_size) == (8, 8, 8) && p.ab_type == T::F32 && p.cr_type == T::F32)
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

pub(crate) fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

pub(crate) fn backend_rank(b: wgpu::Backend) -> u32 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    }
}

pub(crate) fn new_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// What `airllm info` prints for one adapter.
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// Adapter name.
    pub name: String,
    /// Backend.
    pub backend: wgpu::Backend,
    /// Discrete, integrated, CPU ...
    pub device_type: wgpu::DeviceType,
    /// Driver name and info.
    pub driver: String,
    /// Features of interest it offers: `shader-f16`, `subgroup`, `timestamp-query`,
    /// `cooperative-matrix-8x8-f32` (the coop GEMM runs; or `cooperative-matrix
    /// (no 8x8 f32)` when only other shapes are offered), `external-memory-host`
    /// (Vulkan host-memory import, for staging).
    pub features: Vec<&'static str>,
    /// Subgroup size range (when subgroups are offered).
    pub subgroup_sizes: (u32, u32),
    /// Largest storage binding, bytes.
    pub max_binding: u64,
    /// Largest buffer, bytes.
    pub max_buffer: u64,
    /// Shared memory per workgroup, bytes.
    pub max_workgroup_storage: u32,
    /// Invocations per workgroup.
    pub max_invocations: u32,
    /// Device-local memory in bytes, when known.
    pub vram_bytes: Option<u64>,
}

impl fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: f64 = 1024.0 * 1024.0;
        writeln!(f, "{} ({:?}, {:?})", self.name, self.backend, self.device_type)?;
        writeln!(f, "  driver: {}", if self.driver.is_empty() { "?" } else { &self.driver })?;
        let feats = if self.features.is_empty() { "none".to_string() } else { self.features.join(", ") };
        writeln!(f, "  features: {feats}")?;
        if self.features.contains(&"subgroup") {
            writeln!(f, "  subgroup size: {}..={}", self.subgroup_sizes.0, self.subgroup_sizes.1)?;
        }
        write!(
            f,
            "  max storage binding: {:.0} MiB, max buffer: {:.0} MiB, shared memory: {} KiB, invocations: {}",
            self.max_binding as f64 / MIB,
            self.max_buffer as f64 / MIB,
            self.max_workgroup_storage / 1024,
            self.max_invocations
        )?;
        if let Some(v) = self.vram_bytes {
            write!(f, "\n  device memory: {:.0} MiB", v as f64 / MIB)?;
        }
        Ok(())
    }
}

/// Every adapter wgpu finds on every backend (blocking), best first.
pub fn list_adapters() -> Vec<AdapterReport> {
    let instance = new_instance(wgpu::Backends::all());
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.sort_by_key(|a| {
        let i = a.get_info();
        (type_rank(i.device_type), backend_rank(i.backend))
    });
    adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            let feats = a.features();
            let limits = a.limits();
            let mut features = Vec::new();
            if feats.contains(wgpu::Features::SHADER_F16) {
                features.push("shader-f16");
            }
            if feats.contains(wgpu::Features::SUBGROUP) {
                features.push("subgroup");
            }
            if feats.contains(wgpu::Features::TIMESTAMP_QUERY) {
                features.push("timestamp-query");
            }
            if adapter_has_coop_f32_8x8(a) {
                // gemm_coop.wgsl for dense prefill GEMMs
                features.push("cooperative-matrix-8x8-f32");
            } else if feats.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                // offered, but not in the one shape naga 30 can express
                features.push("cooperative-matrix (no 8x8 f32)");
            }
            if crate::host_staging::adapter_supports_host_import(a) {
                // host-memory staging (GpuOptions::staging = host-imported)
                features.push("external-memory-host");
            }
            AdapterReport {
                name: info.name.clone(),
                backend: info.backend,
                device_type: info.device_type,
                driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
                features,
                subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
                max_binding: limits.max_storage_buffer_binding_size,
                max_buffer: limits.max_buffer_size,
                max_workgroup_storage: limits.max_compute_workgroup_storage_size,
                max_invocations: limits.max_compute_invocations_per_workgroup,
                vram_bytes: crate::memory::device_memory_bytes(a),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slug("llvmpipe (LLVM 15.0.6, 256 bits)"), "llvmpipe_llvm_15_0_6_256_bits");
        assert_eq!(slug("NVIDIA H100 80GB HBM3"), "nvidia_h100_80gb_hbm3");
    }
}
