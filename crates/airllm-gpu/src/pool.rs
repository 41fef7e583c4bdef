//! Memory: [`BufView`] (a typed window on a buffer, what every kernel binds),
//! the paged KV cache ([`KvCache`], [`KvLayout`]) and the pool of uniform
//! buffers behind every dispatch's parameters. Weight slots and staging are
//! the [`Ring`](crate::Ring)'s.
//!
//! Everything is sized once (or grows to a high-water mark and stays): no
//! buffer is created per token. Bind groups are cached per (pipeline, bound
//! ranges) where the owner asks for it ([`bind_cache`](crate::bind_cache)).

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

/// Shape of a paged KV cache: a pool of `num_blocks` blocks of `block` slots;
/// per layer, k and v are each `[num_blocks, kv_heads, block, head_dim]` f32
/// (or f16). Which blocks a sequence owns is the caller's block table (see
/// [`kernels::paged`](crate::kernels::paged)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    /// Blocks in the pool.
    pub num_blocks: u32,
    /// Slots per block.
    pub block: u32,
    /// Key/value heads.
    pub kv_heads: u32,
    /// Values per head.
    pub head_dim: u32,
    /// Store f16 instead of f32 (half the memory; head_dim must be even).
    pub f16: bool,
    /// Only a K tensor is stored (multi-head latent attention): each cached row
    /// is `[latent | rope key]` and the value is its first values, read from the
    /// same tensor, so nothing is stored twice. [`KvCache::v`] is then the K tensor.
    pub k_only: bool,
}

impl KvLayout {
    /// Bytes per stored value.
    pub fn elem_bytes(&self) -> u64 {
        if self.f16 { 2 } else { 4 }
    }

    /// Bytes of one k (or v) tensor of one layer.
    pub fn tensor_bytes(&self) -> u64 {
        (u64::from(self.num_blocks)
            * u64::from(self.block)
            * u64::from(self.kv_heads)
            * u64::from(self.head_dim)
            * self.elem_bytes())
        .div_ceil(4)
            * 4
    }

    /// Bytes one layer's buffer takes (k, then v at an aligned offset; k alone when `k_only`).
    pub fn layer_bytes(&self) -> u64 {
        if self.k_only {
            return self.tensor_bytes();
        }
        self.tensor_bytes().div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN + self.tensor_bytes()
    }

    /// Tensors stored per layer: 2 (k and v), or 1 when `k_only`.
    pub fn tensors_per_layer(&self) -> u64 {
        if self.k_only { 1 } else { 2 }
    }

    /// Index (in values) of `(block, head, offset in block, 0)`.
    pub fn index(&self, block: u32, h: u32, off: u32) -> u64 {
        ((u64::from(block) * u64::from(self.kv_heads) + u64::from(h)) * u64::from(self.block) + u64::from(off))
            * u64::from(self.head_dim)
    }
}

/// The KV cache of a model: one buffer per layer holding k then v (v at a
/// [`TENSOR_ALIGN`]ed offset), allocated once. Sequences come and go by
/// taking and returning blocks; the buffers never move.
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
                    "one k tensor is {t} bytes; it must be non-empty and at most the adapter's largest binding ({} bytes): lower the KV capacity (--kv-tokens / --max-context)",
                    ctx.caps().max_binding
                ),
            ));
        }
        // A k-only cache's "v" is its k tensor (offset 0).
        let v_offset = if layout.k_only { 0 } else { t.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN };
        let layers =
            (0..layers).map(|i| ctx.create_storage_buffer(&format!("kv[{i}]"), layout.layer_bytes())).collect();
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

    /// The v tensor of `layer` (the k tensor itself when the layout is `k_only`).
    pub fn v(&self, layer: usize) -> Option<BufView<'_>> {
        self.layers.get(layer).map(|b| BufView::new(b, self.v_offset, self.layout.tensor_bytes()))
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
        // In reverse, so the next recording takes them in the same order and
        // its k-th dispatch binds the same range (what the bind group cache keys on).
        for mut c in chunks.drain(..).rev() {
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
    fn kv_index() {
        let l = KvLayout { num_blocks: 2, block: 5, kv_heads: 3, head_dim: 4, f16: false, k_only: false };
        assert_eq!(l.index(1, 2, 3), ((3 + 2) * 5 + 3) * 4);
        assert_eq!(l.tensor_bytes(), 2 * 3 * 5 * 4 * 4);
        assert_eq!(l.layer_bytes(), 512 + 480);
    }
}
