//! One shard writer per output directory: an advisory lock on `.airllm.lock`.
//!
//! Two processes that shard the same model at once (two `generate` calls on a
//! checkpoint's first use, or two `shard` commands) would otherwise write the same
//! temporary files and one would fail renaming a file the other already moved. With
//! the lock the second one waits, saying so, and then finds the first one's shards
//! complete and keeps them. The lock is `flock`-style (released when the file is
//! closed, also when a process dies), so a crash never leaves a directory locked.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

use crate::error::{IoContext, Result};

/// Name of the lock file inside a shard directory.
pub const LOCK_FILE: &str = ".airllm.lock";

/// An exclusive lock on a directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Take the lock on `dir` (which must exist), waiting for another holder with a
    /// message on stderr.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .at("creating lock file", &path)?;
        if !FileExt::try_lock_exclusive(&file).at("locking", &path)? {
            tracing::warn!("another airllm process is writing shards into {}; waiting for it to finish", dir.display());
            FileExt::lock_exclusive(&file).at("locking", &path)?;
            tracing::warn!("the other process finished; checking its shards in {}", dir.display());
        }
        Ok(DirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
