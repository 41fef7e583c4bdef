//! A cache of bind groups keyed by (pipeline, every bound buffer range),
//! uniform parameters included.
//!
//! Why it works: a pass over resident units records the same dispatches in
//! the same order every step, and the [`UniformPool`](crate::pool::UniformPool)
//! hands a recording its chunks in the same order each time, so the k-th
//! dispatch binds the same uniform range (with new contents) and the same
//! weight, activation and cache ranges as it did one step earlier. Creating a
//! bind group is a validated descriptor write in wgpu-core and the driver;
//! hashing a handful of buffer ids is far cheaper.
//!
//! The cache is off by default ([`GpuContext::set_bind_group_cache`]): a
//! cached bind group keeps its buffers alive, which suits an engine whose
//! buffers live as long as the context, not a test suite that makes fresh
//! buffers for every launch. It holds at most [`MAX_ENTRIES`] bind groups
//! and starts over when full, so buffers an owner dropped are released at
//! the latest then (or at [`GpuContext::clear_bind_groups`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::device::GpuContext;
use crate::pipeline::PipelineKey;

/// Bind groups kept before the cache starts over.
pub const MAX_ENTRIES: usize = 16 * 1024;

/// One bound range: (binding, buffer, offset, size).
pub(crate) type Entry = (u32, wgpu::Buffer, u64, u64);

#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct BindKey {
    pub(crate) pipeline: PipelineKey,
    pub(crate) entries: Vec<Entry>,
}

/// Hit and miss counters of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindCacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Bind groups created (cache misses, or the cache is off).
    pub created: u64,
    /// Bind groups held now.
    pub entries: usize,
}

#[derive(Default)]
pub(crate) struct BindGroupCache {
    enabled: AtomicBool,
    map: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    hits: AtomicU64,
    created: AtomicU64,
}

impl BindGroupCache {
    /// The bind group of `key`, made by `make` on a miss.
    pub(crate) fn get(&self, key: BindKey, make: impl FnOnce(&[Entry]) -> wgpu::BindGroup) -> wgpu::BindGroup {
        if !self.enabled.load(Ordering::Relaxed) {
            self.created.fetch_add(1, Ordering::Relaxed);
            return make(&key.entries);
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = map.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return g.clone();
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        let g = make(&key.entries);
        self.created.fetch_add(1, Ordering::Relaxed);
        map.insert(key, g.clone());
        g
    }
}

impl GpuContext {
    /// Turns the bind group cache on or off (off by default; see
    /// [`bind_cache`](crate::bind_cache)). Turning it off empties it.
    pub fn set_bind_group_cache(&self, on: bool) {
        self.bind_groups.enabled.store(on, Ordering::Relaxed);
        if !on {
            self.clear_bind_groups();
        }
    }

    /// Drops every cached bind group (and with them the last references to
    /// buffers their owners have dropped).
    pub fn clear_bind_groups(&self) {
        self.bind_groups.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Hits, creations and size of the bind group cache.
    pub fn bind_group_stats(&self) -> BindCacheStats {
        BindCacheStats {
            hits: self.bind_groups.hits.load(Ordering::Relaxed),
            created: self.bind_groups.created.load(Ordering::Relaxed),
            entries: self.bind_groups.map.lock().map(|m| m.len()).unwrap_or(0),
        }
    }
}
