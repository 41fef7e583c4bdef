//! Memory: [`BufView`] (a typed window on a buffer, what every kernel binds),
//! layer weight slots ([`SlotLayout`], [`SlotPool`]), the KV cache
//! ([`KvCache`]), reusable activation buffers ([`BufferPool`]) and the pool of
//! uniform buffers behind every dispatch's parameters.
//!
//! Everything is sized once (or grows to a high-water mark and stays): no
//! buffer is created per token. Bind groups are created per dispatch: they
//! are small descriptor writes, cheaper than the hashing a cache would need
//! at this rate (a cache keyed by buffer ids and offsets is a possible later
//! step).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::device::GpuContext;
use crate::error::{GpuError, Result};

/// Byte alignment of every tensor inside a slot: the storage binding offset
/// alignment of every adapter wgpu supports.
pub const TENSOR_ALIGN: u64 = 256;

/// A byte range of a buffer that a kernel binds as one tensor.
#[derive(Clone, Copy, Debug)]
pub struct BufView<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

impl<'a> BufView<'a> {
    /// `size` bytes from `offset`.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        BufView { buffer, offset, size }
    }

    /// The whole buffer.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        BufView { buffer, offset: 0, size: buffer.size() }
    }

    /// A sub-range, relative to this view.
    pub fn slice(&self, offset: u64, size: u64) -> Result<Self> {
        if offset.checked_add(size).is_none_or(|end| end > self.size) {
            return Err(GpuError::arg(
                "BufView::slice",
                "range",
                format!("{offset}+{size} exceeds the view's {} bytes", self.size),
            ));
        }
        Ok(BufView { buffer: self.buffer, offset: self.offset + offset, size })
    }

    /// Number of whole f32 values.
    pub fn len_f32(&self) -> u64 {
        self.size / 4
    }

    /// Checks that the view lies inside its buffer.
    pub(crate) fn check(&self, op: &'static str, arg: &'static str) -> Result<()> {
        if self.offset.checked_add(self.size).is_none_or(|end| end > self.buffer.size()) {
            return Err(GpuError::arg(
                op,
                arg,
                format!(
                    "view {}+{} runs past the end of its {}-byte buffer",
                    self.offset,
                    self.size,
                    self.buffer.size()
                ),
            ));
        }
        Ok(())
    }

    /// Checks that `elems` f32 values fit.
    pub(crate) fn need_f32(&self, op: &'static str, arg: &'static str, elems: u64) -> Result<()> {
        self.check(op, arg)?;
        if elems * 4 > self.size {
            return Err(GpuError::arg(
                op,
                arg,
                format!("needs {elems} f32 values ({} bytes), the view has {} bytes", elems * 4, self.size),
            ));
        }
        Ok(())
    }
}

/// Offsets of a layer's tensors inside one slot buffer: each tensor starts
/// at a multiple of [`TENSOR_ALIGN`], so kernels bind it directly.
#[derive(Clone, Debug, Default)]
pub struct SlotLayout {
    entries: Vec<(String, u64, u64)>,
    end: u64,
}

impl SlotLayout {
    /// An empty layout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places a tensor of `bytes`; returns its offset.
    pub fn push(&mut self, name: impl Into<String>, bytes: u64) -> u64 {
        let off = self.end.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
        self.entries.push((name.into(), off, bytes));
        self.end = off + bytes;
        off
    }

    /// `(offset, bytes)` of a named tensor.
    pub fn get(&self, name: &str) -> Option<(u64, u64)> {
        self.entries.iter().find(|e| e.0 == name).map(|e| (e.1, e.2))
    }

    /// Bytes a slot needs (rounded up to [`TENSOR_ALIGN`]).
    pub fn total(&self) -> u64 {
        self.end.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN
    }

    /// The tensors in placement order: `(name, offset, bytes)`.
    pub fn entries(&self) -> &[(String, u64, u64)] {
        &self.entries
    }
}

/// A fixed ring of equally sized weight slots, allocated once. Which slot a
/// layer uses, and when it may be overwritten (after the submission that
/// reads it completes), is the streaming scheduler's business.
#[derive(Debug)]
pub struct SlotPool {
    slots: Vec<wgpu::Buffer>,
    slot_bytes: u64,
}

impl SlotPool {
    /// `count` slots of `slot_bytes` each (STORAGE | COPY_DST | COPY_SRC).
    pub fn new(ctx: &GpuContext, label: &str, count: usize, slot_bytes: u64) -> Result<Self> {
        let slot_bytes = slot_bytes.max(TENSOR_ALIGN).div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
        if slot_bytes > ctx.caps().max_buffer {
            return Err(GpuError::arg(
                "SlotPool::new",
                "slot_bytes",
                format!(
                    "{slot_bytes} bytes exceeds the adapter's largest buffer ({} bytes); split the layer",
                    ctx.caps().max_buffer
                ),
            ));
        }
        let slots = (0..count).map(|i| ctx.create_storage_buffer(&format!("{label}[{i}]"), slot_bytes)).collect();
        Ok(SlotPool { slots, slot_bytes })
    }

    /// Slot `i`.
    pub fn slot(&self, i: usize) -> Option<&wgpu::Buffer> {
        self.slots.get(i)
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the pool has no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> u64 {
        self.slot_bytes
    }
}

/// Shape of a KV cache: per layer, k and v are each
/// `[batch, kv_heads, s_max, head_dim]` f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Sequences.
    pub batch: u32,
    /// Key/value heads.
    pub kv_heads: u32,
    /// Slots per sequence (the context length).
    pub s_max: u32,
    /// Values per head.
    pub head_dim: u32,
    /// Store f16 instead of f32 (half the memory; head_dim must be even).
    pub f16: bool,
}

impl KvLayout {
    /// Bytes of one k (or v) tensor of one layer.
    pub fn tensor_bytes(&self) -> u64 {
        let elem = if self.f16 { 2 } else { 4 };
        (u64::from(self.batch) * u64::from(self.kv_heads) * u64::from(self.s_max) * u64::from(self.head_dim) * elem)
            .div_ceil(4)
            * 4
    }

    /// Index (in f32 values) of `(b, h, slot, 0)`.
    pub fn index(&self, b: u32, h: u32, slot: u32) -> u64 {
        ((u64::from(b) * u64::from(self.kv_heads) + u64::from(h)) * u64::from(self.s_max) + u64::from(slot))
            * u64::from(self.head_dim)
    }
}

/// The KV cache of a model: one buffer per layer holding k then v (v at a
/// [`TENSOR_ALIGN`]ed offset), allocated once.
#[derive(Debug)]
pub struct KvCache {
    layout: KvLayout,
    v_offset: u64,
    layers: Vec<wgpu::Buffer>,
}

impl KvCache {
    /// Allocates `layers` layers of `layout`.
    pub fn new(ctx: &GpuContext, layers: usize, layout: KvLayout) -> Result<Self> {
        if layout.f16 && !layout.head_dim.is_multiple_of(2) {
            return Err(GpuError::arg(
                "KvCache::new",
                "layout",
                format!("an f16 cache needs an even head_dim, not {}", layout.head_dim),
            ));
        }
        let t = layout.tensor_bytes();
        if t == 0 || t > ctx.caps().max_binding {
            return Err(GpuError::arg(
                "KvCache::new",
                "layout",
                format!(
                    "one k tensor is {t} bytes; it must be non-empty and at most the adapter's largest binding ({} bytes): lower s_max or batch",
                    ctx.caps().max_binding
                ),
            ));
        }
        let v_offset = t.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
        let layers = (0..layers).map(|i| ctx.create_storage_buffer(&format!("kv[{i}]"), v_offset + t)).collect();
        Ok(KvCache { layout, v_offset, layers })
    }

    /// The shape.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// The k tensor of `layer`.
    pub fn k(&self, layer: usize) -> Option<BufView<'_>> {
        self.layers.get(layer).map(|b| BufView::new(b, 0, self.layout.tensor_bytes()))
    }

    /// The v tensor of `layer`.
    pub fn v(&self, layer: usize) -> Option<BufView<'_>> {
        self.layers.get(layer).map(|b| BufView::new(b, self.v_offset, self.layout.tensor_bytes()))
    }
}

/// Named activation buffers that grow to their high-water mark and are then
/// reused: `get("hidden", bytes)` allocates only when `bytes` exceeds what
/// the buffer of that name already has.
#[derive(Default)]
pub struct BufferPool {
    map: Mutex<HashMap<String, wgpu::Buffer>>,
}

impl BufferPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// The buffer named `name`, at least `bytes` long (STORAGE | COPY_SRC | COPY_DST).
    pub fn get(&self, ctx: &GpuContext, name: &str, bytes: u64) -> wgpu::Buffer {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get(name) {
            if b.size() >= bytes {
                return b.clone();
            }
        }
        // grow with headroom so a slowly growing prompt does not reallocate each step
        let size = bytes.max(256).next_power_of_two().max(bytes);
        let b = ctx.create_storage_buffer(name, size);
        map.insert(name.to_string(), b.clone());
        b
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.map.lock().map(|m| m.values().map(|b| b.size()).sum()).unwrap_or(0)
    }
}

/// Bytes of one uniform chunk: 256 dispatches at 256-byte alignment.
const UNIFORM_CHUNK: u64 = 64 * 1024;

/// One uniform buffer and the CPU copy of its contents for the current
/// recording (its capacity is kept between uses).
pub(crate) struct UniformChunk {
    buffer: wgpu::Buffer,
    data: Vec<u8>,
}

/// Free uniform chunks. A [`Recorder`](crate::Recorder) leases chunks,
/// writes each dispatch's parameters at increasing 256-byte aligned offsets,
/// uploads them with one `write_buffer` per chunk just before it submits (so
/// they land before its commands run) and returns the chunks after
/// submitting: a chunk is never rewritten while a recording that uses it is
/// still unsubmitted. In steady state nothing is allocated.
#[derive(Default)]
pub struct UniformPool {
    free: Mutex<Vec<UniformChunk>>,
}

impl UniformPool {
    fn take(&self, device: &wgpu::Device) -> UniformChunk {
        let chunk = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        chunk.unwrap_or_else(|| UniformChunk {
            buffer: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("airllm.uniforms"),
                size: UNIFORM_CHUNK,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            data: Vec::with_capacity(UNIFORM_CHUNK as usize),
        })
    }

    fn give_back(&self, chunks: &mut Vec<UniformChunk>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for mut c in chunks.drain(..) {
            c.data.clear();
            free.push(c);
        }
    }
}

/// The uniform chunks of one recording.
pub(crate) struct UniformLease<'a> {
    pool: &'a UniformPool,
    chunks: Vec<UniformChunk>,
}

impl<'a> UniformLease<'a> {
    pub(crate) fn new(pool: &'a UniformPool) -> Self {
        UniformLease { pool, chunks: Vec::new() }
    }

    /// Stores `params`; returns (chunk index, offset, bound size).
    pub(crate) fn push(&mut self, device: &wgpu::Device, align: u64, params: &[u8]) -> (usize, u64, u64) {
        let size = (params.len() as u64).max(16).div_ceil(16) * 16;
        let fits = |c: &UniformChunk| (c.data.len() as u64).div_ceil(align) * align + size <= UNIFORM_CHUNK;
        if self.chunks.last().is_none_or(|c| !fits(c)) {
            self.chunks.push(self.pool.take(device));
        }
        let idx = self.chunks.len() - 1;
        let c = &mut self.chunks[idx];
        let off = (c.data.len() as u64).div_ceil(align) * align;
        c.data.resize(off as usize, 0);
        c.data.extend_from_slice(params);
        c.data.resize((off + size) as usize, 0);
        (idx, off, size)
    }

    pub(crate) fn buffer(&self, idx: usize) -> &wgpu::Buffer {
        &self.chunks[idx].buffer
    }

    /// Uploads every chunk's parameters (call right before submitting).
    pub(crate) fn flush(&self, queue: &wgpu::Queue) {
        for c in &self.chunks {
            if !c.data.is_empty() {
                queue.write_buffer(&c.buffer, 0, &c.data);
            }
        }
    }
}

impl Drop for UniformLease<'_> {
    fn drop(&mut self) {
        self.pool.give_back(&mut self.chunks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_layout_aligns() {
        let mut l = SlotLayout::new();
        assert_eq!(l.push("a", 10), 0);
        assert_eq!(l.push("b", 300), 256);
        assert_eq!(l.push("c", 1), 768);
        assert_eq!(l.total(), 1024);
        assert_eq!(l.get("b"), Some((256, 300)));
    }

    #[test]
    fn kv_index() {
        let l = KvLayout { batch: 2, kv_heads: 3, s_max: 5, head_dim: 4, f16: false };
        assert_eq!(l.index(1, 2, 3), ((3 + 2) * 5 + 3) * 4);
        assert_eq!(l.tensor_bytes(), 2 * 3 * 5 * 4 * 4);
    }
}
