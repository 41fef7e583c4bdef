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
//! default is `Pread`, chosen by measurement (table below): from a hot page
//! cache it matches or beats `mmap`, needs no page-table work per shard, and
//! a file truncated while it is read gives an error instead of SIGBUS.
//!
//! MEASUREMENTS
//!
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
