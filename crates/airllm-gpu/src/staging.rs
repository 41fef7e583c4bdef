//! [`StagingBuffer`]: a MAP_WRITE | COPY_SRC buffer that CPU (or io worker)
//! threads fill through a raw pointer while it is mapped, and that is then
//! copied into a weight slot with `copy_buffer_to_buffer`.
//!
//! Why not `queue.write_buffer`: on the H100 test machine it moved weights at
//! 3.8 GB/s, against 28 GB/s for 8 threads filling mapped staging memory
//! (see ARCHITECTURE.md). The cycle per use: [`map`](StagingBuffer::map)
//! (waits until the GPU has finished the previous copy out of it), fill,
//! [`unmap`](StagingBuffer::unmap), [`encode_copy`](StagingBuffer::encode_copy),
//! submit.

use std::ptr::NonNull;
use std::sync::mpsc;

use crate::device::GpuContext;
use crate::error::{GpuError, Result};

/// The mapped bytes of a [`StagingBuffer`], to hand to filling threads.
#[derive(Clone, Copy, Debug)]
pub struct MappedPtr {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a MappedPtr is only an address and a length; writing through it is
// `unsafe` and the caller promises the mapping is alive and ranges disjoint.
unsafe impl Send for MappedPtr {}
// SAFETY: as above; shared copies only hand out the raw pointer.
unsafe impl Sync for MappedPtr {}

impl MappedPtr {
    /// # Safety
    /// `ptr` must address `len` bytes that stay writable for as long as the
    /// owner says (until its unmap or release).
    pub(crate) unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> Self {
        MappedPtr { ptr, len }
    }

    /// Start of the mapped range.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `src` to byte `offset`.
    ///
    /// # Safety
    /// The staging buffer must still be mapped (no `unmap` since this pointer
    /// was taken), and no other thread may write the same bytes concurrently.
    pub unsafe fn write(&self, offset: usize, src: &[u8]) -> Result<()> {
        if offset.checked_add(src.len()).is_none_or(|e| e > self.len) {
            return Err(GpuError::arg(
                "MappedPtr::write",
                "offset",
                format!("{offset}+{} exceeds the {} mapped bytes", src.len(), self.len),
            ));
        }
        // SAFETY: in bounds (checked above); mapping alive and range
        // exclusive per the caller's contract; src cannot overlap GPU-mapped memory.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len()) };
        Ok(())
    }
}

/// A host-visible upload buffer for weights.
pub struct StagingBuffer {
    buffer: wgpu::Buffer,
    label: String,
    view: Option<wgpu::BufferViewMut>,
    mapped: bool,
}

impl std::fmt::Debug for StagingBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagingBuffer")
            .field("label", &self.label)
            .field("size", &self.buffer.size())
            .field("mapped", &self.mapped)
            .finish()
    }
}

impl StagingBuffer {
    /// A staging buffer of `size` bytes (rounded up to 4), created mapped.
    pub fn new(ctx: &GpuContext, label: &str, size: u64) -> Self {
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).div_ceil(4) * 4,
            usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: true,
        });
        StagingBuffer { buffer, label: label.to_string(), view: None, mapped: true }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.buffer.size()
    }

    /// The wgpu buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Whether the buffer is mapped (writable by the CPU).
    pub fn is_mapped(&self) -> bool {
        self.mapped
    }

    /// Maps the buffer for writing, waiting for pending GPU copies out of it.
    /// A no-op when already mapped.
    pub fn map(&mut self, ctx: &GpuContext) -> Result<()> {
        if self.mapped {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel();
        self.buffer.slice(..).map_async(wgpu::MapMode::Write, move |r| {
            let _ = tx.send(r);
        });
        ctx.wait(None)?;
        let r = rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap_or(Err(wgpu::BufferAsyncError));
        r.map_err(|source| GpuError::Map { label: self.label.clone(), source })?;
        self.mapped = true;
        Ok(())
    }

    /// The mapped bytes as a raw pointer for filling threads (see
    /// [`MappedPtr::write`]). Valid until [`unmap`](Self::unmap).
    pub fn mapped_ptr(&mut self) -> Result<MappedPtr> {
        if !self.mapped {
            return Err(GpuError::arg(
                "StagingBuffer::mapped_ptr",
                "self",
                format!("{} is not mapped: call map first", self.label),
            ));
        }
        if self.view.is_none() {
            let view = self
                .buffer
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|source| GpuError::MapRange { label: self.label.clone(), source })?;
            self.view = Some(view);
        }
        let len = self.buffer.size() as usize;
        let view = self.view.as_mut().ok_or_else(|| GpuError::arg("StagingBuffer::mapped_ptr", "self", "no view"))?;
        let ptr = view.slice(..).as_raw_element_ptr();
        Ok(MappedPtr { ptr, len })
    }

    /// Copies `src` to byte `offset` (single-threaded convenience).
    pub fn write(&mut self, offset: usize, src: &[u8]) -> Result<()> {
        let p = self.mapped_ptr()?;
        // SAFETY: mapped (mapped_ptr checked) and we hold &mut self, so no
        // other writer through this buffer's safe API.
        unsafe { p.write(offset, src) }
    }

    /// Unmaps, making the contents visible to GPU copies. Every
    /// [`MappedPtr`] taken before is dead afterwards.
    pub fn unmap(&mut self) {
        self.view = None;
        if self.mapped {
            self.buffer.unmap();
            self.mapped = false;
        }
    }

    /// Records a copy of `size` bytes at `src_offset` into `dst` at
    /// `dst_offset`. The buffer must be unmapped; offsets and size must be
    /// multiples of 4 (wgpu's copy alignment).
    pub fn encode_copy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        size: u64,
    ) -> Result<()> {
        if self.mapped {
            return Err(GpuError::arg(
                "StagingBuffer::encode_copy",
                "self",
                format!("{} is still mapped: unmap first", self.label),
            ));
        }
        if !(src_offset.is_multiple_of(4) && dst_offset.is_multiple_of(4) && size.is_multiple_of(4)) {
            return Err(GpuError::arg(
                "StagingBuffer::encode_copy",
                "range",
                format!("offsets {src_offset}, {dst_offset} and size {size} must be multiples of 4"),
            ));
        }
        if src_offset + size > self.size() || dst_offset + size > dst.size() {
            return Err(GpuError::arg(
                "StagingBuffer::encode_copy",
                "range",
                format!(
                    "copy of {size} bytes from {src_offset} (of {}) to {dst_offset} (of {}) is out of bounds",
                    self.size(),
                    dst.size()
                ),
            ));
        }
        encoder.copy_buffer_to_buffer(&self.buffer, src_offset, dst, dst_offset, size);
        Ok(())
    }
}
