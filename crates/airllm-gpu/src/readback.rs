//! Reading GPU buffers back to the CPU through a MAP_READ | COPY_DST staging
//! buffer. For tests, benches and the sampler's logits, not for bulk data.

use std::sync::mpsc;

use crate::device::GpuContext;
use crate::error::{GpuError, Result};

/// Maps `size` bytes at `offset` of a MAP_READ buffer (after waiting for
/// `after`, or for all submitted work) and copies them out.
pub(crate) fn map_read(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
    after: Option<wgpu::SubmissionIndex>,
) -> Result<Vec<u8>> {
    let label = format!("{buffer:?}");
    let slice = buffer.slice(offset..offset + size);
    let (tx, rx) = mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    ctx.wait(after)?;
    let mapped = match rx.try_recv() {
        Ok(r) => r,
        // the map completes once the buffer's last use has; if the poll
        // above did not get that far, wait for everything submitted
        Err(_) => {
            ctx.wait(None)?;
            rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap_or(Err(wgpu::BufferAsyncError))
        }
    };
    mapped.map_err(|source| GpuError::Map { label: label.clone(), source })?;
    let out = {
        let view = slice.get_mapped_range().map_err(|source| GpuError::MapRange { label, source })?;
        view.to_vec()
    };
    buffer.unmap();
    Ok(out)
}

/// Copies `size` bytes from `offset` of `buffer` (which needs COPY_SRC) into
/// a staging buffer and returns them. Offset and size are rounded out to
/// multiples of 4 for the copy; exactly the requested bytes come back.
pub fn read_buffer_bytes(ctx: &GpuContext, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
    if size == 0 {
        return Ok(Vec::new());
    }
    if offset.checked_add(size).is_none_or(|e| e > buffer.size()) {
        return Err(GpuError::arg(
            "read_buffer",
            "range",
            format!("{offset}+{size} exceeds the {}-byte buffer", buffer.size()),
        ));
    }
    let start = offset / 4 * 4;
    let end = (offset + size).div_ceil(4) * 4;
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("airllm.readback"),
        size: end - start,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
    enc.copy_buffer_to_buffer(buffer, start, &staging, 0, end - start);
    let index = ctx.queue().submit([enc.finish()]);
    let raw = map_read(ctx, &staging, 0, end - start, Some(index))?;
    let skip = (offset - start) as usize;
    Ok(raw[skip..skip + size as usize].to_vec())
}

/// Reads `len` f32 values starting at byte `offset` of `buffer`.
pub fn read_buffer_f32(ctx: &GpuContext, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<f32>> {
    let raw = read_buffer_bytes(ctx, buffer, offset, len as u64 * 4)?;
    Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Reads `len` u32 values starting at byte `offset` of `buffer`.
pub fn read_buffer_u32(ctx: &GpuContext, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<u32>> {
    let raw = read_buffer_bytes(ctx, buffer, offset, len as u64 * 4)?;
    Ok(raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}
