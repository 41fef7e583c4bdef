//! The worker pool: threads that take chunk reads off a FIFO queue, write
//! them into destination memory and signal when a shard's last chunk lands.
//!
//! A shard is split into `chunk_bytes` pieces so several threads read one
//! large shard at once; chunks are queued in schedule order, so earlier
//! shards finish first. The last worker to finish a shard's chunk verifies
//! its checksum (off the consumer's thread), closes the file and reports.

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::dest::AlignedBuf;
use crate::error::IoError;
use crate::mode::{self, ShardCtx, Source};
use crate::stats::WorkerCounters;

/// Destination memory address shared with the workers.
#[derive(Clone, Copy)]
struct DestPtr(*mut u8);

// SAFETY: the pointer is only dereferenced by workers, on disjoint chunk
// ranges of memory the `Destination` contract lends exclusively to the
// reader until the job is done (and the reader joins the workers before it
// drops any destination).
unsafe impl Send for DestPtr {}
// SAFETY: as above; shared access only copies the address.
unsafe impl Sync for DestPtr {}

/// One shard read in flight.
pub(crate) struct Job {
    pub path: PathBuf,
    pub len: u64,
    /// Expected checksum, when verification is on.
    checksum: Option<u64>,
    dest: DestPtr,
    room: usize,
    /// Taken (closed, unmapped) by the worker that finishes the job, so the
    /// consumer thread never pays for an munmap.
    source: RwLock<Option<Source>>,
    remaining: AtomicUsize,
    failed: AtomicBool,
    error: Mutex<Option<IoError>>,
    done: AtomicBool,
}

impl Job {
    /// # Safety
    ///
    /// `dest` must be valid for writes of `room >= len` bytes, lent
    /// exclusively to this job until [`Job::is_done`] returns true.
    pub unsafe fn new(
        path: PathBuf,
        len: u64,
        checksum: Option<u64>,
        dest: *mut u8,
        room: usize,
        source: Source,
        chunks: usize,
    ) -> Self {
        Job {
            path,
            len,
            checksum,
            dest: DestPtr(dest),
            room,
            source: RwLock::new(Some(source)),
            remaining: AtomicUsize::new(chunks),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            done: AtomicBool::new(false),
        }
    }

    /// All chunks finished and the job's outcome is final; the destination
    /// memory is no longer touched by any worker.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// The job's error, if any. Only meaningful once [`Job::is_done`].
    pub fn take_error(&self) -> Option<IoError> {
        self.error.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn fail(&self, e: IoError) {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::Relaxed);
    }

    fn read_chunk(&self, offset: u64, len: usize, bounce: &mut Option<AlignedBuf>) -> Result<(), IoError> {
        let guard = self.source.read().unwrap_or_else(PoisonError::into_inner);
        let Some(src) = guard.as_ref() else { return Ok(()) };
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        debug_assert!(at + len <= self.room);
        let ctx = ShardCtx { path: &self.path, len: self.len };
        // SAFETY: chunk ranges are disjoint and lie within `len <= room`
        // bytes of the exclusively lent destination (see `Job::new`).
        unsafe {
            let dst = self.dest.0.add(at);
            mode::read_at(src, &ctx, dst, self.room - at, offset, len, bounce)
        }
    }

    /// Called once per chunk (read, skipped or failed). The last call
    /// finalises the job.
    fn chunk_done(&self, shared: &Shared, done_tx: &Sender<()>) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        self.finish(shared);
        let _ = done_tx.send(());
    }

    fn finish(&self, shared: &Shared) {
        let cancelled = shared.cancel.load(Ordering::Relaxed);
        if !cancelled && !self.failed.load(Ordering::Relaxed) {
            if let Some(expected) = self.checksum {
                let len = usize::try_from(self.len).unwrap_or(usize::MAX);
                // SAFETY: every chunk has completed (the AcqRel countdown
                // orders their writes before this read), so `len` bytes at
                // `dest` are initialised, and the memory is still lent to us.
                let bytes = unsafe { std::slice::from_raw_parts(self.dest.0.cast_const(), len) };
                let actual = xxhash_rust::xxh3::xxh3_64(bytes);
                if actual != expected {
                    self.fail(IoError::Checksum { path: self.path.clone(), expected, actual });
                }
            }
        }
        // Close the file / unmap here, on a worker thread.
        drop(self.source.write().unwrap_or_else(PoisonError::into_inner).take());
        if !self.failed.load(Ordering::Relaxed) && !cancelled {
            shared.counters.shards.fetch_add(1, Ordering::Relaxed);
            shared.counters.bytes.fetch_add(self.len, Ordering::Relaxed);
        }
        shared.counters.end();
        self.done.store(true, Ordering::Release);
    }

    /// Marks a job with no chunks (empty shard) finished right away.
    pub fn finish_now(&self, shared: &Shared) {
        self.remaining.store(0, Ordering::Relaxed);
        self.finish(shared);
    }
}

struct Chunk {
    job: Arc<Job>,
    offset: u64,
    len: usize,
}

/// State shared by the reader and its workers.
#[derive(Default)]
pub(crate) struct Shared {
    pub cancel: AtomicBool,
    pub counters: WorkerCounters,
}

/// Worker threads and their queues.
pub(crate) struct Pool {
    work_tx: Option<Sender<Chunk>>,
    done_rx: Receiver<()>,
    handles: Vec<JoinHandle<()>>,
    pub shared: Arc<Shared>,
    chunk_bytes: usize,
}

impl Pool {
    pub fn new(threads: usize, chunk_bytes: usize) -> Result<Self, IoError> {
        let (work_tx, work_rx) = crossbeam_channel::unbounded::<Chunk>();
        let (done_tx, done_rx) = crossbeam_channel::unbounded::<()>();
        let shared = Arc::new(Shared::default());
        let mut pool =
            Pool { work_tx: Some(work_tx), done_rx, handles: Vec::with_capacity(threads), shared, chunk_bytes };
        for i in 0..threads {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            let shared = Arc::clone(&pool.shared);
            let spawned = std::thread::Builder::new()
                .name(format!("airllm-io-{i}"))
                .spawn(move || worker_loop(&rx, &tx, &shared));
            match spawned {
                Ok(h) => pool.handles.push(h),
                // Dropping `pool` joins the threads already started.
                Err(source) => return Err(IoError::Spawn { source }),
            }
        }
        Ok(pool)
    }

    /// Queues the chunk reads of `job` (or finishes an empty one).
    pub fn submit(&self, job: &Arc<Job>) {
        self.shared.counters.begin();
        let len = usize::try_from(job.len).unwrap_or(usize::MAX);
        if len == 0 {
            job.finish_now(&self.shared);
            return;
        }
        let Some(tx) = &self.work_tx else {
            job.fail(IoError::WorkerPanic { path: job.path.clone(), message: "pool shut down".into() });
            job.finish_now(&self.shared);
            return;
        };
        let mut offset = 0usize;
        while offset < len {
            let n = self.chunk_bytes.min(len - offset);
            let chunk = Chunk { job: Arc::clone(job), offset: offset as u64, len: n };
            if tx.send(chunk).is_err() {
                // Unreachable while we hold a receiver-side thread; account
                // for the chunks that will never run.
                job.fail(IoError::WorkerPanic { path: job.path.clone(), message: "all worker threads exited".into() });
                let left = len.div_ceil(self.chunk_bytes) - offset / self.chunk_bytes;
                if job.remaining.fetch_sub(left, Ordering::AcqRel) == left {
                    job.finish(&self.shared);
                }
                return;
            }
            offset += n;
        }
    }

    /// Number of chunks a shard of `len` bytes is split into.
    pub fn chunks_for(&self, len: u64) -> usize {
        usize::try_from(len).unwrap_or(usize::MAX).div_ceil(self.chunk_bytes)
    }

    /// Blocks until `job` is done. Returns false if every worker is gone
    /// (which only happens if they panicked outside a chunk).
    pub fn wait(&self, job: &Job) -> bool {
        while !job.is_done() {
            if self.done_rx.recv().is_err() {
                return job.is_done();
            }
        }
        true
    }
}

impl Pool {
    /// Stops the workers: in-progress chunks finish, queued ones are skipped,
    /// then every thread is joined, so no write into a destination happens
    /// after this returns. Idempotent.
    pub fn shutdown(&mut self) {
        self.shared.cancel.store(true, Ordering::Relaxed);
        drop(self.work_tx.take());
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker_loop(rx: &Receiver<Chunk>, done_tx: &Sender<()>, shared: &Shared) {
    let mut bounce: Option<AlignedBuf> = None;
    while let Ok(chunk) = rx.recv() {
        let job = &chunk.job;
        if !shared.cancel.load(Ordering::Relaxed) && !job.failed.load(Ordering::Relaxed) {
            let t = Instant::now();
            let res = panic::catch_unwind(AssertUnwindSafe(|| job.read_chunk(chunk.offset, chunk.len, &mut bounce)));
            shared.counters.add_read_time(t.elapsed());
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => job.fail(e),
                Err(payload) => {
                    bounce = None;
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into());
                    job.fail(IoError::WorkerPanic { path: job.path.clone(), message });
                }
            }
        }
        job.chunk_done(shared, done_tx);
    }
}
