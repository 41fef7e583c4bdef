//! The prefetching reader: walks a schedule of shard indices, keeps up to
//! `depth` shards in flight in lent destinations, and hands them back in
//! schedule order.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::dest::Destination;
use crate::error::IoError;
use crate::mode::{self, ReadMode};
use crate::stats::{ReaderStats, ShardWait};
use crate::worker::{Job, Pool};

/// One shard file, as the manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    /// The file.
    pub path: PathBuf,
    /// Bytes to read from its start (the whole file, for airllm shards).
    pub len: u64,
    /// xxh3_64 of those bytes, checked when [`ReaderOptions::verify`] is on.
    pub checksum: Option<u64>,
}

impl ShardSpec {
    /// A shard without a checksum.
    pub fn new(path: impl Into<PathBuf>, len: u64) -> Self {
        ShardSpec { path: path.into(), len, checksum: None }
    }

    /// Describes an existing file by its current length, no checksum.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, IoError> {
        let path = path.into();
        match std::fs::metadata(&path) {
            Ok(m) => Ok(ShardSpec { path, len: m.len(), checksum: None }),
            Err(source) => Err(IoError::Open { path, source }),
        }
    }
}

/// How the reader reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderOptions {
    /// Most shards in flight at once (read started and not yet recycled).
    /// The effective depth is `min(depth, destinations.len())`.
    pub depth: usize,
    /// Worker threads.
    pub threads: usize,
    /// Large shards are split into chunks of this many bytes, read by
    /// different threads. Rounded up to a multiple of 4096.
    pub chunk_bytes: usize,
    /// How bytes move from file to destination.
    pub mode: ReadMode,
    /// Check each shard's xxh3 checksum (when its spec has one) after reading.
    /// Costs one pass over the bytes on a worker thread.
    pub verify: bool,
}

/// Default chunk size: see the crate docs for the measurement behind it.
pub const DEFAULT_CHUNK_BYTES: usize = 16 << 20;

impl Default for ReaderOptions {
    /// Depth 2, one thread per core (at most 16), 16 MiB chunks, the default
    /// mode, no verification.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        ReaderOptions {
            depth: 2,
            threads: cores.clamp(1, 16),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            mode: ReadMode::default(),
            verify: false,
        }
    }
}

/// A shard read into a destination, handed out by [`Reader::next`].
#[derive(Debug)]
pub struct Filled<D> {
    /// Index of the shard in the reader's shard list.
    pub shard: usize,
    /// Bytes written at the start of `dest`.
    pub len: usize,
    /// The destination, to give back with [`Reader::recycle`].
    pub dest: D,
    /// How long `next()` blocked for this shard.
    pub wait: Duration,
}

impl<D: AsRef<[u8]>> Filled<D> {
    /// The shard's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.dest.as_ref()[..self.len]
    }
}

/// A scheduled shard: queued with a read in flight, or already failed.
struct Slot<D> {
    shard: usize,
    job: Option<Arc<Job>>,
    dest: Option<D>,
    error: Option<IoError>,
}

/// Prefetching shard reader. See the [crate docs](crate) for an example.
///
/// Dropping it cancels queued reads, waits for the chunks being read at that
/// moment (at most one per thread, 64 MiB each at most) and joins its
/// threads: once `drop` returns nothing writes into any destination.
pub struct Reader<D: Destination> {
    shards: Vec<ShardSpec>,
    schedule: Box<dyn Iterator<Item = usize> + Send>,
    schedule_done: bool,
    /// Next shard index taken from the schedule but not started yet (no
    /// fitting destination free).
    pending: Option<usize>,
    free: Vec<D>,
    /// Destinations out of `free`: being read or held by the consumer.
    lent: usize,
    max_capacity: usize,
    queue: VecDeque<Slot<D>>,
    opts: ReaderOptions,
    started: Instant,
    // Consumer-side statistics.
    delivered: u64,
    errors: u64,
    wait_total: Duration,
    wait_max: Duration,
    per_shard: Vec<ShardWait>,
    max_in_flight: usize,
    direct_fallbacks: u64,
    /// Joined in `Drop` before any destination above is dropped.
    pool: Pool,
}

impl<D: Destination> Reader<D> {
    /// Starts a reader and the first `depth` reads.
    ///
    /// `schedule` yields shard indices in the order the consumer wants them;
    /// it may repeat and may be infinite. `destinations` are lent to the
    /// reader (see [`Destination`]); at most
    /// `min(opts.depth, destinations.len())` are in flight at once.
    pub fn new<S>(
        shards: Vec<ShardSpec>,
        schedule: S,
        destinations: Vec<D>,
        opts: ReaderOptions,
    ) -> Result<Self, IoError>
    where
        S: IntoIterator<Item = usize>,
        S::IntoIter: Send + 'static,
    {
        if opts.depth == 0 {
            return Err(IoError::InvalidOption { option: "depth", reason: "must be at least 1".into() });
        }
        if opts.threads == 0 {
            return Err(IoError::InvalidOption { option: "threads", reason: "must be at least 1".into() });
        }
        if destinations.is_empty() {
            return Err(IoError::InvalidOption {
                option: "destinations",
                reason: "lend at least one destination".into(),
            });
        }
        let mut opts = opts;
        opts.chunk_bytes = opts.chunk_bytes.max(1).div_ceil(crate::DIRECT_ALIGN) * crate::DIRECT_ALIGN;
        opts.depth = opts.depth.min(destinations.len());
        let pool = Pool::new(opts.threads, opts.chunk_bytes)?;
        let max_capacity = destinations.iter().map(Destination::capacity).max().unwrap_or(0);
        let mut reader = Reader {
            per_shard: vec![ShardWait::default(); shards.len()],
            shards,
            schedule: Box::new(schedule.into_iter()),
            schedule_done: false,
            pending: None,
            free: destinations,
            lent: 0,
            max_capacity,
            queue: VecDeque::new(),
            opts,
            started: Instant::now(),
            delivered: 0,
            errors: 0,
            wait_total: Duration::ZERO,
            wait_max: Duration::ZERO,
            max_in_flight: 0,
            direct_fallbacks: 0,
            pool,
        };
        reader.fill();
        Ok(reader)
    }

    /// The options in effect (depth clamped, chunk size rounded).
    pub fn options(&self) -> &ReaderOptions {
        &self.opts
    }

    /// The next shard in schedule order, blocking until it is fully read.
    /// `None` once the schedule is exhausted and everything was delivered.
    ///
    /// An `Err` is delivered at the failing shard's position; the stream
    /// goes on with the next shard after it (the failed read's destination
    /// is reused). `Err(Starved)` means every destination is held by the
    /// consumer: recycle one and call again.
    #[allow(clippy::should_implement_trait)] // blocking, and yields owned buffers to recycle
    pub fn next(&mut self) -> Option<Result<Filled<D>, IoError>> {
        let t0 = Instant::now();
        self.fill();
        let head = match self.queue.front() {
            Some(head) => head,
            None if self.pending.is_some() => return Some(Err(IoError::Starved { held: self.lent })),
            None => return None,
        };
        let workers_gone = match &head.job {
            Some(job) => !self.pool.wait(job),
            None => false,
        };
        let mut slot = self.queue.pop_front()?;
        let wait = t0.elapsed();
        self.record_wait(slot.shard, wait);
        let mut error = slot.error.take().or_else(|| slot.job.as_ref().and_then(|j| j.take_error()));
        if workers_gone && error.is_none() {
            let path = self.shards.get(slot.shard).map(|s| s.path.clone()).unwrap_or_default();
            error = Some(IoError::WorkerPanic { path, message: "worker threads exited".into() });
        }
        let result = match (error, slot.dest.take()) {
            (Some(e), dest) => {
                if let Some(d) = dest {
                    self.give_back(d);
                }
                self.errors += 1;
                Err(e)
            }
            (None, Some(dest)) => {
                self.delivered += 1;
                let len = usize::try_from(self.shards[slot.shard].len).unwrap_or(usize::MAX);
                Ok(Filled { shard: slot.shard, len, dest, wait })
            }
            (None, None) => Err(IoError::WorkerPanic {
                path: self.shards[slot.shard].path.clone(),
                message: "slot lost its destination".into(),
            }),
        };
        drop(slot);
        self.fill();
        Some(result)
    }

    /// Gives a destination back once the consumer is done with it (for the
    /// facade: once the GPU copy out of it completed). The reader may start
    /// the next read into it at once. Only recycle destinations this reader
    /// handed out.
    pub fn recycle(&mut self, dest: D) {
        self.max_capacity = self.max_capacity.max(dest.capacity());
        self.give_back(dest);
        self.fill();
    }

    /// Stops the reader (as dropping it does) and returns the destinations
    /// it holds: free ones and those of reads not yet delivered. Destinations
    /// the consumer holds stay with the consumer.
    pub fn into_destinations(mut self) -> Vec<D> {
        self.pool.shutdown();
        let mut out = std::mem::take(&mut self.free);
        out.extend(self.queue.drain(..).filter_map(|s| s.dest));
        out
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> ReaderStats {
        let c = &self.pool.shared.counters;
        ReaderStats {
            mode: self.opts.mode,
            threads: self.opts.threads,
            depth: self.opts.depth,
            chunk_bytes: self.opts.chunk_bytes,
            shards: c.shards.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            delivered: self.delivered,
            errors: self.errors,
            busy: c.busy(),
            worker_time: Duration::from_nanos(c.read_nanos.load(Ordering::Relaxed)),
            elapsed: self.started.elapsed(),
            wait_total: self.wait_total,
            wait_max: self.wait_max,
            per_shard: self.per_shard.clone(),
            max_in_flight: self.max_in_flight,
            direct_fallbacks: self.direct_fallbacks,
        }
    }

    fn record_wait(&mut self, shard: usize, wait: Duration) {
        self.wait_total += wait;
        self.wait_max = self.wait_max.max(wait);
        if let Some(w) = self.per_shard.get_mut(shard) {
            w.count += 1;
            w.total += wait;
            w.max = w.max.max(wait);
        }
    }

    fn give_back(&mut self, dest: D) {
        self.lent = self.lent.saturating_sub(1);
        self.free.push(dest);
    }

    /// Takes shards off the schedule while fewer than `depth` are queued,
    /// starting reads while fewer than `depth` destinations are lent and a
    /// fitting one is free. Failed entries (bad index, too large, open
    /// failure) queue without a destination.
    fn fill(&mut self) {
        while self.queue.len() < self.opts.depth {
            let shard = match self.pending.take() {
                Some(s) => s,
                None if self.schedule_done => return,
                None => match self.schedule.next() {
                    Some(s) => s,
                    None => {
                        self.schedule_done = true;
                        return;
                    }
                },
            };
            let Some(spec) = self.shards.get(shard) else {
                let error = IoError::BadIndex { index: shard, count: self.shards.len() };
                self.queue.push_back(Slot { shard, job: None, dest: None, error: Some(error) });
                continue;
            };
            if usize::try_from(spec.len).map_or(true, |l| l > self.max_capacity) {
                let error = IoError::TooLarge { path: spec.path.clone(), len: spec.len, capacity: self.max_capacity };
                self.queue.push_back(Slot { shard, job: None, dest: None, error: Some(error) });
                continue;
            }
            if self.lent >= self.opts.depth {
                self.pending = Some(shard);
                return;
            }
            // The smallest free destination that fits.
            let fit = self
                .free
                .iter()
                .enumerate()
                .filter(|(_, d)| d.capacity() as u64 >= spec.len)
                .min_by_key(|(_, d)| d.capacity())
                .map(|(i, _)| i);
            let Some(i) = fit else {
                // A large enough destination exists but is in use: wait.
                self.pending = Some(shard);
                return;
            };
            let dest = self.free.swap_remove(i);
            let slot = self.start(shard, dest);
            self.queue.push_back(slot);
        }
    }

    fn start(&mut self, shard: usize, mut dest: D) -> Slot<D> {
        let spec = &self.shards[shard];
        let opened = match mode::open(&spec.path, self.opts.mode, spec.len) {
            Ok(o) => o,
            Err(error) => {
                self.free.push(dest);
                return Slot { shard, job: None, dest: None, error: Some(error) };
            }
        };
        if opened.direct_refused {
            self.direct_fallbacks += 1;
        }
        let room = dest.capacity();
        let ptr = dest.as_mut_ptr();
        let checksum = if self.opts.verify { spec.checksum } else { None };
        let chunks = self.pool.chunks_for(spec.len);
        // SAFETY: the Destination contract makes `ptr` valid for `room >=
        // spec.len` bytes (checked in `fill`), lent to the reader; the slot
        // keeps `dest` (alive, unused) until the job is done.
        let job =
            Arc::new(unsafe { Job::new(spec.path.clone(), spec.len, checksum, ptr, room, opened.source, chunks) });
        self.lent += 1;
        self.max_in_flight = self.max_in_flight.max(self.lent);
        self.pool.submit(&job);
        Slot { shard, job: Some(job), dest: Some(dest), error: None }
    }
}

impl<D: Destination> Drop for Reader<D> {
    fn drop(&mut self) {
        // Join the workers before any destination (in `queue` or `free`) is
        // dropped; fields are dropped only after this returns.
        self.pool.shutdown();
    }
}
