//! Errors of the shard reader. Each names the file (and offset or sizes) at
//! fault and says what to do about it.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading shards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// The shard file could not be opened (missing, permissions, ...).
    #[error(
        "cannot open shard file {path}: {source}; check that the model directory is complete \
         and readable, or re-run the shard tool to rewrite it"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// A read system call failed.
    #[error("reading shard file {path} at byte offset {offset} failed: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Byte offset in the file where the failing read started.
        offset: u64,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// The file is shorter than the manifest says (or shrank while being read).
    #[error(
        "shard file {path} is truncated: expected {expected} bytes, found {actual}; \
         re-run the shard tool to rewrite it"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Length the manifest promised.
        expected: u64,
        /// Length found (file size, or where reading hit end of file).
        actual: u64,
    },

    /// The bytes read do not hash to the manifest's checksum.
    #[error(
        "checksum mismatch in shard file {path}: the manifest says xxh3 {expected:#018x}, the \
         file hashes to {actual:#018x}; the file is corrupt or stale, re-run the shard tool to \
         rewrite it"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Checksum from the manifest.
        expected: u64,
        /// Checksum of the bytes read.
        actual: u64,
    },

    /// A shard does not fit in any destination the reader was given.
    #[error(
        "shard file {path} is {len} bytes but the largest destination holds {capacity} bytes; \
         lend destinations at least as large as the largest streamed shard"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Shard length.
        len: u64,
        /// Capacity of the largest destination.
        capacity: usize,
    },

    /// The schedule named a shard index that does not exist.
    #[error("the schedule asked for shard {index} but only {count} shards were given")]
    BadIndex {
        /// Index yielded by the schedule.
        index: usize,
        /// Number of shards the reader knows.
        count: usize,
    },

    /// `next()` was called while every destination is held by the consumer,
    /// so no read can ever start.
    #[error(
        "all {held} destinations are held by the consumer, so no read can start; call \
         Reader::recycle with a finished destination before calling next() again"
    )]
    Starved {
        /// Destinations currently held by the consumer.
        held: usize,
    },

    /// A reader option is out of range.
    #[error("invalid reader option `{option}`: {reason}")]
    InvalidOption {
        /// Option name.
        option: &'static str,
        /// Why it was refused and what to use.
        reason: String,
    },

    /// A read mode name was not recognised.
    #[error("unknown read mode {0:?}: use one of pread, direct, mmap")]
    UnknownMode(String),

    /// The file system refused O_DIRECT (only [`crate::bench::plain_direct_read`]
    /// reports this; the reader falls back to buffered reads with a warning).
    #[error(
        "the file system holding {path} refused O_DIRECT ({source}); use the pread or mmap \
         read mode for files there"
    )]
    DirectUnsupported {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// A worker thread could not be started.
    #[error("cannot start a reader worker thread: {source}; lower `threads`")]
    Spawn {
        /// What the OS said.
        #[source]
        source: io::Error,
    },

    /// A worker thread panicked while reading (a bug: please report it).
    #[error("a reader worker thread panicked while reading {path}: {message}; please report this bug")]
    WorkerPanic {
        /// The file being read.
        path: PathBuf,
        /// The panic payload, if it was a string.
        message: String,
    },
}
