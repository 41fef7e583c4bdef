//! [`ThreadPool`]: one small spin-then-park pool for the CPU kernels, with a
//! [`parallel_for`](ThreadPool::parallel_for) entry point for every op.
//!
//! Why not rayon: a decode step of SmolLM2-135M is ~300 matmuls of 20-60 µs
//! each, so the per-op cost of waking threads and joining them is on the
//! critical path. This pool keeps its workers spinning for a while after each
//! job (so the next op starts in well under a microsecond) and parks them
//! when the CPU work stops. `benches/cpu_pool.rs` measures both; on the
//! 2-core sandbox this pool's empty `parallel_for` costs about a tenth of
//! rayon's `join`-based equivalent (see the crate docs, "CPU matmul").
//!
//! Invariants:
//! - The calling thread takes part in every job: a pool of `threads` has
//!   `threads - 1` workers.
//! - A job ends when the caller has claimed every item and every worker that
//!   *entered* the job has left it. A worker that wakes late (descheduled on
//!   a busy machine) finds the job closed and skips it, so one slow thread
//!   never stalls an op: its share is done by the others.
//! - Jobs never overlap: a `parallel_for` issued while the pool is busy (from
//!   inside a job, or from a second thread) runs inline on its caller.
//! - A panic inside a job is caught on the worker and resumed on the caller
//!   after the job has ended (no thread is left inside the closure).

use std::any::Any;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks, unless configured.
/// Long enough to bridge the gaps between the ops of one decode step
/// (norms, attention, sampling on one thread), short enough that an idle
/// process stops burning its cores within a fraction of a millisecond.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(300);

/// Chunks per thread that [`ThreadPool::parallel_for`] cuts the items into
/// (when there are enough): a few per thread balance the load when a core
/// is shared with other processes, without many atomic claims per op.
const CHUNKS_PER_THREAD: usize = 4;

/// Spins between two `sched_yield` calls of a waiting thread (a few
/// microseconds: a yield costs well under one when nothing else waits).
const YIELD_EVERY: u32 = 1024;

/// Bits of [`Shared::state`]: the job's tag (high 32 bits), whether it is
/// closed, and how many workers are inside it.
const CLOSED: u64 = 1 << 31;
const COUNT: u64 = CLOSED - 1;

/// Pads an atomic to its own cache lines (workers poll `state` while the
/// caller writes the flags of sleeping workers).
#[repr(align(128))]
struct Padded<T>(T);

/// A type-erased job: `call(data, ...)` runs the caller's closure. Valid while
/// the job's tag is current and not closed, or while a worker is inside it.
struct Shared {
    state: Padded<AtomicU64>,
    data: AtomicPtr<()>,
    call: AtomicUsize,
    sleeping: Vec<Padded<AtomicBool>>,
    shutdown: AtomicBool,
    spin: Duration,
}

/// A fixed set of worker threads that run one [`parallel_for`](Self::parallel_for)
/// at a time, the calling thread included. See the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    busy: AtomicBool,
    tag: AtomicU64,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("threads", &self.threads()).field("spin", &self.shared.spin).finish()
    }
}

/// Errors from building or configuring a pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The OS refused to start a worker thread.
    #[error("could not start CPU worker thread {index} of {threads}: {source}; try fewer threads (--threads)")]
    Spawn {
        /// Index of the worker.
        index: usize,
        /// Threads asked for.
        threads: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// [`init_global`] was called after the global pool was built with
    /// another thread count.
    #[error(
        "the CPU thread pool already runs {have} threads and cannot be resized to {want}; \
         set the thread count (--threads) before the first CPU op runs"
    )]
    AlreadyInitialized {
        /// Threads of the running pool.
        have: usize,
        /// Threads asked for.
        want: usize,
    },
}

struct Job<'a, F> {
    f: &'a F,
    n: usize,
    grain: usize,
    next: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl<F: Fn(Range<usize>) + Sync> Job<'_, F> {
    /// Claims chunks until none are left.
    fn work(&self) {
        loop {
            let start = self.next.fetch_add(self.grain, Ordering::Relaxed);
            if start >= self.n {
                return;
            }
            (self.f)(start..(start + self.grain).min(self.n));
        }
    }

    /// The worker-side entry point stored in [`Shared::call`].
    ///
    /// # Safety
    /// `data` must point to a live `Job<F>` of this `F`.
    unsafe fn run(data: *const ()) {
        // SAFETY: the caller guarantees `data` is a live `Job<F>` (see `Shared`).
        let job = unsafe { &*data.cast::<Job<'_, F>>() };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| job.work())) {
            // Stop handing out chunks; the caller resumes the panic.
            job.next.store(job.n, Ordering::Relaxed);
            if let Ok(mut slot) = job.panic.lock() {
                slot.get_or_insert(p);
            }
        }
    }
}

impl ThreadPool {
    /// A pool of `threads` threads in all (the caller and `threads - 1`
    /// workers; 0 counts as 1), whose idle workers spin for
    /// [`DEFAULT_SPIN`] before parking.
    pub fn new(threads: usize) -> Result<Self, PoolError> {
        Self::with_spin(threads, DEFAULT_SPIN)
    }

    /// Like [`new`](Self::new), with the time an idle worker spins before it
    /// parks (`Duration::ZERO` parks at once: lowest CPU use, slowest wake-up).
    pub fn with_spin(threads: usize, spin: Duration) -> Result<Self, PoolError> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Padded(AtomicU64::new(CLOSED)),
            data: AtomicPtr::new(std::ptr::null_mut()),
            call: AtomicUsize::new(0),
            sleeping: (1..threads).map(|_| Padded(AtomicBool::new(false))).collect(),
            shutdown: AtomicBool::new(false),
            spin,
        });
        let mut pool = ThreadPool { shared, workers: Vec::new(), busy: AtomicBool::new(false), tag: AtomicU64::new(0) };
        for index in 1..threads {
            let shared = Arc::clone(&pool.shared);
            let handle = thread::Builder::new()
                .name(format!("airllm-cpu-{index}"))
                .spawn(move || worker(&shared, index - 1))
                .map_err(|source| PoolError::Spawn { index, threads, source })?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads taking part in each job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f` on disjoint ranges covering `0..n`, in parallel on the pool's
    /// threads and the caller's; returns when all have run. Ranges are
    /// chunks of about `n / (4 * threads)` items (at least 1), claimed
    /// dynamically. Runs inline (one call `f(0..n)`) when the pool has one
    /// thread, `n <= 1`, or the pool is already running a job.
    pub fn parallel_for<F: Fn(Range<usize>) + Sync>(&self, n: usize, f: F) {
        let grain = n.div_ceil(self.threads() * CHUNKS_PER_THREAD).max(1);
        self.parallel_for_grain(n, grain, f);
    }

    /// [`parallel_for`](Self::parallel_for) with chunks of `grain` items
    /// (the last one shorter); `grain >= n` runs `f(0..n)` inline.
    pub fn parallel_for_grain<F: Fn(Range<usize>) + Sync>(&self, n: usize, grain: usize, f: F) {
        let grain = grain.max(1);
        if n == 0 {
            return;
        }
        if self.workers.is_empty() || grain >= n || self.busy.swap(true, Ordering::Acquire) {
            f(0..n);
            return;
        }
        let job = Job { f: &f, n, grain, next: AtomicUsize::new(0), panic: Mutex::new(None) };
        let tag = self.tag.fetch_add(1, Ordering::Relaxed).wrapping_add(1) & 0xFFFF_FFFF;
        let sh = &*self.shared;
        sh.data.store((&raw const job).cast::<()>().cast_mut(), Ordering::Relaxed);
        sh.call.store(Job::<F>::run as unsafe fn(*const ()) as usize, Ordering::Relaxed);
        // Publishing the tag (Release) makes `data` and `call` visible to
        // every worker whose entering CAS (Acquire) reads it.
        sh.state.0.store(tag << 32, Ordering::SeqCst);
        for (i, s) in sh.sleeping.iter().enumerate() {
            if s.0.swap(false, Ordering::SeqCst) {
                self.workers[i].thread().unpark();
            }
        }
        // Closes the job and waits for the workers inside it, also when `f`
        // panics on this thread: they hold references into this frame.
        struct Close<'a>(&'a Shared, &'a AtomicBool);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                self.0.state.0.fetch_or(CLOSED, Ordering::AcqRel);
                let mut spins = 0u32;
                while self.0.state.0.load(Ordering::Acquire) & COUNT != 0 {
                    spins = spins.wrapping_add(1);
                    // Yield now and then: on a busy machine the worker we wait
                    // for may be queued on this very core.
                    if spins.is_multiple_of(YIELD_EVERY) {
                        thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                self.1.store(false, Ordering::Release);
            }
        }
        let close = Close(sh, &self.busy);
        job.work();
        drop(close);
        let panic = job.panic.lock().map(|mut p| p.take()).unwrap_or(None);
        if let Some(p) = panic {
            resume_unwind(p);
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            // A worker only panics if the job's own catch failed; nothing to add.
            let _ = w.join();
        }
    }
}

fn worker(sh: &Shared, me: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new tag: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        let state = loop {
            let s = sh.state.0.load(Ordering::Acquire);
            if s >> 32 != seen {
                break s;
            }
            if sh.shutdown.load(Ordering::Relaxed) {
                return;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || start.elapsed() < sh.spin {
                // Spinning must not starve a thread of ours (or anyone's)
                // queued on the same core: yield now and then.
                if spins.is_multiple_of(YIELD_EVERY) {
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            sh.sleeping[me].0.store(true, Ordering::SeqCst);
            // Re-check after announcing sleep: a job published in between
            // either is seen here or unparks us.
            if sh.state.0.load(Ordering::SeqCst) >> 32 == seen && !sh.shutdown.load(Ordering::SeqCst) {
                thread::park();
            }
            sh.sleeping[me].0.store(false, Ordering::SeqCst);
        };
        seen = state >> 32;
        let mut s = state;
        // Enter the job unless it is already closed (or replaced).
        let entered = loop {
            if s >> 32 != seen || s & CLOSED != 0 {
                break false;
            }
            match sh.state.0.compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break true,
                Err(now) => s = now,
            }
        };
        if !entered {
            continue;
        }
        let data = sh.data.load(Ordering::Relaxed);
        let call = sh.call.load(Ordering::Relaxed);
        // SAFETY: `call` was stored from a `Job::<F>::run` function pointer
        // before the tag we entered was published, and `data` points to that
        // job, which the caller keeps alive until every entered worker has
        // left (the count below).
        unsafe {
            let run: unsafe fn(*const ()) = std::mem::transmute::<usize, unsafe fn(*const ())>(call);
            run(data);
        }
        sh.state.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Something that runs `f` over disjoint ranges covering `0..n` in parallel:
/// what the kernels need from a thread pool. Implemented by [`ThreadPool`]
/// (the one to use) and by rayon's pool (for comparison benches).
pub trait Parallel: Sync {
    /// Threads taking part.
    fn threads(&self) -> usize;
    /// Calls `f` on disjoint ranges covering `0..n` and returns when all ran.
    fn parallel_for<F: Fn(Range<usize>) + Sync>(&self, n: usize, f: F);
}

impl Parallel for ThreadPool {
    fn threads(&self) -> usize {
        ThreadPool::threads(self)
    }
    fn parallel_for<F: Fn(Range<usize>) + Sync>(&self, n: usize, f: F) {
        ThreadPool::parallel_for(self, n, f);
    }
}

impl Parallel for rayon::ThreadPool {
    fn threads(&self) -> usize {
        self.current_num_threads()
    }
    fn parallel_for<F: Fn(Range<usize>) + Sync>(&self, n: usize, f: F) {
        use rayon::prelude::*;
        let grain = n.div_ceil(self.current_num_threads() * CHUNKS_PER_THREAD).max(1);
        if grain >= n {
            f(0..n);
            return;
        }
        self.install(|| (0..n.div_ceil(grain)).into_par_iter().for_each(|c| f(c * grain..((c + 1) * grain).min(n))));
    }
}

static GLOBAL: OnceLock<ThreadPool> = OnceLock::new();

fn default_threads() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// The process-wide pool, built on first use with one thread per core
/// ([`std::thread::available_parallelism`]) unless [`init_global`] ran first.
///
/// # Panics
/// If the OS refuses to start the worker threads on first use (call
/// [`init_global`] early to get that as an error instead).
pub fn global() -> &'static ThreadPool {
    GLOBAL.get_or_init(|| match ThreadPool::new(default_threads()) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    })
}

/// Builds the process-wide pool with `threads` threads (0: one per core).
/// Call it once, before the first CPU op (the CLI's `--threads N`); calling
/// it again with the same count is a no-op, with another count an error.
pub fn init_global(threads: usize) -> Result<&'static ThreadPool, PoolError> {
    let want = if threads == 0 { default_threads() } else { threads };
    if let Some(p) = GLOBAL.get() {
        return if p.threads() == want {
            Ok(p)
        } else {
            Err(PoolError::AlreadyInitialized { have: p.threads(), want })
        };
    }
    let pool = ThreadPool::new(want)?;
    // Another thread may have won the race; report its count if it differs.
    let p = GLOBAL.get_or_init(|| pool);
    if p.threads() == want { Ok(p) } else { Err(PoolError::AlreadyInitialized { have: p.threads(), want }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(pool: &ThreadPool, n: usize) {
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        pool.parallel_for(n, |r| {
            for i in r {
                hits[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        for (i, h) in hits.iter().enumerate() {
            assert_eq!(h.load(Ordering::Relaxed), 1, "item {i} of {n}");
        }
    }

    #[test]
    fn every_item_runs_once() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads).expect("pool");
            assert_eq!(pool.threads(), threads);
            for n in [0, 1, 2, 7, 64, 1000] {
                for _ in 0..20 {
                    covers(&pool, n);
                }
            }
        }
    }

    #[test]
    fn parked_workers_wake_up() {
        let pool = ThreadPool::with_spin(3, Duration::ZERO).expect("pool");
        for _ in 0..50 {
            covers(&pool, 100);
            thread::sleep(Duration::from_micros(200));
        }
    }

    #[test]
    fn workers_take_part() {
        let pool = ThreadPool::new(2).expect("pool");
        let main = thread::current().id();
        let others = AtomicUsize::new(0);
        // Each item sleeps, so the worker has time to wake and claim some.
        for _ in 0..20 {
            pool.parallel_for_grain(8, 1, |r| {
                if thread::current().id() != main {
                    others.fetch_add(r.len(), Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(1));
            });
        }
        assert!(others.load(Ordering::Relaxed) > 0, "the worker never ran an item");
    }

    #[test]
    fn nested_and_concurrent_calls_run_inline() {
        let pool = Arc::new(ThreadPool::new(2).expect("pool"));
        let total = AtomicUsize::new(0);
        pool.parallel_for_grain(4, 1, |r| {
            for _ in r {
                pool.parallel_for(10, |inner| {
                    total.fetch_add(inner.len(), Ordering::Relaxed);
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 40);
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let p = Arc::clone(&pool);
                thread::spawn(move || {
                    for _ in 0..200 {
                        covers(&p, 50);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
    }

    #[test]
    fn a_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2).expect("pool");
        for _ in 0..10 {
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.parallel_for_grain(64, 1, |r| {
                    if r.start == 37 {
                        panic!("item 37");
                    }
                })
            }));
            let msg = r.expect_err("must panic");
            assert_eq!(msg.downcast_ref::<&str>().copied(), Some("item 37"));
            covers(&pool, 100);
        }
    }

    #[test]
    fn global_pool_keeps_its_size() {
        let p = global();
        assert!(p.threads() >= 1);
        assert!(init_global(p.threads()).is_ok());
        let e = init_global(p.threads() + 1).expect_err("resize");
        assert!(e.to_string().contains("--threads"), "{e}");
    }
}
