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

/// One readback buffer of a [`LogitsReadback`].
struct ReadSlot {
    buffer: wgpu::Buffer,
    /// A ticket was issued and not yet read (the buffer may be mapped or mapping).
    busy: bool,
}

/// Two MAP_READ buffers that take turns receiving a pass's logits: the copy
/// is recorded into the pass's own command buffer (no second submit, no
/// buffer created per step), the map is requested right after the submit,
/// and the caller waits only when it needs the values. While one buffer is
/// mapped and read on the host, the next pass can already copy into the
/// other, so a caller that pipelines steps overlaps reading step n with
/// recording step n + 1. Buffers grow to the largest copy and stay.
#[derive(Default)]
pub struct LogitsReadback {
    slots: [Option<ReadSlot>; 2],
    next: usize,
}

impl std::fmt::Debug for LogitsReadback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogitsReadback").field("next", &self.next).finish_non_exhaustive()
    }
}

/// A copy recorded by [`LogitsReadback::copy`], to be mapped after its submit
/// ([`LogitsReadback::map`]) and read once ([`LogitsReadback::read`]).
#[derive(Debug)]
pub struct PendingRead {
    slot: usize,
    size: u64,
    index: Option<wgpu::SubmissionIndex>,
    rx: Option<mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>>,
}

impl LogitsReadback {
    /// Empty (buffers are made on first use).
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of host-visible memory held.
    pub fn bytes(&self) -> u64 {
        self.slots.iter().flatten().map(|s| s.buffer.size()).sum()
    }

    /// Records a copy of `size` bytes from the start of `src` (which needs
    /// COPY_SRC; `size` a multiple of 4) into the next buffer.
    pub fn copy(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        size: u64,
    ) -> Result<PendingRead> {
        if !size.is_multiple_of(4) || size > src.size() {
            return Err(GpuError::arg(
                "LogitsReadback::copy",
                "size",
                format!("{size} bytes: must be a multiple of 4 within the {}-byte source", src.size()),
            ));
        }
        let i = self.next;
        self.next = (self.next + 1) % self.slots.len();
        let slot = &mut self.slots[i];
        if let Some(s) = slot.as_mut().filter(|s| s.busy) {
            // An earlier ticket was dropped unread: cancel its map (or unmap it).
            s.buffer.unmap();
            s.busy = false;
        }
        if slot.as_ref().is_none_or(|s| s.buffer.size() < size) {
            *slot = Some(ReadSlot {
                buffer: ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("airllm.logits.readback"),
                    size: size.max(4).next_power_of_two(),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                busy: false,
            });
        }
        let Some(s) = slot.as_mut() else {
            return Err(GpuError::arg("LogitsReadback::copy", "slot", "no readback buffer"));
        };
        if size > 0 {
            encoder.copy_buffer_to_buffer(src, 0, &s.buffer, 0, size);
        }
        s.busy = true;
        Ok(PendingRead { slot: i, size, index: None, rx: None })
    }

    /// Requests the map of `p`'s buffer; call right after the submit that
    /// carries its copy (`index`). Returns at once.
    pub fn map(&self, p: &mut PendingRead, index: wgpu::SubmissionIndex) {
        let Some(s) = self.slots[p.slot].as_ref() else { return };
        p.index = Some(index);
        if p.size == 0 {
            return;
        }
        let (tx, rx) = mpsc::channel();
        s.buffer.slice(..p.size).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        p.rx = Some(rx);
    }

    /// Blocks until `p`'s values are on the host (the GPU finished the
    /// submission). Separate from [`read`](Self::read) so a caller can tell
    /// waiting for the device from host work.
    pub fn wait(&self, ctx: &GpuContext, p: &PendingRead) -> Result<()> {
        let Some(rx) = &p.rx else {
            return match p.size {
                0 => Ok(()),
                _ => Err(GpuError::arg("LogitsReadback::wait", "ticket", "map() was not called after the submit")),
            };
        };
        ctx.wait(p.index.clone())?;
        // The callback has run once its submission is done; if not yet, poll everything.
        if let Ok(r) = rx.try_recv() {
            return r.map_err(|source| GpuError::Map { label: "airllm.logits.readback".into(), source });
        }
        ctx.wait(None)?;
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or(Err(wgpu::BufferAsyncError))
            .map_err(|source| GpuError::Map { label: "airllm.logits.readback".into(), source })
    }

    /// Copies `p`'s values (after [`wait`](Self::wait)) into `out` as f32 and
    /// frees its buffer for a later copy.
    pub fn read(&mut self, p: PendingRead, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        let Some(s) = self.slots[p.slot].as_mut() else { return Ok(()) };
        if p.size > 0 {
            let view = s
                .buffer
                .slice(..p.size)
                .get_mapped_range()
                .map_err(|source| GpuError::MapRange { label: "airllm.logits.readback".into(), source })?;
            out.extend(view.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            drop(view);
            s.buffer.unmap();
        }
        s.busy = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_come_back_through_alternating_buffers() {
        let Some(ctx) = crate::testing::gpu_or_skip() else { return };
        let mut rb = LogitsReadback::new();
        let mut out = Vec::new();
        for step in 0..5u32 {
            let len = 3 + 50 * step as usize; // grows
            let vals: Vec<f32> = (0..len).map(|i| i as f32 * 0.25 - step as f32).collect();
            let src = ctx.upload_f32("src", &vals);
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            let mut p = rb.copy(&ctx, &mut enc, &src, len as u64 * 4).expect("copy");
            let index = ctx.queue().submit([enc.finish()]);
            rb.map(&mut p, index);
            rb.wait(&ctx, &p).expect("wait");
            rb.read(p, &mut out).expect("read");
            assert_eq!(out, vals, "step {step}");
        }
        // a ticket dropped unread does not wedge its buffer
        let src = ctx.upload_f32("src", &[7.0; 8]);
        for _ in 0..3 {
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            let mut p = rb.copy(&ctx, &mut enc, &src, 32).expect("copy");
            let index = ctx.queue().submit([enc.finish()]);
            rb.map(&mut p, index);
            drop(p);
        }
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        let mut p = rb.copy(&ctx, &mut enc, &src, 32).expect("copy");
        let index = ctx.queue().submit([enc.finish()]);
        rb.map(&mut p, index);
        rb.wait(&ctx, &p).expect("wait");
        rb.read(p, &mut out).expect("read");
        assert_eq!(out, vec![7.0; 8]);
        assert!(rb.copy(&ctx, &mut ctx.device().create_command_encoder(&Default::default()), &src, 6).is_err());
    }
}
