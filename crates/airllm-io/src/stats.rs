//! Reader statistics: bytes, busy time, throughput and how long the consumer
//! waited for each shard.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::mode::ReadMode;

/// How long the consumer waited in [`Reader::next`](crate::Reader::next) for
/// one shard, over every time the schedule named it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardWait {
    /// Deliveries of this shard (successful or not).
    pub count: u64,
    /// Total time blocked in `next()` for it.
    pub total: Duration,
    /// Longest single wait.
    pub max: Duration,
}

impl ShardWait {
    /// Mean wait, zero if never delivered.
    pub fn mean(&self) -> Duration {
        if self.count == 0 { Duration::ZERO } else { self.total.div_f64(self.count as f64) }
    }
}

/// A snapshot of a reader's statistics, from [`Reader::stats`](crate::Reader::stats).
#[derive(Clone, Debug, Default)]
pub struct ReaderStats {
    /// Mode in use.
    pub mode: ReadMode,
    /// Worker threads.
    pub threads: usize,
    /// Maximum shards in flight (read started, not yet recycled).
    pub depth: usize,
    /// Chunk size reads are split into.
    pub chunk_bytes: usize,
    /// Shard reads completed without error (including ones not yet delivered).
    pub shards: u64,
    /// Bytes of those reads.
    pub bytes: u64,
    /// Shards handed to the consumer by `next()`.
    pub delivered: u64,
    /// Errors returned by `next()`.
    pub errors: u64,
    /// Wall time during which at least one read was in progress.
    pub busy: Duration,
    /// Time the worker threads spent in read calls, summed over threads.
    pub worker_time: Duration,
    /// Time since the reader was created.
    pub elapsed: Duration,
    /// Total time the consumer spent blocked in `next()`.
    pub wait_total: Duration,
    /// Longest single `next()` wait.
    pub wait_max: Duration,
    /// Per shard index: waits in `next()`.
    pub per_shard: Vec<ShardWait>,
    /// Most destinations in flight at once (never above `depth`).
    pub max_in_flight: usize,
    /// Files read buffered because the file system refused O_DIRECT.
    pub direct_fallbacks: u64,
}

impl ReaderStats {
    /// Read throughput while busy, in GB/s (10^9 bytes per second).
    pub fn gbps(&self) -> f64 {
        gbps(self.bytes, self.busy)
    }

    /// Bytes over the reader's whole life, in GB/s: what the consumer saw.
    pub fn effective_gbps(&self) -> f64 {
        gbps(self.bytes, self.elapsed)
    }
}

/// `bytes / time` in GB/s (10^9 bytes per second); zero for zero time.
pub fn gbps(bytes: u64, time: Duration) -> f64 {
    let s = time.as_secs_f64();
    if s > 0.0 { bytes as f64 / s / 1e9 } else { 0.0 }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl fmt::Display for ReaderStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "io: {} mode, {} threads, depth {}, {} KiB chunks",
            self.mode,
            self.threads,
            self.depth,
            self.chunk_bytes >> 10
        )?;
        writeln!(
            f,
            "    read {} shards, {:.3} GB in {:.1} ms busy: {:.2} GB/s ({:.2} GB/s over {:.1} ms elapsed)",
            self.shards,
            self.bytes as f64 / 1e9,
            ms(self.busy),
            self.gbps(),
            self.effective_gbps(),
            ms(self.elapsed)
        )?;
        write!(
            f,
            "    delivered {}, errors {}, consumer waited {:.1} ms in total, {:.1} ms at most; max in flight {}",
            self.delivered,
            self.errors,
            ms(self.wait_total),
            ms(self.wait_max),
            self.max_in_flight
        )?;
        if self.direct_fallbacks > 0 {
            write!(f, "\n    O_DIRECT refused for {} files (read buffered)", self.direct_fallbacks)?;
        }
        Ok(())
    }
}

/// Counters the worker threads update.
#[derive(Default)]
pub(crate) struct WorkerCounters {
    pub shards: AtomicU64,
    pub bytes: AtomicU64,
    pub read_nanos: AtomicU64,
    busy: Mutex<BusyClock>,
}

#[derive(Default)]
struct BusyClock {
    active: usize,
    since: Option<Instant>,
    total: Duration,
}

impl WorkerCounters {
    fn clock(&self) -> std::sync::MutexGuard<'_, BusyClock> {
        self.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A shard read started.
    pub fn begin(&self) {
        let mut c = self.clock();
        if c.active == 0 {
            c.since = Some(Instant::now());
        }
        c.active += 1;
    }

    /// A shard read ended (successfully or not).
    pub fn end(&self) {
        let mut c = self.clock();
        c.active = c.active.saturating_sub(1);
        if c.active == 0 {
            if let Some(since) = c.since.take() {
                c.total += since.elapsed();
            }
        }
    }

    /// Busy time so far, including a read in progress.
    pub fn busy(&self) -> Duration {
        let c = self.clock();
        c.total + c.since.map_or(Duration::ZERO, |s| s.elapsed())
    }

    pub fn add_read_time(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.read_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}
