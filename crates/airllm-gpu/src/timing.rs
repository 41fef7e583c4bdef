//! GPU kernel timing. With [`GpuContext::set_profiling`] on (and the
//! adapter's TIMESTAMP_QUERY), each kernel's compute pass writes begin/end
//! timestamps; [`Recorder::submit`](crate::Recorder::submit) resolves them
//! into a readback buffer, and [`GpuContext::collect_timings`] (or
//! [`GpuContext::take_profile`]) later waits for them, scales by
//! `queue.get_timestamp_period()` and adds them to a per-label profile. Off
//! by default: each dispatch then gets its own compute pass.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::device::GpuContext;
use crate::error::Result;

/// Timestamp pairs per query set.
const PAIRS: u32 = 256;

/// Time spent in one kind of kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// Profile label, e.g. `gemv/q4_0`.
    pub label: String,
    /// Total GPU time, nanoseconds.
    pub total_ns: f64,
    /// Launches.
    pub count: u64,
}

/// Per-kernel GPU times, largest total first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuProfile {
    /// One entry per label.
    pub kernels: Vec<KernelTime>,
}

impl GpuProfile {
    /// Sum over all kernels, nanoseconds.
    pub fn total_ns(&self) -> f64 {
        self.kernels.iter().map(|k| k.total_ns).sum()
    }
}

impl fmt::Display for GpuProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total_ns().max(1.0);
        writeln!(f, "{:<28} {:>12} {:>8} {:>12} {:>6}", "kernel", "total ms", "count", "mean us", "%")?;
        for k in &self.kernels {
            writeln!(
                f,
                "{:<28} {:>12.3} {:>8} {:>12.2} {:>6.1}",
                k.label,
                k.total_ns / 1e6,
                k.count,
                k.total_ns / 1e3 / k.count.max(1) as f64,
                100.0 * k.total_ns / total
            )?;
        }
        write!(f, "{:<28} {:>12.3}", "total", self.total_ns() / 1e6)
    }
}

/// Accumulated times (inside [`GpuContext`]).
#[derive(Default)]
pub(crate) struct Profiler {
    enabled: AtomicBool,
    totals: Mutex<BTreeMap<String, (f64, u64)>>,
    /// Timestamps of submitted recordings, not yet read.
    pending: Mutex<Vec<(TimerReadback, wgpu::SubmissionIndex)>>,
}

impl Profiler {
    pub(crate) fn defer(&self, rb: TimerReadback, index: wgpu::SubmissionIndex) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).push((rb, index));
    }

    pub(crate) fn add(&self, times: &[(String, f64)]) {
        let mut t = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        for (label, ns) in times {
            let e = t.entry(label.clone()).or_insert((0.0, 0));
            e.0 += ns;
            e.1 += 1;
        }
    }
}

impl GpuContext {
    /// Turns kernel timing on or off. Returns whether timing is possible
    /// (the adapter offers TIMESTAMP_QUERY).
    pub fn set_profiling(&self, on: bool) -> bool {
        self.profiler.enabled.store(on, Ordering::Relaxed);
        self.caps().timestamps
    }

    /// Whether kernel timing is on.
    pub fn profiling(&self) -> bool {
        self.profiler.enabled.load(Ordering::Relaxed)
    }

    /// Reads the timestamps of every recording submitted with profiling on
    /// (waiting for them to finish), adds them to the profile, and returns
    /// their sum in nanoseconds.
    pub fn collect_timings(&self) -> Result<f64> {
        let pending = std::mem::take(&mut *self.profiler.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut total = 0.0;
        for (rb, index) in pending {
            let times = rb.collect(self, index)?;
            total += times.iter().map(|(_, ns)| ns).sum::<f64>();
            self.profiler.add(&times);
        }
        Ok(total)
    }

    /// The times collected so far (after reading any still pending), and
    /// resets them.
    pub fn take_profile(&self) -> GpuProfile {
        if let Err(e) = self.collect_timings() {
            tracing::warn!("reading GPU timestamps failed: {e}");
        }
        let mut t = self.profiler.totals.lock().unwrap_or_else(|p| p.into_inner());
        let mut kernels: Vec<KernelTime> = std::mem::take(&mut *t)
            .into_iter()
            .map(|(label, (total_ns, count))| KernelTime { label, total_ns, count })
            .collect();
        kernels.sort_by(|a, b| b.total_ns.total_cmp(&a.total_ns));
        GpuProfile { kernels }
    }
}

/// Query sets of one recording.
#[derive(Default)]
pub(crate) struct PassTimer {
    sets: Vec<wgpu::QuerySet>,
    labels: Vec<String>,
}

impl PassTimer {
    pub(crate) fn next(&mut self, device: &wgpu::Device, label: String) -> wgpu::ComputePassTimestampWrites<'_> {
        let i = self.labels.len() as u32;
        if i.is_multiple_of(PAIRS) {
            self.sets.push(device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("airllm.timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * PAIRS,
            }));
        }
        self.labels.push(label);
        let j = i % PAIRS;
        wgpu::ComputePassTimestampWrites {
            query_set: &self.sets[(i / PAIRS) as usize],
            beginning_of_pass_write_index: Some(2 * j),
            end_of_pass_write_index: Some(2 * j + 1),
        }
    }

    pub(crate) fn resolve(self, device: &wgpu::Device, encoder: &mut wgpu::CommandEncoder) -> TimerReadback {
        let set_bytes = u64::from(2 * PAIRS) * 8;
        let bytes = (self.sets.len() as u64 * set_bytes).max(8);
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("airllm.timestamps.resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("airllm.timestamps.read"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let n = self.labels.len() as u32;
        for (s, set) in self.sets.iter().enumerate() {
            let used = (n - s as u32 * PAIRS).min(PAIRS);
            encoder.resolve_query_set(set, 0..2 * used, &resolve, s as u64 * set_bytes);
        }
        encoder.copy_buffer_to_buffer(&resolve, 0, &read, 0, bytes);
        TimerReadback { read, labels: self.labels }
    }
}

pub(crate) struct TimerReadback {
    read: wgpu::Buffer,
    labels: Vec<String>,
}

impl TimerReadback {
    pub(crate) fn collect(self, ctx: &GpuContext, index: wgpu::SubmissionIndex) -> Result<Vec<(String, f64)>> {
        let raw = crate::readback::map_read(ctx, &self.read, 0, self.read.size(), Some(index))?;
        let ticks: Vec<u64> =
            raw.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect();
        let period = f64::from(ctx.queue().get_timestamp_period());
        let set_len = 2 * PAIRS as usize;
        Ok(self
            .labels
            .into_iter()
            .enumerate()
            .map(|(i, label)| {
                let base = (i / PAIRS as usize) * set_len + 2 * (i % PAIRS as usize);
                let a = ticks.get(base).copied().unwrap_or(0);
                let b = ticks.get(base + 1).copied().unwrap_or(a);
                (label, b.saturating_sub(a) as f64 * period)
            })
            .collect())
    }
}
