//! [`UploadBelt`]: small per-step inputs (token rows, positions, the step
//! layout) reach the GPU through a few reused MAP_WRITE staging buffers and
//! copies recorded into the step's own command buffer.
//!
//! `queue.write_buffer` creates a staging allocation in wgpu-core for every
//! call and flushes it at the next submit; a step writes five or six inputs,
//! so that is five or six allocations per step. Here each buffer is mapped
//! once, written, unmapped, copied from, and re-mapped asynchronously after
//! the submit (the same cycle as the streaming ring's staging), so by the next
//! step it is ready again. Buffers grow to the largest step and stay.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::device::GpuContext;
use crate::error::{GpuError, Result};

/// Buffer states (an `AtomicU8`, set by the map callback).
const MAPPED: u8 = 0;
/// Unmapped, copies recorded, not yet submitted (or the submit never came).
const IN_USE: u8 = 1;
/// `map_async` requested after the submit.
const MAPPING: u8 = 2;
/// The map failed (e.g. cancelled); map again before use.
const FAILED: u8 = 3;

struct BeltBuffer {
    buffer: wgpu::Buffer,
    state: Arc<AtomicU8>,
}

/// A ring of reused upload buffers (see the module docs).
pub struct UploadBelt {
    buffers: Vec<Option<BeltBuffer>>,
    next: usize,
    /// The buffer whose copies were recorded and await [`UploadBelt::submitted`].
    in_flight: Vec<usize>,
}

impl std::fmt::Debug for UploadBelt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadBelt").field("buffers", &self.buffers.len()).finish_non_exhaustive()
    }
}

impl UploadBelt {
    /// A belt of `count` (at least 2) buffers, made on first use.
    pub fn new(count: usize) -> Self {
        UploadBelt { buffers: (0..count.max(2)).map(|_| None).collect(), next: 0, in_flight: Vec::new() }
    }

    /// Bytes of staging memory held.
    pub fn bytes(&self) -> u64 {
        self.buffers.iter().flatten().map(|b| b.buffer.size()).sum()
    }

    /// Writes each `(destination, bytes)` into the next staging buffer and
    /// records a copy of it to the start of its destination (which needs
    /// COPY_DST). Byte counts are padded to 4 (the copy alignment); the
    /// destination must have room for the padding.
    ///
    /// The encoder of an earlier upload must have been submitted (or
    /// dropped) by now: its buffer is re-mapped here unless
    /// [`submitted`](Self::submitted) already did so.
    pub fn upload(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        writes: &[(&wgpu::Buffer, &[u8])],
    ) -> Result<()> {
        self.submitted();
        let pad = |n: usize| (n as u64).div_ceil(wgpu::COPY_BUFFER_ALIGNMENT) * wgpu::COPY_BUFFER_ALIGNMENT;
        let total: u64 = writes.iter().map(|(_, b)| pad(b.len())).sum();
        if total == 0 {
            return Ok(());
        }
        for (dst, bytes) in writes {
            if pad(bytes.len()) > dst.size() {
                return Err(GpuError::arg(
                    "UploadBelt::upload",
                    "writes",
                    format!("{} bytes do not fit the {}-byte destination {dst:?}", bytes.len(), dst.size()),
                ));
            }
        }
        let i = self.next;
        self.next = (self.next + 1) % self.buffers.len();
        let fits = self.buffers[i].as_ref().is_some_and(|b| b.buffer.size() >= total);
        if !fits {
            self.buffers[i] = Some(BeltBuffer {
                buffer: ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("airllm.upload"),
                    size: total.next_power_of_two().max(256),
                    usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: true,
                }),
                state: Arc::new(AtomicU8::new(MAPPED)),
            });
        }
        let Some(b) = self.buffers[i].as_ref() else {
            return Err(GpuError::arg("UploadBelt::upload", "buffer", "no staging buffer"));
        };
        wait_mapped(ctx, b)?;
        {
            let mut view = b
                .buffer
                .slice(..total)
                .get_mapped_range_mut()
                .map_err(|source| GpuError::MapRange { label: "airllm.upload".into(), source })?;
            let mut off = 0usize;
            for (_, bytes) in writes {
                view.slice(off..off + bytes.len()).copy_from_slice(bytes);
                off += pad(bytes.len()) as usize;
            }
        }
        b.buffer.unmap();
        b.state.store(IN_USE, Ordering::Release);
        let mut off = 0u64;
        for (dst, bytes) in writes {
            let n = pad(bytes.len());
            if n > 0 {
                encoder.copy_buffer_to_buffer(&b.buffer, off, dst, 0, n);
            }
            off += n;
        }
        self.in_flight.push(i);
        Ok(())
    }

    /// Call after submitting the encoder given to [`upload`](Self::upload)
    /// (never before: a buffer being mapped cannot be copied from): re-maps
    /// its buffer in the background for a later step.
    pub fn submitted(&mut self) {
        for i in self.in_flight.drain(..) {
            if let Some(b) = self.buffers[i].as_ref() {
                request_map(b);
            }
        }
    }
}

fn request_map(b: &BeltBuffer) {
    b.state.store(MAPPING, Ordering::Release);
    let state = b.state.clone();
    b.buffer.slice(..).map_async(wgpu::MapMode::Write, move |r| {
        state.store(if r.is_ok() { MAPPED } else { FAILED }, Ordering::Release);
    });
}

/// Blocks until `b` is mapped for writing (normally it already is).
fn wait_mapped(ctx: &GpuContext, b: &BeltBuffer) -> Result<()> {
    for _ in 0..3 {
        match b.state.load(Ordering::Acquire) {
            MAPPED => return Ok(()),
            // recorded but never submitted (a step failed half way), or a failed map
            IN_USE | FAILED => request_map(b),
            _ => {}
        }
        ctx.wait(None)?;
    }
    match b.state.load(Ordering::Acquire) {
        MAPPED => Ok(()),
        _ => Err(GpuError::Map { label: "airllm.upload".into(), source: wgpu::BufferAsyncError }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_reach_their_buffers_across_reuse_and_growth() {
        let Some(ctx) = crate::testing::gpu_or_skip() else { return };
        let a = ctx.create_storage_buffer("a", 4096);
        let b = ctx.create_storage_buffer("b", 4096);
        let mut belt = UploadBelt::new(2);
        for step in 0u32..5 {
            // sizes change (growth), ragged lengths are padded
            let va: Vec<u32> = (0..(3 + step * 100)).map(|i| i * 7 + step).collect();
            let vb: Vec<u8> = (0..(5 + step)).map(|i| (i as u8).wrapping_mul(3)).collect();
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            belt.upload(&ctx, &mut enc, &[(&a, bytemuck::cast_slice(&va)), (&b, &vb)]).expect("upload");
            let index = ctx.queue().submit([enc.finish()]);
            belt.submitted();
            ctx.wait(Some(index)).expect("wait");
            assert_eq!(crate::read_buffer_u32(&ctx, &a, 0, va.len()).expect("read a"), va, "step {step}");
            assert_eq!(crate::read_buffer_bytes(&ctx, &b, 0, vb.len() as u64).expect("read b"), vb, "step {step}");
        }
        // a step that recorded but never submitted does not wedge the belt
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        belt.upload(&ctx, &mut enc, &[(&a, &[1, 2, 3, 4])]).expect("upload");
        drop(enc);
        for _ in 0..2 {
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            belt.upload(&ctx, &mut enc, &[(&a, &[9, 9, 9, 9])]).expect("upload after an abandoned one");
            ctx.queue().submit([enc.finish()]);
            belt.submitted();
        }
        assert_eq!(crate::read_buffer_bytes(&ctx, &a, 0, 4).expect("read"), vec![9, 9, 9, 9]);
        assert!(belt.bytes() > 0);
    }
}
