//! Staging in host RAM, for the streaming path: [`Staging`] is a buffer the
//! CPU (or io worker threads) fills through a [`MappedPtr`] and the GPU
//! copies out of with `copy_buffer_to_buffer`, whichever memory backs it
//! ([`StagingKind`], chosen by [`GpuOptions::staging`](crate::GpuOptions)).
//!
//! Why: wgpu places MAP_WRITE buffers in BAR-mapped VRAM when a discrete card
//! offers it, so each byte the CPU writes is a store across PCIe; on the H100
//! test machine that capped mapped staging at 29 GB/s, against 54 GB/s for
//! pinned host-to-device DMA (ARCHITECTURE.md). With the staging bytes in host
//! RAM instead, `pread` fills them at RAM speed and the GPU's copy engine
//! pulls them over PCIe. Two ways to get such memory on Vulkan:
//! - [`StagingKind::HostImported`]: page-aligned memory from the process heap,
//!   imported with `VK_EXT_external_memory_host` (the device is then opened
//!   through wgpu-hal with that extension added);
//! - [`StagingKind::HostVisible`]: Vulkan memory of a host-visible type
//!   outside the device-local heaps, persistently mapped.
//!
//! Either becomes a `wgpu::Buffer` through `Device::create_buffer_from_hal`,
//! with COPY_SRC usage. [`StagingKind::Mapped`] (plain wgpu MAP_WRITE buffers)
//! stays the portable default: the host kinds are unmeasured on real hardware
//! (`examples/staging_bandwidth.rs` measures them) and Vulkan-only.
//!
//! The cycle per use, the same for every kind: [`writable`](Staging::writable)
//! (waits until the GPU has finished the copies out of it), fill,
//! [`release`](Staging::release), [`encode_copy`](Staging::encode_copy),
//! submit, [`submitted`](Staging::submitted) (starts the asynchronous wait;
//! [`is_ready`](Staging::is_ready) polls it without blocking).

use std::fmt;
use std::ptr::NonNull;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::device::GpuContext;
use crate::error::{GpuError, Result};
mod mapped;
pub use mapped::MappedPtr;

#[cfg(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd"))]
pub(crate) mod vulkan;

/// Which memory backs staging buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StagingKind {
    /// wgpu MAP_WRITE | COPY_SRC buffers, mapped and unmapped per use
    /// (portable; BAR-mapped VRAM on discrete cards that offer it).
    #[default]
    Mapped,
    /// Page-aligned host memory imported with `VK_EXT_external_memory_host`
    /// (Vulkan only).
    HostImported,
    /// Persistently mapped Vulkan memory of a host-visible type, outside the
    /// device-local heaps where the device has one (Vulkan only).
    HostVisible,
    /// `HostImported` on a discrete Vulkan GPU that has the extension (where
    /// staging would otherwise sit behind the BAR), else `Mapped`.
    Auto,
}

impl StagingKind {
    /// Every kind, as accepted by [`FromStr`].
    pub const ALL: [StagingKind; 4] =
        [StagingKind::Mapped, StagingKind::HostImported, StagingKind::HostVisible, StagingKind::Auto];

    /// Lower-case name: `mapped`, `host-imported`, `host-visible`, `auto`.
    pub fn name(self) -> &'static str {
        match self {
            StagingKind::Mapped => "mapped",
            StagingKind::HostImported => "host-imported",
            StagingKind::HostVisible => "host-visible",
            StagingKind::Auto => "auto",
        }
    }

    /// Whether the memory is host RAM reached through Vulkan.
    pub fn is_host(self) -> bool {
        matches!(self, StagingKind::HostImported | StagingKind::HostVisible)
    }
}

impl FromStr for StagingKind {
    type Err = GpuError;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase().replace('_', "-");
        StagingKind::ALL.into_iter().find(|k| k.name() == t).ok_or_else(|| {
            GpuError::arg(
                "StagingKind::from_str",
                "staging",
                format!("unknown staging kind {s:?}: expected mapped, host-imported, host-visible or auto"),
            )
        })
    }
}

impl fmt::Display for StagingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The host memory of a [`Staging`] buffer of a host kind: valid while the
/// wgpu buffer lives (its drop guard frees it after the GPU is done).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostMemory {
    pub(crate) ptr: NonNull<u8>,
    pub(crate) len: usize,
}

enum Memory {
    Mapped { view: Option<wgpu::BufferViewMut> },
    Host(HostMemory),
}

/// A staging buffer of any [`StagingKind`]; see the module docs for the cycle.
pub struct Staging {
    buffer: wgpu::Buffer,
    memory: Memory,
    kind: StagingKind,
    label: String,
    /// The CPU may write (between `writable` and `release`).
    writing: bool,
    /// A copy out of it was encoded since the last `release`.
    encoded: bool,
    /// Set by the GPU-side callback once the submitted copies are done.
    pending: Option<Arc<AtomicBool>>,
}

// SAFETY: the host pointer is only an address into memory owned by `buffer`
// (freed by its drop guard); writing through it goes through MappedPtr's
// unsafe contract. wgpu's buffer and view types are Send.
unsafe impl Send for Staging {}

impl fmt::Debug for Staging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Staging")
            .field("label", &self.label)
            .field("kind", &self.kind)
            .field("size", &self.buffer.size())
            .field("writing", &self.writing)
            .finish()
    }
}

impl Staging {
    /// A staging buffer of at least `size` bytes of the context's staging
    /// kind ([`Caps::staging`](crate::Caps)), writable at once.
    pub fn new(ctx: &GpuContext, label: &str, size: u64) -> Result<Self> {
        Self::with_kind(ctx, label, size, ctx.caps().staging)
    }

    /// As [`new`](Self::new), of a given kind. `Auto` means the context's
    /// kind; a host kind the device cannot give is an error naming why.
    pub fn with_kind(ctx: &GpuContext, label: &str, size: u64, kind: StagingKind) -> Result<Self> {
        let kind = if kind == StagingKind::Auto { ctx.caps().staging } else { kind };
        let size = size.max(4).div_ceil(4) * 4;
        let (buffer, memory) = match kind {
            StagingKind::Mapped | StagingKind::Auto => {
                let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: true,
                });
                (buffer, Memory::Mapped { view: None })
            }
            StagingKind::HostImported | StagingKind::HostVisible => {
                let (buffer, host) = create_host_buffer(ctx, label, size, kind)?;
                (buffer, Memory::Host(host))
            }
        };
        let kind = if kind == StagingKind::Auto { StagingKind::Mapped } else { kind };
        Ok(Staging { buffer, memory, kind, label: label.to_string(), writing: true, encoded: false, pending: None })
    }

    /// The memory behind it (never `Auto`).
    pub fn kind(&self) -> StagingKind {
        self.kind
    }

    /// Size in bytes (at least what was asked; host kinds round up to the
    /// import alignment).
    pub fn size(&self) -> u64 {
        self.buffer.size()
    }

    /// The wgpu buffer (COPY_SRC).
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Whether [`writable`](Self::writable) would return without waiting.
    pub fn is_ready(&self) -> bool {
        self.writing || self.pending.as_ref().is_some_and(|p| p.load(Ordering::Acquire))
    }

    /// The bytes for filling threads, valid until [`release`](Self::release).
    /// Waits for the GPU to finish the submitted copies out of this buffer
    /// (call [`submitted`](Self::submitted) after submitting them: a copy that
    /// was encoded but not reported submitted is an error here, since the CPU
    /// would overwrite bytes the GPU has yet to read).
    pub fn writable(&mut self, ctx: &GpuContext) -> Result<MappedPtr> {
        if !self.writing {
            if self.encoded && self.pending.is_none() {
                return Err(GpuError::arg(
                    "Staging::writable",
                    "self",
                    format!("{}: a copy out of it was encoded but `submitted` was not called", self.label),
                ));
            }
            if self.pending.is_none() {
                // released without a copy: nothing in flight reads it
                if matches!(self.memory, Memory::Mapped { .. }) {
                    self.start_wait(ctx);
                }
            }
            self.wait_pending(ctx)?;
            self.pending = None;
            self.encoded = false;
            self.writing = true;
        }
        let (ptr, len) = match &mut self.memory {
            Memory::Host(h) => (h.ptr, h.len),
            Memory::Mapped { view } => {
                if view.is_none() {
                    let v = self
                        .buffer
                        .slice(..)
                        .get_mapped_range_mut()
                        .map_err(|source| GpuError::MapRange { label: self.label.clone(), source })?;
                    *view = Some(v);
                }
                let v = view.as_mut().ok_or_else(|| GpuError::arg("Staging::writable", "self", "no view"))?;
                (v.slice(..).as_raw_element_ptr(), self.buffer.size() as usize)
            }
        };
        // SAFETY: `ptr` addresses `len` bytes that stay valid and CPU-writable
        // until `release` (a live mapping, or host memory owned by the buffer).
        Ok(unsafe { MappedPtr::from_raw(ptr, len) })
    }

    /// Ends CPU writing: a mapped buffer is unmapped (host memory needs
    /// nothing: it is coherent, and the submit makes host writes visible).
    /// Every [`MappedPtr`] taken before is dead afterwards.
    pub fn release(&mut self) {
        if let Memory::Mapped { view } = &mut self.memory {
            *view = None;
            if self.writing {
                self.buffer.unmap();
            }
        }
        self.writing = false;
    }

    /// Records a copy of `size` bytes at `src_offset` into `dst` at
    /// `dst_offset`. The buffer must be released; offsets and size must be
    /// multiples of 4 (wgpu's copy alignment).
    pub fn encode_copy(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    ) -> Result<()> {
        let op = "Staging::encode_copy";
        if self.writing {
            return Err(GpuError::arg(op, "self", format!("{} is still writable: release it first", self.label)));
        }
        if !(src_offset.is_multiple_of(4) && dst_offset.is_multiple_of(4) && size.is_multiple_of(4)) {
            return Err(GpuError::arg(
                op,
                "range",
                format!("offsets {src_offset}, {dst_offset} and size {size} must be multiples of 4"),
            ));
        }
        if src_offset.checked_add(size).is_none_or(|e| e > self.size())
            || dst_offset.checked_add(size).is_none_or(|e| e > dst.size())
        {
            return Err(GpuError::arg(
                op,
                "range",
                format!(
                    "copy of {size} bytes from {src_offset} (of {}) to {dst_offset} (of {}) is out of bounds",
                    self.size(),
                    dst.size()
                ),
            ));
        }
        encoder.copy_buffer_to_buffer(&self.buffer, src_offset, dst, dst_offset, size);
        self.encoded = true;
        Ok(())
    }

    /// Call once the work holding this buffer's copies is submitted: starts
    /// the asynchronous wait after which it is writable again (a mapped buffer
    /// is re-mapped; host memory waits for the submission to finish).
    pub fn submitted(&mut self, ctx: &GpuContext) {
        if !self.writing && self.pending.is_none() {
            self.start_wait(ctx);
        }
    }

    fn start_wait(&mut self, ctx: &GpuContext) {
        let flag = Arc::new(AtomicBool::new(false));
        let done = flag.clone();
        match self.memory {
            Memory::Mapped { .. } => {
                self.buffer.slice(..).map_async(wgpu::MapMode::Write, move |r| {
                    if r.is_ok() {
                        done.store(true, Ordering::Release);
                    }
                });
            }
            Memory::Host(_) => ctx.queue().on_submitted_work_done(move || done.store(true, Ordering::Release)),
        }
        self.pending = Some(flag);
    }

    fn wait_pending(&self, ctx: &GpuContext) -> Result<()> {
        let Some(flag) = &self.pending else { return Ok(()) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !flag.load(Ordering::Acquire) {
            ctx.wait(None)?;
            if std::time::Instant::now() > deadline {
                return Err(GpuError::Map { label: self.label.clone(), source: wgpu::BufferAsyncError });
            }
            if !flag.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
        }
        Ok(())
    }
}

/// Whether `adapter` can import host memory: Vulkan 1.1+ with
/// `VK_EXT_external_memory_host`.
pub fn adapter_supports_host_import(adapter: &wgpu::Adapter) -> bool {
    #[cfg(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd"))]
    {
        vulkan::adapter_supports_host_import(adapter)
    }
    #[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd")))]
    {
        let _ = adapter;
        false
    }
}

/// Opens `adapter` for `desc` with `VK_EXT_external_memory_host` added.
pub(crate) fn request_device_with_host_import(
    adapter: &wgpu::Adapter,
    desc: &wgpu::DeviceDescriptor<'_>,
) -> Result<(wgpu::Device, wgpu::Queue)> {
    #[cfg(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd"))]
    {
        vulkan::request_device_with_host_import(adapter, desc)
    }
    #[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd")))]
    {
        let _ = (adapter, desc);
        Err(GpuError::HostStaging { op: "opening the device", reason: "Vulkan is not built for this platform".into() })
    }
}

/// `minImportedHostPointerAlignment` of a Vulkan adapter.
pub(crate) fn import_alignment(adapter: &wgpu::Adapter) -> Option<u64> {
    #[cfg(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd"))]
    {
        vulkan::import_alignment(adapter)
    }
    #[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd")))]
    {
        let _ = adapter;
        None
    }
}

fn create_host_buffer(
    ctx: &GpuContext,
    label: &str,
    size: u64,
    kind: StagingKind,
) -> Result<(wgpu::Buffer, HostMemory)> {
    let unavailable = |reason: &str| GpuError::HostStaging { op: "creating a staging buffer", reason: reason.into() };
    if ctx.caps().backend != wgpu::Backend::Vulkan {
        return Err(unavailable(&format!("{kind} staging needs Vulkan; the device runs on {:?}", ctx.caps().backend)));
    }
    if kind == StagingKind::HostImported && !ctx.caps().host_import {
        return Err(unavailable(
            "the device was not opened with VK_EXT_external_memory_host \
             (set GpuOptions::staging to host-imported or auto, on an adapter that has it)",
        ));
    }
    #[cfg(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd"))]
    {
        vulkan::create_host_buffer(ctx, label, size, kind == StagingKind::HostImported)
    }
    #[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "android", target_os = "freebsd")))]
    {
        let _ = (label, size);
        Err(unavailable("Vulkan host memory is not built for this platform"))
    }
}

#[cfg(test)]
mod tests;
