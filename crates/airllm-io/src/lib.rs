//! Prefetching shard reader of airllm-rs.
//!
//! A model is streamed through the GPU one shard file (one decoder layer,
//! the embedding, the lm_head ...) at a time. This crate decides whether that
//! streaming runs at the speed of the disk or page cache: a [`Reader`] walks a
//! *schedule* of shard indices (the order the compute needs them, possibly
//! repeating every token), keeps up to `depth` shards in flight in memory the
//! caller lends it ([`Destination`]s: in the facade, mapped wgpu staging
//! buffers), splits large shards into chunks read in parallel by a worker
//! pool, and hands shards back strictly in schedule order. Bytes move from
//! page cache or disk into the destination with one copy at most.
//!
//! ```
//! use airllm_io::{Reader, ReaderOptions, ShardSpec};
//! # fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let mut shards = Vec::new();
//! for (i, len) in [10_000usize, 70_000].into_iter().enumerate() {
//!     let path = dir.path().join(format!("layer{i}.bin"));
//!     std::fs::write(&path, vec![i as u8 + 1; len])?;
//!     shards.push(ShardSpec::new(path, len as u64));
//! }
//! // Two destinations: one shard can be read while the other is consumed.
//! let dests = vec![vec![0u8; 70_000], vec![0u8; 70_000]];
//! let opts = ReaderOptions { depth: 2, threads: 2, ..ReaderOptions::default() };
//! let mut reader = Reader::new(shards, [0, 1, 0], dests, opts)?;
//! let mut seen = Vec::new();
//! while let Some(filled) = reader.next() {
//!     let filled = filled?;
//!     assert!(filled.bytes().iter().all(|&b| b == filled.shard as u8 + 1));
//!     seen.push((filled.shard, filled.len));
//!     reader.recycle(filled.dest); // e.g. once the GPU copy out of it is done
//! }
//! assert_eq!(seen, [(0, 10_000), (1, 70_000), (0, 10_000)]);
//! println!("{}", reader.stats());
//! # Ok(())
//! # }
//! ```
//!
//! # Modes and the default
//!
//! [`ReadMode::Pread`] (positional reads straight into the destination),
//! [`ReadMode::Direct`] (O_DIRECT, bypassing the page cache, for models
//! larger than RAM; falls back to buffered reads with a warning where the file
//! system refuses it) and [`ReadMode::Mmap`] (map + parallel copy). The
//! default is `Pread`, chosen by measurement and by what the measurement
//! cannot show:
//!
//! - From a hot page cache, `mmap` is 0-10% faster than `pread` on large
//!   shards (2 x 256 MiB, one thread: 18.2-19.4 against 17.1-17.8 GB/s; two
//!   threads: 18.4-19.4 against 18.1-18.2), while `pread` is 10-15% faster on small shards
//!   (64 x 4 MiB: 30.3-30.8 against 26.4-27.6 GB/s), where mapping and
//!   unmapping each file costs more than the copy. (Depth 2, 16 MiB chunks,
//!   medians of 24 interleaved passes, three runs, same machine as below:
//!   `cargo run --release -p airllm-io --example modes`.)
//! - `mmap`'s edge on large shards here is probably glibc's `memcpy` using
//!   non-temporal stores into ordinary RAM (not verified); the facade's
//!   destinations are write-combined staging memory, where such stores gain
//!   nothing, and
//!   `pread` into such staging measured 27.3 GB/s with 16 threads on the
//!   H100 machine (ARCHITECTURE.md).
//! - A file truncated by another process while mapped kills the process with
//!   SIGBUS; with `pread` it is an [`IoError::Truncated`] naming the file.
//!
//! The default chunk is 16 MiB ([`DEFAULT_CHUNK_BYTES`]): 8, 16 and 32 MiB
//! measured the same within noise here; 16 MiB still splits a 436 MB 8B-model
//! layer into 27 pieces for up to 16 threads.
//!
//! # Measurements
//!
//! 2-core x86_64 sandbox (AMD EPYC, 32 MiB L3, ext4 on a virtio disk), 8
//! files x 64 MiB, depth 2, 16 MiB chunks, medians of 31 interleaved passes
//! (`cargo run --release -p airllm-io --example iobench -- target/tmp 8 64 31`;
//! criterion: `cargo bench -p airllm-benches -- io/`). Other jobs kept the
//! load average at 3-4 on the 2 cores during the runs, so absolute figures
//! swing by up to 40% between runs; ratios are paired per pass and steadier.
//!
//! | mode | threads | reader GB/s | plain loader GB/s | reader / plain | plain 8 MiB-buffer read GB/s |
//! | --- | --- | --- | --- | --- | --- |
//! | pread | 1 | 19.17 | 18.35 | 105% | 33.14 |
//! | pread | 2 | 19.44 | 18.29 | 106% | 33.32 |
//! | pread | 4 | 20.09 | 18.32 | 107% | 32.98 |
//! | mmap | 1 | 19.51 | 18.02 | 107% | 32.87 |
//! | mmap | 2 | 19.81 | 17.93 | 112% | 32.96 |
//! | mmap | 4 | 19.24 | 17.63 | 109% | 32.48 |
//! | direct | 1 | 1.61 | 1.65 | 99% | 1.23 |
//! | direct | 2 | 2.06 | 2.00 | 103% | 1.25 |
//! | direct | 4 | 1.62 | 1.54 | 102% | 1.41 |
//!
//! Three more runs of 15 passes put reader/plain at 87-125% for `pread`,
//! 104-124% for `mmap` and 96-105% for `direct`.
//!
//! What the columns mean ([`bench::run_io_bench`]):
//!
//! - *plain loader*: [`bench::plain_read_into`], one thread reading each file
//!   with one `read(2)` call (O_DIRECT for the direct rows) into the same
//!   destinations the reader uses: same bytes into the same memory, without
//!   prefetching or threads. This is the comparable baseline.
//! - *plain 8 MiB-buffer read*: [`bench::plain_sequential_read`] (or
//!   [`bench::plain_direct_read`]), one thread reading through one reused
//!   8 MiB buffer, like `dd bs=8M of=/dev/null`. From the page cache that
//!   buffer never leaves the CPU's 32 MiB L3, so the figure measures the
//!   page cache alone; a reader that stores whole 64 MiB shards must write
//!   them to DRAM, whose ceiling here is about 18-20 GB/s (a single-threaded
//!   `memcpy` between 64 MiB buffers measured 18.3-20.2 GB/s). The reader sits
//!   at that ceiling, about 60% of this figure. In one earlier run (8 MiB
//!   chunks) where the second core was less contended, two threads reached
//!   29.0 (`pread`) and 32.9 GB/s (`mmap`) against 30.5 and 32.5 GB/s for
//!   this figure.
//! - With O_DIRECT the disk is the limit (1.2-2.6 GB/s, varying run to run
//!   on this shared virtio disk); the reader matches the plain O_DIRECT
//!   loader and beats the `dd iflag=direct bs=8M`-like read, whose 8 MiB
//!   requests are smaller than the loader's whole-file ones.

//! # Backpressure, order, cancellation
//!
//! A destination is *in flight* from the moment a read into it starts until
//! the consumer gives it back with [`Reader::recycle`]; at most
//! `min(depth, destinations.len())` are. Shards come back in schedule order
//! even when later reads finish first. Dropping the reader skips queued
//! chunks, waits for those being read and joins every worker thread before
//! returning. Errors name the file and offset or sizes ([`IoError`]).
//!
//! # Non-goals
//!
//! - No GPU knowledge: this crate fills memory it is given; mapping,
//!   copying to VRAM and fencing are `airllm-gpu`'s job.
//! - No shard format knowledge: shards are plain (path, length, checksum)
//!   descriptions; `airllm-format` writes and describes them.
//! - No caching policy: which layers stay resident is the facade's planner's
//!   decision, expressed as the schedule.
//! - Unix first: O_DIRECT on Linux (`F_NOCACHE` on macOS); elsewhere the
//!   direct mode reads buffered.

pub mod bench;
mod dest;
mod error;
mod mode;
mod reader;
mod stats;
mod worker;

pub use dest::{AlignedBuf, DIRECT_ALIGN, Destination};
pub use error::IoError;
pub use mode::ReadMode;
pub use reader::{DEFAULT_CHUNK_BYTES, Filled, Reader, ReaderOptions, ShardSpec};
pub use stats::{ReaderStats, ShardWait, gbps};
