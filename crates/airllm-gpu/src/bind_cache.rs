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

#[cfg(test)]
mod tests {
    use crate::BufView;
    use crate::kernels::elementwise::{self, Mat};

    /// Same dispatches, new parameters every recording: cached bind groups
    /// must bind the new values (the uniform range is reused, its contents
    /// change), and a whole recording is one compute pass with barriers
    /// between dependent dispatches.
    #[test]
    fn cached_bind_groups_see_new_parameters() {
        let Some(base) = crate::testing::gpu_or_skip() else { return };
        let ctx = base.with_caps(|_| {});
        ctx.set_bind_group_cache(true);
        let n = 37u32;
        let x = ctx.upload_f32("x", &vec![1.0; n as usize]);
        let b = ctx.upload_f32("b", &vec![0.5; n as usize]);
        let mut want = vec![1.0f32; n as usize];
        for step in 0..4 {
            let s = 1.0 + step as f32;
            let mut rec = ctx.recorder("cached");
            // x = x * s + b, then x *= 2: each dispatch reads the one before it
            elementwise::scale(&mut rec, 1, n, Mat { view: BufView::whole(&x), stride: n, off: 0 }, s).expect("scale");
            elementwise::bias_add(
                &mut rec,
                1,
                n,
                Mat { view: BufView::whole(&x), stride: n, off: 0 },
                BufView::whole(&b),
            )
            .expect("bias");
            elementwise::scale(&mut rec, 1, n, Mat { view: BufView::whole(&x), stride: n, off: 0 }, 2.0)
                .expect("scale");
            rec.submit().expect("submit");
            for w in &mut want {
                *w = (*w * s + 0.5) * 2.0;
            }
            let got = crate::read_buffer_f32(&ctx, &x, 0, n as usize).expect("read");
            assert_eq!(got, want, "step {step}");
        }
        let st = ctx.bind_group_stats();
        assert_eq!(st.created, 3, "{st:?}");
        assert_eq!(st.hits, 9, "{st:?}");
        ctx.set_bind_group_cache(false);
        assert_eq!(ctx.bind_group_stats().entries, 0);
    }
}
