//! [`Ring`]: the one path by which streamed weights reach VRAM.
//!
//! `airllm-io` reads the shards of streamed units, many ahead, straight into
//! mapped wgpu staging buffers (one copy from the page cache or disk into
//! GPU-visible memory); each is then copied on the GPU into a ring slot and
//! computed from there. Staging buffers are re-mapped once the copy that
//! reads them has run and lent back to the reader, so reading unit i+1..i+N
//! overlaps the copy and compute of unit i.
//!
//! Weights never go through `queue.write_buffer`: on the reference H100 that
//! path measured 3.8 GB/s against 28 GB/s for mapped staging.
//!
//! The cycle per unit: [`Ring::acquire`] waits for the reader, records the
//! staging-to-slot copy and returns the slot; the caller records the unit's
//! kernels after it, submits, and calls [`Ring::submitted`], which queues the
//! staging buffer for re-mapping. A slot is reused only `slots` units later,
//! after the submission that read it (wgpu orders submissions on the queue).

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use airllm_io::{Destination, Reader, ReaderOptions, ReaderStats, ShardSpec};

use crate::device::GpuContext;
use crate::error::{GpuError, Result};

struct Staging {
    buffer: wgpu::Buffer,
    view: Option<wgpu::BufferViewMut>,
    ready: Arc<AtomicBool>,
}

/// A mapped staging buffer lent to the reader.
pub struct StagingDest {
    index: usize,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the pointer is into a wgpu mapping owned by the `Ring`, which keeps
// the mapping alive (never unmaps it) while the destination is lent to the reader.
unsafe impl Send for StagingDest {}

// SAFETY: the memory is a live wgpu mapping of `len` bytes that does not move with
// this value; the ring unmaps it only after the reader handed it back.
unsafe impl Destination for StagingDest {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn capacity(&self) -> usize {
        self.len
    }
}

/// Counters of the streaming path.
#[derive(Clone, Debug, Default)]
pub struct RingStats {
    /// Units delivered.
    pub units: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// Time the caller waited for the reader.
    pub io_wait: Duration,
    /// Time spent waiting for staging buffers to be re-mapped.
    pub remap_wait: Duration,
    /// GPU copies from staging into slots (measured only when profiling: each copy
    /// is then submitted alone and waited for, which costs some overlap).
    pub upload: Duration,
}

/// The ring of VRAM slots and the reader feeding it.
pub struct Ring {
    staging: Vec<Staging>,
    reader: Option<Reader<StagingDest>>,
    slots: Vec<wgpu::Buffer>,
    next_slot: usize,
    /// Staging buffers whose copy was recorded but not yet submitted.
    unsubmitted: Vec<usize>,
    /// Staging buffers waiting to be re-mapped.
    held: VecDeque<usize>,
    stats: RingStats,
    /// Units per pass and how many of the current pass were delivered.
    pass_len: usize,
    cursor: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("slots", &self.slots.len()).field("staging", &self.staging.len()).finish()
    }
}

fn map_view(label: usize, buffer: &wgpu::Buffer) -> Result<(wgpu::BufferViewMut, NonNull<u8>)> {
    let mut view = buffer
        .slice(..)
        .get_mapped_range_mut()
        .map_err(|source| GpuError::MapRange { label: format!("staging[{label}]"), source })?;
    let ptr = view.slice(..).as_raw_element_ptr();
    Ok((view, ptr))
}

/// Bytes a slot or staging buffer of a `unit_bytes` unit takes.
pub fn slot_size(unit_bytes: u64) -> u64 {
    unit_bytes.max(16).div_ceil(16) * 16
}

impl Ring {
    /// Allocates `slots` slots and `depth` staging buffers of `slot_bytes`, and
    /// starts reading `schedule` (indices into `shards`, one pass; repeated forever).
    pub fn new(
        ctx: &GpuContext,
        shards: Vec<ShardSpec>,
        schedule: Vec<usize>,
        slots: usize,
        slot_bytes: u64,
        depth: usize,
        opts: ReaderOptions,
    ) -> Result<Self> {
        let size = slot_size(slot_bytes);
        if size > ctx.caps().max_buffer {
            return Err(GpuError::arg(
                "Ring::new",
                "slot_bytes",
                format!("{size} bytes exceed the adapter's largest buffer ({} bytes)", ctx.caps().max_buffer),
            ));
        }
        let ring = (0..slots.max(1)).map(|i| ctx.create_storage_buffer(&format!("ring[{i}]"), size)).collect();
        let mut staging = Vec::new();
        let mut dests = Vec::new();
        for i in 0..depth.max(1) {
            let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some(&format!("staging[{i}]")),
                size,
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            });
            let (view, ptr) = map_view(i, &buffer)?;
            dests.push(StagingDest { index: i, ptr, len: size as usize });
            staging.push(Staging { buffer, view: Some(view), ready: Arc::new(AtomicBool::new(false)) });
        }
        let opts = ReaderOptions { depth: depth.max(1), ..opts };
        let pass_len = schedule.len();
        let sched = schedule.clone();
        let cycle = (0..).flat_map(move |_| sched.clone().into_iter());
        let reader = Reader::new(shards, cycle, dests, opts).map_err(|e| GpuError::Reader(Box::new(e)))?;
        Ok(Ring {
            staging,
            reader: Some(reader),
            slots: ring,
            next_slot: 0,
            unsubmitted: Vec::new(),
            held: VecDeque::new(),
            stats: RingStats::default(),
            pass_len,
            cursor: 0,
        })
    }

    /// Whether the reader stands at the start of a pass. A pass that failed half
    /// way leaves it elsewhere; the caller then rebuilds the ring rather than
    /// compute a unit with another unit's weights.
    pub fn at_pass_start(&self) -> bool {
        self.cursor == 0
    }

    /// Bytes of GPU memory the slots and the staging buffers use.
    pub fn bytes(&self) -> (u64, u64) {
        let ring = self.slots.iter().map(|b| b.size()).sum();
        let staging = self.staging.iter().map(|s| s.buffer.size()).sum();
        (ring, staging)
    }

    /// Waits for the next streamed unit (which must be shard `expected_shard`),
    /// records its copy into a slot on `encoder`, and returns the slot.
    pub fn acquire(
        &mut self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        expected_shard: usize,
    ) -> Result<&wgpu::Buffer> {
        // The reader needs a free staging buffer to make progress on the next unit.
        let lent = self.staging.len() - self.held.len() - self.unsubmitted.len();
        self.recycle(ctx, lent == 0)?;
        let reader = self.reader.as_mut().ok_or_else(|| GpuError::Stream("the shard reader stopped".into()))?;
        let t = Instant::now();
        let next = reader.next().ok_or_else(|| GpuError::Stream("the shard schedule ended".into()))?;
        self.stats.io_wait += t.elapsed();
        // The schedule advanced even if this read failed.
        self.cursor = (self.cursor + 1) % self.pass_len.max(1);
        let filled = next.map_err(|e| GpuError::Reader(Box::new(e)))?;
        if filled.shard != expected_shard {
            let idx = filled.dest.index;
            if let Some(r) = self.reader.as_mut() {
                r.recycle(filled.dest);
            }
            return Err(GpuError::Stream(format!(
                "expected shard {expected_shard}, the reader delivered {} (staging {idx})",
                filled.shard
            )));
        }
        let idx = filled.dest.index;
        let len = (filled.len as u64).div_ceil(4) * 4;
        let st = &mut self.staging[idx];
        st.view = None;
        st.buffer.unmap();
        let slot = self.next_slot;
        self.next_slot = (self.next_slot + 1) % self.slots.len();
        if ctx.profiling() {
            // Time the upload on its own: submit just the copy and wait for it.
            let t = Instant::now();
            let mut enc =
                ctx.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("upload") });
            enc.copy_buffer_to_buffer(&st.buffer, 0, &self.slots[slot], 0, len);
            let index = ctx.queue().submit([enc.finish()]);
            ctx.wait(Some(index))?;
            self.stats.upload += t.elapsed();
        } else {
            encoder.copy_buffer_to_buffer(&st.buffer, 0, &self.slots[slot], 0, len);
        }
        self.unsubmitted.push(idx);
        self.stats.units += 1;
        self.stats.bytes += filled.len as u64;
        Ok(&self.slots[slot])
    }

    /// Call after submitting the work recorded since the last `acquire`: the
    /// staging buffers it copied from are queued for re-mapping.
    pub fn submitted(&mut self) {
        for idx in self.unsubmitted.drain(..) {
            let st = &self.staging[idx];
            st.ready.store(false, Ordering::Release);
            let ready = st.ready.clone();
            st.buffer.slice(..).map_async(wgpu::MapMode::Write, move |r| {
                if r.is_ok() {
                    ready.store(true, Ordering::Release);
                }
            });
            self.held.push_back(idx);
        }
    }

    /// Lends re-mapped staging buffers back to the reader; with `block`, waits
    /// until at least one is.
    fn recycle(&mut self, ctx: &GpuContext, block: bool) -> Result<()> {
        let t = Instant::now();
        loop {
            let _ = ctx.device().poll(wgpu::PollType::Poll);
            let mut any = false;
            while let Some(&idx) = self.held.front() {
                if !self.staging[idx].ready.load(Ordering::Acquire) {
                    break;
                }
                self.held.pop_front();
                let st = &mut self.staging[idx];
                let (view, ptr) = map_view(idx, &st.buffer)?;
                let len = st.buffer.size() as usize;
                st.view = Some(view);
                if let Some(r) = self.reader.as_mut() {
                    r.recycle(StagingDest { index: idx, ptr, len });
                }
                any = true;
            }
            if any || !block || self.held.is_empty() {
                break;
            }
            ctx.wait(None)?;
        }
        self.stats.remap_wait += t.elapsed();
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> RingStats {
        self.stats.clone()
    }

    /// The reader's counters.
    pub fn reader_stats(&self) -> Option<ReaderStats> {
        self.reader.as_ref().map(|r| r.stats())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Stop the workers before the mappings they write into go away.
        self.reader = None;
        for s in &mut self.staging {
            s.view = None;
        }
    }
}
